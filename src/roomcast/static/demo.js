// The demo chat page: one room per tab, built on the roomcast TypeScript client.
// User text only ever reaches the page through textContent, never as HTML.
import { Client } from "./roomcast.min.js";

const $ = (id) => document.getElementById(id);
const STATUS_TEXT = {
  idle: "not connected",
  connecting: "connecting…",
  connected: "connected",
  reconnecting: "reconnecting…",
  recovered: "recovered",
  closed: "disconnected",
};
const REASONS = {
  4400: "that name or room is not valid",
  4401: "authentication is required",
  4403: "this room is not open to you",
  4409: "that name is already taken in this room",
  4499: "you were removed from the room",
};

let client = null;
let me = "";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(status, detail) {
  const badge = $("status");
  badge.dataset.status = status;
  badge.textContent = detail ? `${STATUS_TEXT[status]}: ${detail}` : STATUS_TEXT[status];
}

function append(node) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(node);
  if (atBottom || node.classList.contains("mine")) list.scrollTop = list.scrollHeight;
}

function notice(text, kind = "") {
  const item = el("li", `notice ${kind}`.trim(), text);
  if (kind) item.dataset.kind = kind;
  append(item);
}

function time() {
  return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function showMessage(message) {
  const { payload, from } = message;
  const text =
    payload && typeof payload === "object" && typeof payload.text === "string"
      ? payload.text
      : JSON.stringify(payload);
  const item = el("li", from === me ? "msg mine" : "msg");
  item.dataset.offset = String(message.offset ?? "");
  const meta = el("div", "meta");
  meta.append(el("span", "from", from === "$server" ? "server" : from), el("time", "time", time()));
  item.append(meta, el("div", "text", text));
  append(item);
}

function showMembers() {
  const list = $("members");
  const names = [...client.members].sort((a, b) => a.localeCompare(b));
  list.replaceChildren(...names.map((name) => el("li", name === me ? "me" : "", name)));
  $("member-count").textContent = String(names.length);
}

function join(username, room) {
  me = username;
  $("join-error").hidden = true;
  $("messages").replaceChildren();
  $("members").replaceChildren();
  $("room-name").textContent = room;
  setStatus("connecting");

  const url = new URL(".", location.href).href; // the server that served this page
  // a chat page should not wait long after the server is back: cap the backoff at 5 s
  client = new Client({ url, username, room, maxDelay: 5000 });
  let joined = false;
  let away = false;
  let lost = false;

  client.on("welcome", () => showMembers());
  client.on("chat", showMessage);
  client.on("presence.join", (m) => {
    showMembers();
    if (m.payload.username !== me) notice(`${m.payload.username} joined`);
  });
  client.on("presence.leave", (m) => {
    showMembers();
    notice(`${m.payload.username} left`);
  });
  client.on("error", (m) => notice(`error: ${m.payload.message}`, "error"));
  client.onReset(() => {
    lost = true;
    notice("Reconnected, but messages sent while you were away could not be recovered.", "reset");
  });
  client.onStatus((status, info) => {
    if (status === "closed") {
      const reason = REASONS[info.code] ?? info.reason ?? "";
      if (!joined) return backToForm(reason || "could not join");
      setStatus("closed", reason);
      $("text").disabled = true;
      notice(`Disconnected${reason ? `: ${reason}` : ""}.`, "closed");
      return;
    }
    setStatus(status);
    if (status === "reconnecting" && !away) {
      away = true;
      notice("Connection lost, reconnecting…", "lost");
    }
    if (status === "connected" || status === "recovered") {
      if (!joined) {
        joined = true;
        showChat(room);
      } else if (away && !lost) {
        notice(status === "recovered" ? "Reconnected: nothing was missed." : "Reconnected.", status);
      }
      away = lost = false;
    }
  });
}

function showChat(room) {
  $("join-view").hidden = true;
  $("chat-view").hidden = false;
  $("room-name").hidden = false;
  $("leave").hidden = false;
  $("text").disabled = false;
  $("text").focus();
  history.replaceState(null, "", `?room=${encodeURIComponent(room)}`);
}

function backToForm(error) {
  if (client) client.close();
  client = null;
  $("chat-view").hidden = true;
  $("room-name").hidden = true;
  $("leave").hidden = true;
  $("join-view").hidden = false;
  setStatus("idle");
  if (error) {
    $("join-error").textContent = `Could not join: ${error}.`;
    $("join-error").hidden = false;
  }
  $("username").focus();
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const username = $("username").value.trim();
  const room = $("room").value.trim();
  if (!username || !room) return;
  localStorage.setItem("roomcast.username", username);
  join(username, room);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !client || client.status === "closed") return;
  client.send("chat", { text });
  input.value = "";
});

$("leave").addEventListener("click", () => backToForm(""));

const params = new URLSearchParams(location.search);
$("username").value = params.get("username") ?? localStorage.getItem("roomcast.username") ?? "";
if (params.get("room")) $("room").value = params.get("room");
$("username").focus();
