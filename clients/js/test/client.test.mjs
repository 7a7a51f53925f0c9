// The client against a real roomcast server: chat, request/ack, errors, presence, refusals.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import WebSocket from "ws";
import { connect, RoomcastError } from "../dist/index.js";
import { api, client, collect, next, publish, sharedServer, status, within } from "./helpers.mjs";

const room = () => `js-${randomUUID().slice(0, 8)}`;

test("two members chat: the sender gets the ack offset and both see the message once", async (t) => {
  const { url } = await sharedServer(t);
  const r = room();
  const alice = client(t, url, "alice", r);
  const first = await within(alice.ready, "alice welcome");
  assert.deepEqual(first.members, ["alice"]);
  const bob = client(t, url, "bob", r);
  const joined = next(alice, "presence.join");
  await within(bob.ready, "bob welcome");
  assert.equal((await joined).payload.username, "bob");
  assert.deepEqual(alice.members, ["alice", "bob"]);

  const atBob = next(bob, "chat");
  const offset = await alice.request("chat", { text: "hi" });
  assert.equal(offset, first.offset + 1);
  assert.deepEqual(await atBob, { topic: "chat", payload: { text: "hi" }, room: r, from: "alice", offset });
  assert.equal(bob.offset, offset);

  const left = next(alice, "presence.leave");
  bob.close();
  assert.equal((await left).payload.username, "bob");
  assert.deepEqual(alice.members, ["alice"]);
});

test("send to one member reaches only that member", async (t) => {
  const { url } = await sharedServer(t);
  const r = room();
  const [a, b, c] = ["a", "b", "c"].map((name) => client(t, url, name, r));
  await within(Promise.all([a.ready, b.ready, c.ready]), "welcomes");
  const atB = next(b, "dm");
  let atC = 0;
  c.on("dm", () => atC++);
  a.send("dm", "psst", "b");
  const message = await atB;
  assert.equal(message.payload, "psst");
  assert.equal(message.from, "a");
  // c answers a request only after frames queued before it: nothing was queued for c
  await c.request("ping", 1);
  assert.equal(atC, 0);
});

test("request rejects with the code and message of the error frame", async (t) => {
  const { url } = await sharedServer(t);
  const alice = client(t, url, "alice", room());
  await within(alice.ready, "welcome");
  const error = await alice.request("dm", "x", "nobody").then(
    () => assert.fail("request resolved"),
    (e) => e,
  );
  assert.ok(error instanceof RoomcastError);
  assert.equal(error.code, "member_not_found");
  assert.ok(error.message.length > 0);
});

test("presence lists the room's members and API messages come from $server", async (t) => {
  const { url } = await sharedServer(t);
  const r = room();
  const alice = client(t, url, "alice", r);
  const bob = client(t, url, "bob", r);
  await within(Promise.all([alice.ready, bob.ready]), "welcomes");
  assert.deepEqual((await alice.presence()).sort(), ["alice", "bob"]);
  const got = collect(alice, "news", 2);
  const o1 = await publish(url, r, "news", { n: 1 });
  const o2 = await publish(url, r, "news", { n: 2 });
  const messages = await got;
  assert.deepEqual(messages.map((m) => [m.from, m.offset, m.payload.n]), [
    ["$server", o1, 1],
    ["$server", o2, 2],
  ]);
});

test("a refused connect rejects with the close code and does not reconnect", async (t) => {
  const { url } = await sharedServer(t);
  const r = room();
  const first = client(t, url, "alice", r);
  await within(first.ready, "welcome");
  const duplicate = await connect({ url, username: "alice", room: r, WebSocket }).then(
    () => assert.fail("duplicate username was accepted"),
    (e) => e,
  );
  assert.equal(duplicate.closeCode, 4409);
  const bad = await connect({ url, username: "bad name", room: r, WebSocket }).then(
    () => assert.fail("invalid username was accepted"),
    (e) => e,
  );
  assert.equal(bad.closeCode, 4400);
  assert.equal(bad.code, "bad_request");
});

test("a kicked member is closed with 4499 and stays closed", async (t) => {
  const { url } = await sharedServer(t);
  const r = room();
  const alice = client(t, url, "alice", r);
  await within(alice.ready, "welcome");
  const closed = status(alice, "closed");
  const answer = await api(url, "DELETE", `/api/v1/rooms/${r}/members/alice`);
  assert.equal(answer.status, 204);
  assert.equal((await closed).code, 4499);
  assert.equal(alice.status, "closed");
  assert.throws(() => alice.send("chat", "late"), { code: "closed" });
  const members = await api(url, "GET", `/api/v1/rooms/${r}/members`);
  assert.deepEqual(members.body.members, []);
});

test("a relayed topic named like a server frame is a message, not an answer", async (t) => {
  const { url } = await sharedServer(t);
  const r = room();
  const alice = client(t, url, "alice", r);
  const mallory = client(t, url, "mallory", r);
  await within(Promise.all([alice.ready, mallory.ready]), "welcomes");
  const fake = next(alice, "ack");
  mallory.send("ack", { id: 1, offset: 99 });
  const message = await fake;
  assert.equal(message.from, "mallory");
  assert.deepEqual(message.payload, { id: 1, offset: 99 });
  assert.equal(await alice.request("chat", "real"), message.offset + 1);
});
