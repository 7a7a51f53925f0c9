// The `ws` package's WebSocket (with @types/ws) fits the WebSocket option under `strict`.
import WebSocket from "ws";
import { Client, connect } from "../../dist/index.js";

const client = new Client({ url: "ws://127.0.0.1:8000", username: "alice", room: "lobby", WebSocket });
client.on("chat", (message) => message.payload);
export const connected: Promise<Client> = connect({ url: "http://127.0.0.1:8000", username: "bob", room: "lobby", WebSocket });
