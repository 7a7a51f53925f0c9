// Reconnect and resume: the close code table, tokens, keepalive, and no loss or duplicate
// across a dropped network or a server restart.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import {
  client,
  collect,
  fakeServer,
  next,
  proxy,
  publish,
  redis,
  sendFrame,
  Server,
  status,
  welcome,
  within,
} from "./helpers.mjs";

const RECONNECT = [1001, 1006, 1011, 1012, 4408, 4429, 4500, 4503, 4999];
const FINAL = [1000, 1007, 1008, 1009, 4400, 4403, 4409, 4499];

for (const code of RECONNECT) {
  test(`close code ${code} makes the client reconnect and resume`, async (t) => {
    const server = await fakeServer(t, (ws, url, n) => {
      welcome(ws, url, { offset: 5, recovered: n ? true : undefined });
      if (n === 0) code === 1006 ? ws.terminate() : ws.close(code, "bye");
    });
    const c = client(t, server.url, "alice", "r1");
    const reconnecting = status(c, "reconnecting");
    const recovered = status(c, "recovered");
    assert.equal((await reconnecting).code, code);
    await recovered;
    const second = await server.connection(1);
    assert.equal(second.searchParams.get("since"), "5");
    assert.equal(second.searchParams.get("epoch"), "e1");
  });
}

for (const code of FINAL) {
  test(`close code ${code} ends the client without a reconnect`, async (t) => {
    const server = await fakeServer(t, (ws, url) => {
      welcome(ws, url);
      sendFrame(ws, "error", { code: "some_code", message: "the reason" });
      ws.close(code, "bye");
    });
    const c = client(t, server.url, "alice", "r1");
    const seen = [];
    c.onStatus((s) => seen.push(s));
    const closed = await status(c, "closed");
    assert.equal(closed.code, code);
    assert.equal(closed.error.code, "some_code");
    assert.equal(closed.reason, "the reason");
    assert.deepEqual(seen, ["connected", "closed"]);
    assert.equal(server.urls.length, 1);
  });
}

test("close code 4401 fetches a fresh token before reconnecting", async (t) => {
  const tokens = ["t1", "t2"];
  const server = await fakeServer(t, (ws, url, n) => {
    welcome(ws, url, { recovered: n ? true : undefined });
    if (n === 0) ws.close(4401, "token expired");
  });
  const c = client(t, server.url, "alice", "r1", { tokenProvider: async () => tokens.shift() });
  await status(c, "reconnecting");
  await status(c, "recovered");
  assert.deepEqual(
    server.urls.map((u) => u.searchParams.get("token")),
    ["t1", "t2"],
  );
});

test("close code 4401 without a token provider ends the client", async (t) => {
  const server = await fakeServer(t, (ws) => ws.close(4401, "no token"));
  const c = client(t, server.url, "alice", "r1", { token: "stale" });
  const error = await c.ready.then(
    () => assert.fail("connected"),
    (e) => e,
  );
  assert.equal(error.closeCode, 4401);
  assert.equal(c.status, "closed");
});

test("a server that stops answering pings is left and the client reconnects", async (t) => {
  const server = await fakeServer(t, (ws, url, n) => {
    welcome(ws, url, { recovered: n ? true : undefined });
    // the first connection goes silent; the second answers pings
    if (n > 0) ws.on("message", (raw) => {
      const frame = JSON.parse(raw);
      if (frame.topic === "ping") sendFrame(ws, "pong", frame.payload);
    });
  });
  const c = client(t, server.url, "alice", "r1", { pingInterval: 50, pingTimeout: 50 });
  assert.equal((await status(c, "reconnecting")).code, 4408);
  await status(c, "recovered");
});

test("resumed history that overlaps what was seen reaches the app once, in order", async (t) => {
  const server = await fakeServer(t, (ws, url, n) => {
    welcome(ws, url, { offset: 0, recovered: n ? true : undefined });
    const since = Number(url.searchParams.get("since") ?? 0);
    // replay from 1 whatever `since` says, as a node repairing a gap might
    for (let offset = 1; offset <= (n ? 4 : 2); offset++) {
      if (n === 0 || offset > since - 1) sendFrame(ws, "chat", offset, { room: "r1", from: "x", offset });
    }
    if (n === 0) ws.close(1012);
  });
  const c = client(t, server.url, "alice", "r1");
  const got = await collect(c, "chat", 4);
  assert.deepEqual(got.map((m) => m.offset), [1, 2, 3, 4]);
  assert.equal((await server.connection(1)).searchParams.get("since"), "2");
});

test("a reset is reported when the room cannot be resumed", async (t) => {
  const server = await fakeServer(t, (ws, url, n) => {
    welcome(ws, url, n ? { offset: 0, epoch: "e2", recovered: false } : { offset: 7 });
    if (n === 0) ws.close(1012);
    else sendFrame(ws, "chat", "fresh", { room: "r1", from: "x", offset: 1 });
  });
  const c = client(t, server.url, "alice", "r1");
  const reset = within(new Promise((resolve) => c.onReset(resolve)), "reset");
  const chat = next(c, "chat");
  assert.equal((await reset).epoch, "e2");
  // offsets restart with the new epoch, and the new messages are not dropped as seen
  assert.equal((await chat).payload, "fresh");
  assert.equal(c.epoch, "e2");
  assert.equal(c.status, "connected");
});

test("frames sent while reconnecting go out after the reconnect", async (t) => {
  const received = [];
  const server = await fakeServer(t, (ws, url, n) => {
    ws.on("message", (raw) => {
      const frame = JSON.parse(raw);
      received.push(frame.payload);
      if (frame.id) sendFrame(ws, "ack", { id: frame.id, offset: 9 });
    });
    welcome(ws, url, { recovered: n ? true : undefined });
    if (n === 0) ws.close(1011);
  });
  const c = client(t, server.url, "alice", "r1");
  await status(c, "reconnecting");
  c.send("chat", "queued");
  const offset = await c.request("chat", "asked");
  assert.equal(offset, 9);
  assert.deepEqual(received, ["queued", "asked"]);
});

test("no message is lost or repeated across a dropped network", async (t) => {
  const server = await new Server().start();
  t.after(() => server.stop());
  const net = await proxy(t, server.port);
  const room = `js-${randomUUID().slice(0, 8)}`;
  const c = client(t, net.url, "alice", room);
  await within(c.ready, "welcome");
  const early = collect(c, "chat", 2);
  await publish(server.url, room, "chat", 1);
  await publish(server.url, room, "chat", 2);
  await early;
  const late = collect(c, "chat", 4);
  const reconnecting = status(c, "reconnecting");
  net.cut();
  await reconnecting;
  for (const n of [3, 4, 5]) await publish(server.url, room, "chat", n);
  const recovered = status(c, "recovered");
  net.heal();
  await recovered;
  await publish(server.url, room, "chat", 6);
  const seen = [...(await early), ...(await late)];
  assert.deepEqual(seen.map((m) => m.payload), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(seen.map((m) => m.offset), [1, 2, 3, 4, 5, 6]);
});

test("after a server restart the client reconnects and is told history was lost", async (t) => {
  const first = await new Server().start();
  const room = `js-${randomUUID().slice(0, 8)}`;
  const c = client(t, first.url, "alice", room);
  await within(c.ready, "welcome");
  await publish(first.url, room, "chat", "before");
  const reconnecting = status(c, "reconnecting");
  await first.stop();
  assert.equal((await reconnecting).code, 1012);
  const connected = status(c, "connected");
  const reset = within(new Promise((resolve) => c.onReset(resolve)), "reset");
  const second = await new Server(["--port", String(first.port)]).start();
  t.after(() => second.stop());
  await connected;
  assert.equal((await reset).recovered, false);
  const after = next(c, "chat");
  await publish(second.url, room, "chat", "after");
  assert.equal((await after).payload, "after");
});

test("with Redis, after a kill -9 of its node the client resumes on the other with no loss", async (t) => {
  const broker = await redis(t);
  const flags = ["--broker", broker];
  const a = await new Server([...flags, "--node-id", "a"]).start();
  const b = await new Server([...flags, "--node-id", "b"]).start();
  t.after(() => Promise.all([a.stop(), b.stop()]));
  const balancer = await proxy(t, a.port);
  const room = `js-${randomUUID().slice(0, 8)}`;
  const c = client(t, balancer.url, "alice", room);
  await within(c.ready, "welcome");
  const early = collect(c, "chat", 3);
  for (const n of [0, 1, 2]) await publish(a.url, room, "chat", n);
  await early;
  const late = collect(c, "chat", 4);
  const reconnecting = status(c, "reconnecting");
  balancer.cut();
  await a.stop("SIGKILL");
  await reconnecting;
  for (const n of [3, 4, 5]) await publish(b.url, room, "chat", n);
  const recovered = status(c, "recovered");
  balancer.heal(b.port);
  await recovered;
  await publish(b.url, room, "chat", 6);
  const seen = [...(await early), ...(await late)];
  assert.deepEqual(seen.map((m) => m.payload), [0, 1, 2, 3, 4, 5, 6]);
  assert.deepEqual(seen.map((m) => m.offset), [1, 2, 3, 4, 5, 6, 7]);
});

test("a request with no answer rejects with timeout", async (t) => {
  const server = await fakeServer(t, (ws, url) => welcome(ws, url));
  const c = client(t, server.url, "alice", "r1", { requestTimeout: 100 });
  await within(c.ready, "welcome");
  await assert.rejects(c.request("chat", "unanswered"), { code: "timeout" });
});

for (const answers of [[], ["unavailable"]]) {
  test(`a publish in flight when the connection drops is sent again, with its key, after the reconnect (${answers.join() || "ack"})`, async (t) => {
    const frames = [];
    const server = await fakeServer(t, (ws, url, n) => {
      welcome(ws, url, { recovered: n ? true : undefined });
      ws.on("message", (raw) => {
        const f = JSON.parse(raw);
        if (f.topic !== "chat") return;
        frames.push(f);
        // the first connection ends when the request arrives, before any answer; its first
        // copy may have been published, so an `unavailable` to the resend is retried too
        if (n === 0) return ws.close(1011);
        const code = answers.shift();
        if (code) sendFrame(ws, "error", { code, message: code, id: f.id });
        else sendFrame(ws, "ack", { id: f.id, offset: 1, duplicate: true });
      });
    });
    const expected = 2 + answers.length;
    const c = client(t, server.url, "alice", "r1");
    await within(c.ready, "welcome");
    assert.equal(await within(c.request("chat", "resent"), "the ack"), 1);
    assert.equal(frames.length, expected);
    assert.equal(typeof frames[0].key, "string");
    for (const f of frames) assert.deepEqual(f, frames[0]);
  });
}

test("a built-in request in flight when the connection drops rejects with disconnected", async (t) => {
  const server = await fakeServer(t, (ws, url, n) => {
    welcome(ws, url, { recovered: n ? true : undefined });
    if (n === 0) ws.on("message", () => ws.close(1011));
  });
  const c = client(t, server.url, "alice", "r1");
  await within(c.ready, "welcome");
  const recovered = status(c, "recovered");
  await assert.rejects(c.presence(), { code: "disconnected" });
  await recovered;
});

test("a publish answered timeout is sent again with its key, through unavailable, until acked", async (t) => {
  const answers = ["timeout", "unavailable", "unavailable"];
  const frames = [];
  const server = await fakeServer(t, (ws, url) => {
    welcome(ws, url);
    ws.on("message", (raw) => {
      const f = JSON.parse(raw);
      if (f.topic !== "chat") return;
      frames.push(f);
      const code = answers.shift();
      if (code) sendFrame(ws, "error", { code, message: code, id: f.id });
      else sendFrame(ws, "ack", { id: f.id, offset: 7, duplicate: true });
    });
  });
  const c = client(t, server.url, "alice", "r1");
  await within(c.ready, "welcome");
  assert.equal(await within(c.request("chat", "maybe"), "the ack"), 7);
  assert.equal(frames.length, 4);
  for (const f of frames) assert.deepEqual(f, frames[0]);
  // without a timeout first, unavailable is the answer: the frame was not handled
  answers.push("unavailable");
  await assert.rejects(c.request("chat", "not handled"), { code: "unavailable" });
});

test("a server that welcomes and then closes with 4429 is backed off from more and more", async (t) => {
  const times = [];
  const server = await fakeServer(t, (ws, url, n) => {
    times.push(Date.now());
    welcome(ws, url, { recovered: n ? true : undefined });
    ws.close(4429, "slow down");
  });
  const c = client(t, server.url, "alice", "r1", { minDelay: 20, maxDelay: 160 });
  await server.connection(6);
  c.close();
  const gaps = times.slice(1).map((time, i) => time - times[i]);
  // 20 ms doubling up to 160: the later gaps are each at least half of 160
  assert.ok(gaps.slice(3, 6).every((gap) => gap >= 70), `gaps ${gaps}`);
});

test("a token provider that fails or never answers fails the first connection", async (t) => {
  const server = await fakeServer(t, (ws, url) => welcome(ws, url));
  const failing = client(t, server.url, "alice", "r1", {
    tokenProvider: () => Promise.reject(new Error("no token service")),
  });
  await assert.rejects(within(failing.ready, "ready"), { code: "unauthenticated" });
  const silent = client(t, server.url, "bob", "r1", {
    tokenProvider: () => new Promise(() => {}),
    connectTimeout: 300,
  });
  await assert.rejects(within(silent.ready, "ready"), { code: "timeout" });
  assert.equal(server.urls.length, 0);
});

test("an error frame without id is no reason for a close that comes later", async (t) => {
  const server = await fakeServer(t, (ws, url) => {
    welcome(ws, url);
    sendFrame(ws, "error", { code: "forbidden", message: "not here" });
    sendFrame(ws, "chat", "later", { room: "r1", from: "bob", offset: 1 });
    ws.on("message", (raw) => JSON.parse(raw).topic === "bye" && ws.close(1000));
  });
  const c = client(t, server.url, "alice", "r1");
  const chat = next(c, "chat");
  await within(c.ready, "welcome");
  await chat;
  const closed = status(c, "closed");
  c.send("bye", 1);
  const info = await closed;
  assert.equal(info.code, 1000);
  assert.equal(info.error, undefined);
});
