// Protocol section 10 from the client against a real server: a backlog at connect and on join,
// history pages back with before/limit, and echo: false.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { client, collect, next, publish, sharedServer, within } from "./helpers.mjs";

const room = () => `js-h-${randomUUID().slice(0, 8)}`;

test("a backlog at connect and on join replays the last messages once, then live ones", async (t) => {
  const { url } = await sharedServer(t);
  const [r1, r2] = [room(), room()];
  for (let n = 1; n <= 5; n++) {
    await publish(url, r1, "chat", n);
    await publish(url, r2, "chat", n * 10);
  }
  const alice = client(t, url, "alice", r1, { backlog: 3 });
  const first = collect(alice, "chat", 3);
  await within(alice.ready, "welcome");
  assert.deepEqual((await first).map((m) => m.offset), [3, 4, 5]);
  const other = await within(alice.join(r2, { backlog: 2 }), "join");
  const replayed = [];
  other.on("chat", (m) => replayed.push(m.payload));
  const live = within(
    new Promise((resolve) => {
      const off = alice.on("chat", (m) => m.room === r1 && (off(), resolve(m)));
    }),
    "the live message",
  );
  await publish(url, r1, "chat", 6);
  assert.equal((await live).offset, 6);
  assert.deepEqual(replayed, [40, 50]);
  assert.equal(alice.offset, 6);
});

test("history pages back with before and limit, oldest first, in the URL room and a joined one", async (t) => {
  const { url } = await sharedServer(t);
  const [r1, r2] = [room(), room()];
  for (let n = 1; n <= 7; n++) await publish(url, r1, "chat", n);
  await publish(url, r2, "chat", "only");
  const alice = client(t, url, "alice", r1);
  await within(alice.ready, "welcome");
  const latest = await alice.history({ limit: 3 });
  assert.deepEqual(latest.messages.map((m) => m.payload), [5, 6, 7]);
  assert.equal(latest.epoch, alice.epoch);
  const older = await alice.history({ before: latest.messages[0].offset, limit: 3 });
  assert.deepEqual(older.messages.map((m) => [m.offset, m.room, m.from]), [
    [2, r1, "$server"],
    [3, r1, "$server"],
    [4, r1, "$server"],
  ]);
  assert.deepEqual((await alice.history({ before: 1 })).messages, []);
  const second = await within(alice.join(r2), "join");
  assert.deepEqual((await second.history()).messages.map((m) => m.payload), ["only"]);
  await assert.rejects(alice.history({ limit: 101 }), { code: "bad_request" });
  await assert.rejects(alice.history({ room: room() }), { code: "not_joined" });
});

test("echo false: the sender's ack has the offset, the sender does not get the message", async (t) => {
  const { url } = await sharedServer(t);
  const r = room();
  const alice = client(t, url, "alice", r);
  const bob = client(t, url, "bob", r);
  await within(Promise.all([alice.ready, bob.ready]), "welcomes");
  const seen = [];
  alice.on("chat", (m) => seen.push(m.payload));
  const atBob = collect(bob, "chat", 2);
  const quiet = await alice.request("chat", "quiet", undefined, undefined, { echo: false });
  alice.send("chat", "loud");
  const echoed = next(alice, "chat");
  const [first, second] = await atBob;
  assert.deepEqual([first.payload, first.offset], ["quiet", quiet]);
  assert.equal((await echoed).payload, "loud");
  assert.deepEqual(seen, ["loud"]);
  assert.equal(second.offset, quiet + 1);
});
