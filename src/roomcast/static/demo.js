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
// Why a join was refused (the form shows it) ...
const REFUSED = {
  1006: "the server cannot be reached",
  4400: "that name or room is not valid",
  4401: "authentication is required",
  4403: "this room is not open to you",
  4409: "that name is already taken in this room",
  4499: "you were removed from the room",
};
// ... and why a joined page was disconnected for good.
const ENDED = {
  4409: "you joined from another tab or device",
  4499: "you were removed from the room",
};
const HISTORY = 50; // messages shown to a page that joins a room with history
const SESSION = "roomcast.session"; // a tab's room, kept across a reload (sessionStorage)
const SHOWN = new Set(["welcome", "presence", "presence.join", "presence.leave", "error", "pong", "ack"]);

let client = null; // the one client of this tab: a new join closes the previous one
let me = "";
let room = "";
const tabs = "BroadcastChannel" in globalThis ? new BroadcastChannel("roomcast-demo") : null;
const elsewhere = new Set(); // "room\nname" joined in this browser's other tabs

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
  return node;
}

function notice(text, kind = "") {
  const item = el("li", `notice ${kind}`.trim(), text);
  if (kind) item.dataset.kind = kind;
  return append(item);
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** A room message as a list item; `at` in the payload is the sender's clock. */
function messageItem(message) {
  const { payload, from, topic } = message;
  const chat = topic === "chat" && payload && typeof payload.text === "string";
  const item = el("li", from === me ? "msg mine" : "msg");
  if (!chat) item.classList.add("other");
  item.dataset.offset = String(message.offset ?? "");
  const meta = el("div", "meta");
  const sent = payload && typeof payload.at === "number" ? payload.at : Date.now();
  meta.append(el("span", "from", from === "$server" ? "server" : from));
  if (!chat) meta.append(el("span", "topic", topic));
  meta.append(el("time", "time", clock(sent)));
  item.append(meta, el("div", "text", chat ? payload.text : JSON.stringify(payload)));
  return item;
}

function shown(offset) {
  return $("messages").querySelector(`.msg[data-offset="${offset}"]`) !== null;
}

function showMessage(message) {
  if (message.offset !== undefined && shown(message.offset)) return;
  append(messageItem(message));
}

/** Put the room's last messages up to `upTo` above what the page shows (HTTP history API). */
async function showHistory(c, upTo) {
  if (upTo < 1) return;
  const path = `api/v1/rooms/${encodeURIComponent(room)}/history?since=${Math.max(0, upTo - HISTORY)}`;
  let page;
  try {
    const response = await fetch(new URL(path, new URL(".", location.href)));
    if (!response.ok) return; // e.g. an API key is required: no history then
    page = await response.json();
  } catch {
    return;
  }
  if (c !== client) return;
  const list = $("messages");
  const older = page.messages.filter((m) => m.offset <= upTo && !shown(m.offset) && !m.to);
  list.prepend(...older.map(messageItem));
  list.scrollTop = list.scrollHeight;
}

function showMembers(names = client.members) {
  const list = $("members");
  const sorted = [...names].sort((a, b) => a.localeCompare(b));
  list.replaceChildren(...sorted.map((name) => el("li", name === me ? "me" : "", name)));
  $("member-count").textContent = String(sorted.length);
}

function setComposer(enabled) {
  for (const id of ["text", "send"]) $(id).disabled = !enabled;
  $("members").classList.toggle("offline", !enabled);
}

function join(username, roomID, resume) {
  if (client) client.close(); // a second click, or a join after a refusal: one client only
  me = username;
  room = roomID;
  $("join-error").hidden = true;
  $("join-button").disabled = true;
  $("messages").replaceChildren();
  $("members").replaceChildren();
  $("room-name").textContent = room;
  setStatus("connecting");

  const url = new URL(".", location.href).href; // the server that served this page
  // a chat page should not wait long after the server is back: cap the backoff at 5 s
  const c = new Client({ url, username, room, maxDelay: 5000, ...resume });
  client = c;
  const mine = (handler) => (...args) => c === client && handler(...args);
  let joined = false;
  let away = false;
  let lost = false;
  let before = [];
  let lastError = null;

  c.on("welcome", mine((m) => {
    showMembers();
    if (!joined) {
      notice(`You joined ${room} as ${me}.`, "joined");
      showHistory(c, resume ? resume.since : m.payload.offset);
      return;
    }
    // who came and went while this page was away
    for (const name of m.payload.members) if (!before.includes(name)) notice(`${name} joined`);
    for (const name of before) if (!m.payload.members.includes(name)) notice(`${name} left`);
  }));
  c.on("*", mine((m) => {
    if (m.from !== undefined && !SHOWN.has(m.topic)) showMessage(m);
  }));
  c.on("presence.join", mine((m) => {
    showMembers();
    if (m.payload.username !== me) notice(`${m.payload.username} joined`);
  }));
  c.on("presence.leave", mine((m) => {
    showMembers();
    notice(`${m.payload.username} left`);
  }));
  c.on("error", mine((m) => (lastError = notice(`error: ${m.payload.message}`, "error"))));
  c.onReset(mine((w) => {
    lost = true;
    // offsets start again in the room's new history: what is shown no longer counts as seen
    for (const item of $("messages").querySelectorAll(".msg[data-offset]")) delete item.dataset.offset;
    // a server that restarted with nothing sent since has lost nothing this page had not seen
    if (w.offset === 0) notice("Reconnected: the server restarted.", "restarted");
    else notice("Reconnected, but messages sent while you were away could not be recovered.", "reset");
  }));
  c.onStatus(mine((status, info) => {
    if (status === "closed") {
      if (!joined) {
        const why = REFUSED[info.code] ?? info.reason;
        return backToForm(why || "could not join");
      }
      const why = ENDED[info.code] ?? info.reason ?? "";
      setStatus("closed", why);
      setComposer(false);
      // the server's error frame said the same as the close: one notice, not two
      if (lastError && info.error && lastError === $("messages").lastElementChild) lastError.remove();
      notice(`Disconnected${why ? `: ${why}` : ""}.`, "closed");
      showMembers([]);
      return;
    }
    setStatus(status);
    if (status === "reconnecting" && !away) {
      away = true;
      before = [...c.members];
      notice("Connection lost, reconnecting…", "lost");
    }
    if (status === "connected" || status === "recovered") {
      if (!joined) {
        joined = true;
        showChat();
      } else if (away && !lost) {
        notice(status === "recovered" ? "Reconnected: nothing was missed." : "Reconnected.", status);
      }
      away = lost = false;
    }
  }));
}

function showChat() {
  $("join-view").hidden = true;
  $("chat-view").hidden = false;
  $("room-name").hidden = false;
  $("leave").hidden = false;
  setComposer(true);
  $("text").focus();
  history.replaceState(null, "", `?room=${encodeURIComponent(room)}`);
  tabs?.postMessage({ room, name: me });
}

function backToForm(error) {
  if (client) client.close();
  client = null;
  $("chat-view").hidden = true;
  $("room-name").hidden = true;
  $("leave").hidden = true;
  $("join-view").hidden = false;
  $("join-button").disabled = false;
  setStatus("idle");
  if (error) {
    $("join-error").textContent = `Could not join: ${error}.`;
    $("join-error").hidden = false;
  }
  $("username").focus();
}

/** The remembered name, unless another tab of this browser is in the room under it. */
function suggestName() {
  const input = $("username");
  const key = () => `${$("room").value.trim()}\n${input.value.trim()}`;
  if (!input.value || input.dataset.typed || !elsewhere.has(key())) return;
  const base = input.value.trim().replace(/-\d+$/, "");
  for (let n = 2; elsewhere.has(key()); n++) input.value = `${base}-${n}`;
  $("join-hint").textContent = `${base} is in this room in another tab: this tab joins as ${input.value}.`;
}

tabs?.addEventListener("message", ({ data }) => {
  if (data === "who") {
    if (client && client.status !== "closed" && !$("chat-view").hidden) tabs.postMessage({ room, name: me });
  } else if (data && typeof data.name === "string") {
    elsewhere.add(`${data.room}\n${data.name}`);
    if (!client) suggestName();
  }
});

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const username = $("username").value.trim();
  const roomID = $("room").value.trim();
  if (!username || !roomID || $("join-button").disabled) return;
  localStorage.setItem("roomcast.username", username);
  join(username, roomID);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !client || client.status === "closed") return;
  client.send("chat", { text, at: Date.now() });
  input.value = "";
});

$("leave").addEventListener("click", () => backToForm(""));
$("username").addEventListener("input", (event) => (event.target.dataset.typed = "1"));

// A reload resumes the tab's room where it was: the resuming connection takes over the name
// at once, even while the server still counts the page's old connection as present.
addEventListener("pagehide", () => {
  if (client && client.welcome && client.status !== "closed") {
    sessionStorage.setItem(SESSION, JSON.stringify({ username: me, room, since: client.offset, epoch: client.epoch }));
  }
});

const params = new URLSearchParams(location.search);
const saved = JSON.parse(sessionStorage.getItem(SESSION) ?? "null");
sessionStorage.removeItem(SESSION); // a duplicated tab must not resume this tab's connection
$("username").value = params.get("username") ?? localStorage.getItem("roomcast.username") ?? "";
if (params.get("room")) $("room").value = params.get("room");
if (saved && (!params.get("room") || params.get("room") === saved.room)) {
  $("username").value = saved.username;
  $("room").value = saved.room;
  join(saved.username, saved.room, { since: saved.since, epoch: saved.epoch });
} else {
  tabs?.postMessage("who");
  $("username").focus();
}
