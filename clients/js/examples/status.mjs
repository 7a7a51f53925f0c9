// Follow a client's connection: status changes, a lost history, and the end of the connection
// when the server's HTTP API removes the member.
//
//   node examples/status.mjs [http://127.0.0.1:8000] [room]
import WebSocket from "ws";
import { Client } from "roomcast-client";

const url = process.argv[2] ?? "http://127.0.0.1:8000";
const room = process.argv[3] ?? "lobby";

const client = new Client({ url, room, username: "carol", WebSocket });
const closed = new Promise((resolve) => {
  client.onStatus((status, info) => {
    console.log(`status: ${status}${info.code ? ` (${info.code}: ${info.error?.code})` : ""}`);
    if (status === "closed") resolve();
  });
});
// after a reconnect that could not resume the room: reload what the page shows
client.onReset((welcome) => console.log(`history lost, now at offset ${welcome.offset}`));

const welcome = await client.ready;
console.log(`joined ${welcome.roomID} with ${welcome.members.join(", ")}`);

// remove carol the way a moderator tool would: she is not reconnected
await fetch(`${url}/api/v1/rooms/${room}/members/carol`, { method: "DELETE" });
await closed;
