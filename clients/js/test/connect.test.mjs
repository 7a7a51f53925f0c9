// The first connection: it is tried once, so an unreachable server, a wrong path or a server
// that never welcomes fails `ready` instead of leaving it pending; the URL rule; resuming from
// a given offset; handlers of every topic.
import assert from "node:assert/strict";
import { test } from "node:test";
import { client, fakeServer, freePort, next, sendFrame, sharedServer, welcome, within } from "./helpers.mjs";

async function refusal(c) {
  return within(
    c.ready.then(
      () => assert.fail("connected"),
      (error) => error,
    ),
    "ready to reject",
  );
}

test("an unreachable server rejects ready with unreachable, and the client stays closed", async (t) => {
  const url = `http://127.0.0.1:${await freePort()}`;
  const c = client(t, url, "alice", "r1");
  const seen = [];
  c.onStatus((s) => seen.push(s));
  const error = await refusal(c);
  assert.equal(error.code, "unreachable");
  assert.match(error.message, /cannot connect to http:\/\/127\.0\.0\.1/);
  assert.equal(c.status, "closed");
  assert.deepEqual(seen, ["closed"]);
});

test("a wrong path on a real server rejects ready and says the server answered 404", async (t) => {
  const { url } = await sharedServer(t);
  const c = client(t, `${url}/api/v1/ws/nope`, "alice", "r1");
  const error = await refusal(c);
  assert.equal(error.code, "unreachable");
  assert.match(error.message, /404/);
});

test("a server that accepts but never welcomes rejects ready with timeout", async (t) => {
  const server = await fakeServer(t, () => {});
  const c = client(t, server.url, "alice", "r1", { connectTimeout: 200 });
  const error = await refusal(c);
  assert.equal(error.code, "timeout");
  assert.equal(c.status, "closed");
  assert.equal(server.urls.length, 1);
});

test("a close before the first welcome is final, whatever its code", async (t) => {
  const server = await fakeServer(t, (ws) => ws.close(1012, "restarting"));
  const c = client(t, server.url, "alice", "r1");
  const error = await refusal(c);
  assert.equal(error.closeCode, 1012);
  assert.equal(server.urls.length, 1);
});

test("a base URL gets /api/v1/ws added and keeps its query; an endpoint URL is kept", async (t) => {
  const server = await fakeServer(t, (ws, url) => welcome(ws, url));
  const base = server.url.replace(/\/api\/v1\/ws$/, "");
  await within(client(t, `${base}/rt?tenant=acme#x`, "alice", "r1").ready, "base URL");
  await within(client(t, server.url, "bob", "r1").ready, "endpoint URL");
  const [first, second] = server.urls;
  assert.equal(first.pathname, "/rt/api/v1/ws");
  assert.equal(first.searchParams.get("tenant"), "acme");
  assert.equal(first.searchParams.get("username"), "alice");
  assert.equal(second.pathname, "/api/v1/ws");
});

test("since and epoch resume the room on the first connection", async (t) => {
  const server = await fakeServer(t, (ws, url) => welcome(ws, url, { offset: 9, recovered: true }));
  const c = client(t, server.url, "alice", "r1", { since: 4, epoch: "e7" });
  assert.equal((await within(c.ready, "welcome")).recovered, true);
  assert.equal(server.urls[0].searchParams.get("since"), "4");
  assert.equal(server.urls[0].searchParams.get("epoch"), "e7");
  assert.equal(c.status, "recovered");
});

test('on("*") receives every frame, after the handlers of its topic', async (t) => {
  const server = await fakeServer(t, (ws, url) => {
    welcome(ws, url);
    sendFrame(ws, "announce", { text: "hi" }, { room: "r1", from: "$server", offset: 1 });
    sendFrame(ws, "presence.join", { username: "bob" }, { room: "r1" });
  });
  const c = client(t, server.url, "alice", "r1");
  const order = [];
  c.on("announce", () => order.push("announce"));
  c.on("*", (m) => order.push(`*${m.topic}`));
  await next(c, "presence.join");
  assert.deepEqual(order, ["*welcome", "announce", "*announce", "*presence.join"]);
});
