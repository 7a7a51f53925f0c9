// Two members chat through a running roomcast server: handlers, send, request, presence and
// an error answer.
//
//   node examples/chat.mjs [http://127.0.0.1:8000] [room]
//
// Node 20 has no global WebSocket: pass the `ws` package's. Browsers and Node 22+ need no option.
import WebSocket from "ws";
import { connect, RoomcastError } from "roomcast-client";

const url = process.argv[2] ?? "http://127.0.0.1:8000";
const room = process.argv[3] ?? "lobby";

const alice = await connect({ url, room, username: "alice", WebSocket });
const bob = await connect({ url, room, username: "bob", WebSocket });

const done = new Promise((resolve) => {
  alice.on("chat", (message) => {
    const { payload, from, offset } = message;
    console.log(`alice got ${JSON.stringify(payload.text)} from ${from} (offset ${offset})`);
    if (payload.text === "bye") resolve();
  });
});
console.log(`members: ${(await alice.presence()).join(", ")}`);

const offset = await bob.request("chat", { text: "hi alice" });
bob.send("chat", { text: "just for you" }, "alice");
let refused = "";
try {
  await bob.request("chat", { text: "psst" }, "nobody");
} catch (error) {
  if (!(error instanceof RoomcastError)) throw error;
  refused = error.code;
}
await bob.request("chat", { text: "bye" });
await done;

console.log(`bob's first message got offset ${offset}`);
console.log(`bob's message to nobody was refused: ${refused}`);
alice.close();
bob.close();
