// Room handles (protocol v1.1 section 7) against a scripted server: join with a backlog,
// frames only in their room, publish and request with `room`, refusals, leave and kick, and
// every room re-joined with its own since + epoch after a reconnect; then, against a real
// server, several rooms resumed across a dropped network.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";
import { client, fakeServer, next, proxy, publish, sendFrame, Server, status, welcome, within } from "./helpers.mjs";

/**
 * A v1.1 server: `room.join` is answered with `joined`, the backlog (offsets 1..offset) and an
 * ack; `room.leave` and room frames are acked. `frames` records what the client sent, per
 * connection; `sockets` the server side of each connection.
 */
async function roomsServer(t, { offset = 3, refuse = {}, recovered = true, onConnect } = {}) {
  const frames = [];
  const sockets = [];
  const server = await fakeServer(t, (ws, url, n) => {
    frames.push([]);
    sockets.push(ws);
    if (url.searchParams.has("roomID")) welcome(ws, url, { offset, recovered: url.searchParams.has("since") ? recovered : undefined });
    else sendFrame(ws, "welcome", { connectionId: "c", username: url.searchParams.get("username"), rooms: [] });
    ws.on("message", (raw) => {
      const f = JSON.parse(raw);
      frames[n].push(f);
      const p = f.payload;
      if (f.topic === "room.join") {
        if (refuse[p.roomID]) return sendFrame(ws, "error", { code: refuse[p.roomID], message: "no", id: f.id });
        const joined = { roomID: p.roomID, members: ["alice"], epoch: `e-${p.roomID}`, offset };
        if (p.since !== undefined) joined.recovered = recovered;
        sendFrame(ws, "joined", joined, { room: p.roomID });
        const from = p.since ?? (p.backlog ? offset - p.backlog : offset);
        for (let o = from + 1; o <= offset; o++) sendFrame(ws, "chat", { n: o }, { room: p.roomID, from: "bob", offset: o });
      } else if (f.topic === "presence") {
        sendFrame(ws, "presence", { members: ["alice", "zed"] }, { room: p.roomID });
      }
      if (f.id !== undefined && !(f.topic === "room.join" && refuse[p.roomID])) sendFrame(ws, "ack", { id: f.id, offset: f.room ? 9 : undefined });
    });
    onConnect?.(ws, url, n);
  });
  return { ...server, frames, sockets };
}

test("a room joined with a backlog gives it to a handler added after the join", async (t) => {
  const server = await roomsServer(t, { offset: 5 });
  const c = client(t, server.url, "alice", "lobby");
  const room = await within(c.join("news", { backlog: 2 }), "join");
  assert.equal(room.id, "news");
  assert.equal(room.joined, true);
  assert.deepEqual(room.members, ["alice"]);
  assert.equal(room.epoch, "e-news");
  const seen = [];
  room.on("chat", (m) => seen.push(m.offset));
  assert.deepEqual(seen, [4, 5]);
  assert.equal(room.offset, 5);
  const { key, ...join } = server.frames[0][0];
  assert.deepEqual(join, { topic: "room.join", payload: { roomID: "news", backlog: 2 }, id: 1 });
  assert.equal(typeof key, "string"); // every frame with an id carries a key
  assert.equal(c.rooms.get("news"), room);
  assert.equal(await c.join("news"), room);
});

test("frames reach only their room's handlers; client handlers see every room", async (t) => {
  const server = await roomsServer(t, { offset: 0 });
  const c = client(t, server.url, "alice", "lobby");
  const [a, b] = await within(Promise.all([c.join("a"), c.join("b")]), "joins");
  const inA = [];
  const inB = [];
  const everywhere = [];
  a.on("chat", (m) => inA.push(m.payload));
  b.on("*", (m) => inB.push(m.topic));
  c.on("chat", (m) => everywhere.push(`${m.room}:${m.payload}`));
  const ws = server.sockets[0];
  sendFrame(ws, "chat", "x", { room: "a", from: "bob", offset: 1 });
  sendFrame(ws, "chat", "y", { room: "b", from: "bob", offset: 1 });
  sendFrame(ws, "chat", "z", { room: "lobby", from: "bob", offset: 1 });
  sendFrame(ws, "chat", "gone", { room: "never-joined", from: "bob", offset: 1 });
  sendFrame(ws, "presence.join", { username: "carl" }, { room: "b" });
  await next(c, "presence.join");
  assert.deepEqual(inA, ["x"]);
  assert.deepEqual(inB, ["joined", "chat", "presence.join"]); // the join's frame waited for it
  assert.deepEqual(everywhere, ["a:x", "b:y", "lobby:z"]);
  assert.deepEqual(b.members, ["alice", "carl"]);
  assert.deepEqual(a.members, ["alice"]);
  assert.deepEqual(c.members, ["alice"]);
});

test("publish and request name the room; presence asks for the room's members", async (t) => {
  const server = await roomsServer(t, { offset: 0 });
  const c = client(t, server.url, "alice", "lobby");
  const room = await within(c.join("r2"), "join");
  room.publish("chat", { text: "hi" }, "bob");
  assert.equal(await room.request("chat", { text: "again" }), 9);
  assert.deepEqual(await room.presence(), ["alice", "zed"]);
  c.send("chat", "v1");
  await c.request("ping", 1);
  const sent = server.frames[0].slice(1).map(({ topic, payload, room, to }) => ({ topic, payload, room, to }));
  assert.deepEqual(sent, [
    { topic: "chat", payload: { text: "hi" }, room: "r2", to: "bob" },
    { topic: "chat", payload: { text: "again" }, room: "r2", to: undefined },
    { topic: "presence", payload: { roomID: "r2" }, room: undefined, to: undefined },
    { topic: "chat", payload: "v1", room: "lobby", to: undefined },
    { topic: "ping", payload: 1, room: undefined, to: undefined },
  ]);
});

test("a refused join rejects with the server's code and leaves no handle", async (t) => {
  const server = await roomsServer(t, { refuse: { secret: "forbidden", full: "too_many_rooms" } });
  const c = client(t, server.url, "alice", "lobby");
  await assert.rejects(c.join("secret"), { code: "forbidden" });
  await assert.rejects(c.join("full"), { code: "too_many_rooms" });
  assert.deepEqual([...c.rooms.keys()], ["lobby"]);
  assert.equal(c.status, "connected");
});

test("a first join that is never answered rejects with timeout after a few tries, and close leaves no timer", async (t) => {
  const joins = [];
  const server = await fakeServer(t, (ws, url) => {
    sendFrame(ws, "welcome", { connectionId: "c", username: url.searchParams.get("username"), rooms: [] });
    ws.on("message", (raw) => {
      const f = JSON.parse(raw);
      if (f.topic === "room.join") joins.push(f); // never answered
    });
  });
  const c = client(t, server.url, "alice", undefined, { requestTimeout: 100 });
  await within(c.ready, "connected");
  await assert.rejects(within(c.join("quiet"), "join settles"), (e) => e.code === "timeout");
  assert.equal(joins.length, 3);
  assert.deepEqual([...c.rooms.keys()], []);
  // A re-ask waiting for its backoff when the client closes is cancelled with it.
  const pending = c.join("later").catch((e) => e.code);
  const later = c.rooms.get("later");
  await within(
    new Promise((resolve) => {
      const check = () => (later.retries === 1 ? resolve() : setTimeout(check, 5));
      check();
    }),
    "a re-ask waiting for its backoff",
  );
  assert.equal(later.timer._destroyed, false); // (Node's own flag of a cleared timer)
  c.close();
  assert.equal(await within(pending, "join rejected on close"), "closed");
  assert.equal(later.timer._destroyed, true); // no timer left to keep the process alive
});

test("leave sends room.leave and nothing more of the room is delivered; a kick leaves too", async (t) => {
  const server = await roomsServer(t, { offset: 0 });
  const c = client(t, server.url, "alice", "lobby");
  const [gone, kicked] = await within(Promise.all([c.join("gone"), c.join("kicked")]), "joins");
  const seen = [];
  gone.on("*", (m) => seen.push(m.topic));
  await gone.leave();
  assert.equal(gone.joined, false);
  assert.deepEqual(server.frames[0].at(-1).payload, { roomID: "gone" });
  const left = next(c, "left");
  sendFrame(server.sockets[0], "chat", "late", { room: "gone", from: "bob", offset: 1 });
  sendFrame(server.sockets[0], "left", { roomID: "kicked", reason: "kicked" }, { room: "kicked" });
  assert.equal((await left).payload.reason, "kicked");
  assert.equal(kicked.joined, false);
  assert.deepEqual(seen, ["joined"]); // the join's own frame, and nothing after the leave
  assert.deepEqual([...c.rooms.keys()], ["lobby"]);
});

test("after a reconnect every room is joined again with its own since and epoch", async (t) => {
  const server = await roomsServer(t, {
    offset: 2,
    onConnect: (ws, url, n) => n === 0 && setTimeout(() => ws.close(1012), 50),
  });
  const c = client(t, server.url, "alice", "lobby");
  const a = await within(c.join("a"), "join a");
  const b = await within(c.join("b", { backlog: 1 }), "join b");
  const got = [];
  a.on("chat", (m) => got.push(`a${m.offset}`));
  b.on("chat", (m) => got.push(`b${m.offset}`));
  const recovered = status(c, "recovered");
  await recovered;
  const second = await server.connection(1);
  assert.equal(second.searchParams.get("roomID"), "lobby");
  assert.equal(second.searchParams.get("since"), "2");
  await within(
    (async () => {
      while (server.frames[1]?.filter((f) => f.topic === "room.join").length !== 2) await new Promise((r) => setTimeout(r, 10));
    })(),
    "re-joins",
  );
  const joins = server.frames[1].filter((f) => f.topic === "room.join").map((f) => f.payload);
  assert.deepEqual(joins, [
    { roomID: "a", since: 2, epoch: "e-a" },
    { roomID: "b", since: 2, epoch: "e-b" },
  ]);
  assert.deepEqual(got, ["b2"]); // nothing replayed twice
});

test("a re-join that cannot resume resets that room", async (t) => {
  const server = await roomsServer(t, {
    offset: 2,
    recovered: false,
    onConnect: (ws, url, n) => n === 0 && setTimeout(() => ws.close(1012), 50),
  });
  const c = client(t, server.url, "alice", "lobby");
  const a = await within(c.join("a"), "join");
  const reset = await within(new Promise((resolve) => a.onReset(resolve)), "reset");
  assert.equal(reset.recovered, false);
  assert.equal(a.offset, 2);
});

test("without a room option the connection starts in no room", async (t) => {
  const server = await roomsServer(t, { offset: 0 });
  const c = client(t, server.url, "alice", undefined);
  const w = await within(c.ready, "welcome");
  assert.deepEqual(w.rooms, []);
  assert.equal(server.urls[0].searchParams.has("roomID"), false);
  assert.deepEqual(c.members, []);
  const r = await within(c.join("r1"), "join");
  assert.equal(r.joined, true);
});

test("on a real server, three rooms on one connection each resume across a dropped network", async (t) => {
  const server = await new Server().start();
  t.after(() => server.stop());
  const net = await proxy(t, server.port);
  const names = ["ra", "rb", "rc"].map((n) => `${n}-${randomUUID().slice(0, 6)}`);
  const c = client(t, net.url, "alice", undefined);
  const rooms = await within(Promise.all(names.map((name) => c.join(name))), "joins");
  const seen = rooms.map((room) => collectRoom(room, 6));
  for (const n of [1, 2]) for (const name of names) await publish(server.url, name, "chat", { name, n });
  const reconnecting = status(c, "reconnecting");
  net.cut();
  await reconnecting;
  for (const n of [3, 4, 5]) for (const name of names) await publish(server.url, name, "chat", { name, n });
  const connected = status(c, "connected");
  net.heal();
  await connected;
  for (const name of names) await publish(server.url, name, "chat", { name, n: 6 });
  for (const [i, frames] of (await Promise.all(seen)).entries()) {
    assert.deepEqual(frames.map((m) => m.offset), [1, 2, 3, 4, 5, 6], names[i]);
    assert.deepEqual(new Set(frames.map((m) => m.payload.name)), new Set([names[i]]));
  }
});

/** Resolve with the first `count` chat messages of `room`. */
function collectRoom(room, count) {
  const seen = [];
  return within(
    new Promise((resolve) => room.on("chat", (m) => seen.push(m) === count && resolve(seen))),
    `${count} messages in ${room.id}`,
  );
}

test("on a real server, frames for a left URL room answer not_joined instead of reaching another room", async (t) => {
  const server = await new Server().start();
  t.after(() => server.stop());
  const lobby = `lobby-${randomUUID()}`;
  const c = client(t, server.url, "alice", lobby);
  await within(c.ready, "welcome");
  const news = await within(c.join(`news-${randomUUID()}`), "join");
  await within(c.rooms.get(lobby).leave(), "leave");
  await assert.rejects(within(c.request("chat", "meant for the lobby"), "answer"), { code: "not_joined" });
  await assert.rejects(within(c.history(), "history"), { code: "not_joined" });
  assert.deepEqual((await within(news.history(), "news history")).messages, []);
});

test("a re-join answered unavailable (the broker down for now) is asked again, not given up", async (t) => {
  const refuse = {};
  const server = await roomsServer(t, {
    offset: 2,
    recovered: true,
    refuse,
    onConnect: (ws, url, n) => {
      if (n === 0) setTimeout(() => ((refuse.a = "unavailable"), ws.close(1012)), 50);
      // the first re-join is refused; the next one is answered
      else setTimeout(() => delete refuse.a, 300);
    },
  });
  const c = client(t, server.url, "alice", "lobby");
  const a = await within(c.join("a"), "join");
  const left = [];
  c.on("left", (m) => left.push(m));
  await server.connection(1);
  await within(
    new Promise((resolve) => {
      const check = () => (server.frames[1]?.filter((f) => f.topic === "room.join").length >= 2 ? resolve() : setTimeout(check, 20));
      check();
    }),
    "a second room.join",
  );
  assert.deepEqual(left, []);
  assert.equal(a.joined, true);
  assert.equal(c.rooms.get("a"), a);
});
