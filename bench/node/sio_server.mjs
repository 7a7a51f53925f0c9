// Node Socket.IO with rooms: "join" (acknowledged), then every "m" is emitted to the room.
//
//   node bench/node/sio_server.mjs PORT
import { Server } from "socket.io";

const io = new Server({ transports: ["websocket"], perMessageDeflate: false,
                        serveClient: false });
io.on("connection", (socket) => {
  socket.on("join", (room, ack) => {
    socket.join(room);
    socket.data.room = room;
    if (typeof ack === "function") ack(true);
  });
  socket.on("m", (data) => io.to(socket.data.room).emit("m", data));
});
io.listen(Number(process.argv[2]));
