// The reference: Node `ws` with a plain loop over the room's sockets.
//
//   node bench/node/ws_plain.mjs PORT
import { WebSocketServer } from "ws";

const rooms = new Map();
const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.argv[2]),
                                  perMessageDeflate: false });
wss.on("connection", (ws, req) => {
  const room = new URL(req.url, "http://x").searchParams.get("room") ?? "r";
  let members = rooms.get(room);
  if (!members) rooms.set(room, (members = new Set()));
  members.add(ws);
  ws.on("message", (data, isBinary) => {
    for (const m of members) m.send(data, { binary: isBinary });
  });
  ws.on("close", () => {
    members.delete(ws);
    if (members.size === 0) rooms.delete(room);
  });
});
