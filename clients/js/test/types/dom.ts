// The browsers' WebSocket (lib "DOM") fits the WebSocket option under `strict`.
import { Client } from "../../dist/index.js";

const client = new Client({
  url: "wss://chat.example.com/rt",
  username: "alice",
  room: "lobby",
  WebSocket: globalThis.WebSocket,
});
const explicit: typeof WebSocket = WebSocket;
export const both = [client, new Client({ url: "/", username: "a", room: "r", WebSocket: explicit })];
