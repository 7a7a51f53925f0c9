// The demo chat page, built on the roomcast TypeScript client: one WebSocket per tab, in one
// room, or in several with a server that speaks protocol v1.1 (a room list with unread counts,
// presence per room, the last messages on join, older ones on scrolling up, a typing indicator
// on an ephemeral topic). User text only ever reaches the page through textContent, never as
// HTML.
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
const HISTORY = 50; // messages replayed to a page that joins a room (backlog), and per page back
const SESSION = "roomcast.session"; // a tab's rooms, kept across a reload (sessionStorage)
const SHOWN = new Set(["welcome", "joined", "left", "presence", "presence.join", "presence.leave", "error", "pong", "ack", "typing"]);
const TYPING = "typing"; // an ephemeral topic in the rooms of examples/roomcast.toml
const TYPING_EVERY = 2000; // ms between two typing frames of one person who keeps typing
const TYPING_FOR = 4000; // ms a typing indicator stays without a fresh typing frame
// A room of the class `announce` of examples/roomcast.toml, where clients may not publish
// (client_publish = false): the server posts there through its HTTP API.
const ANNOUNCEMENTS = "announce:news";

let client = null; // the one client of this tab: a new join closes the previous one
let me = "";
let first = null; // the view of the room joined with the form (the connection's URL room)
let active = null; // the view on screen
const views = new Map(); // room ID -> { id, room, list, entry, unread, joined, left }
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

function append(view, node) {
  const list = view.list;
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(node);
  if (atBottom || node.classList.contains("mine")) list.scrollTop = list.scrollHeight;
  return node;
}

function notice(view, text, kind = "") {
  const item = el("li", `notice ${kind}`.trim(), text);
  if (kind) item.dataset.kind = kind;
  return append(view, item);
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

function shown(view, offset) {
  return view.list.querySelector(`.msg[data-offset="${offset}"]`) !== null;
}

function showMessage(view, message) {
  if (message.offset !== undefined && shown(view, message.offset)) return;
  append(view, messageItem(message));
  stopTyping(view, message.from);
  if (typeof message.offset === "number" && !(view.oldest <= message.offset)) view.oldest = message.offset;
  if (view !== active && message.from !== me) {
    view.unread++;
    showRooms();
  }
}

/**
 * Put up to HISTORY older messages (offsets below `before`, default: below the oldest shown)
 * above what the view shows, keeping what is on screen in place (`room.history`).
 */
async function showOlder(view, before = view.oldest) {
  if (view.loading || view.exhausted || !(before > 1)) {
    if (before <= 1) view.exhausted = true;
    return;
  }
  view.loading = true;
  let page;
  try {
    page = await view.room.history({ before, limit: HISTORY });
  } catch {
    page = null; // a v1 server has no room.history, or the connection dropped: try later
  } finally {
    view.loading = false;
  }
  if (views.get(view.id) !== view || !page) return;
  const older = page.messages.filter((m) => m.offset < before && !shown(view, m.offset));
  if (!older.length) {
    view.exhausted = true;
    return;
  }
  const list = view.list;
  const fromBottom = list.scrollHeight - list.scrollTop;
  const anchor = [...list.children].find((item) => item.matches(".msg[data-offset]")) ?? null;
  for (const message of older) list.insertBefore(messageItem(message), anchor);
  list.scrollTop = list.scrollHeight - fromBottom;
  view.oldest = Math.min(view.oldest ?? before, older[0].offset);
  if (older[0].offset <= 1) view.exhausted = true;
}

/** Someone is typing in `view` (an ephemeral `typing` frame); shown for a few seconds. */
function startTyping(view, name) {
  clearTimeout(view.typing.get(name));
  view.typing.set(name, setTimeout(() => stopTyping(view, name), TYPING_FOR));
  if (view === active) showTyping();
}

function stopTyping(view, name) {
  if (!view.typing.has(name)) return;
  clearTimeout(view.typing.get(name));
  view.typing.delete(name);
  if (view === active) showTyping();
}

function showTyping() {
  const names = active && !active.left ? [...active.typing.keys()].sort((a, b) => a.localeCompare(b)) : [];
  const line = $("typing");
  line.textContent =
    names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : `${names.slice(0, -1).join(", ")} and ${names.at(-1)} are typing…`;
  line.hidden = names.length === 0;
}

/** Tell the active room that this person is typing: at most one frame per TYPING_EVERY. */
function typed() {
  const view = active;
  if (!view || view.left || view.readOnly || view.storesTyping || !client || client.status === "closed") return;
  const now = Date.now();
  if (now - view.typedAt < TYPING_EVERY) return;
  view.typedAt = now;
  // not back to this tab (echo false); an ack with an offset means the room keeps typing
  // frames as messages (the topic is not ephemeral there): stop sending them to that room
  view.room
    .request(TYPING, { on: true }, undefined, { echo: false })
    .then((offset) => (view.storesTyping = offset !== undefined), () => {});
}

function showMembers() {
  const names = active && !active.left && client?.status !== "closed" ? active.room.members : [];
  const sorted = [...names].sort((a, b) => a.localeCompare(b));
  $("members").replaceChildren(...sorted.map((name) => el("li", name === me ? "me" : "", name)));
  $("member-count").textContent = String(sorted.length);
}

function showRooms() {
  for (const view of views.values()) {
    view.entry.classList.toggle("active", view === active);
    view.entry.classList.toggle("left", view.left);
    const badge = view.entry.querySelector(".unread");
    badge.textContent = view.unread ? String(view.unread) : "";
    badge.hidden = view.unread === 0;
  }
}

function setComposer(enabled) {
  const readOnly = Boolean(active?.readOnly);
  for (const id of ["text", "send"]) $(id).disabled = !enabled || readOnly;
  $("text").placeholder = readOnly ? "Read-only: announcements come from the server" : "Message (Enter to send)";
  $("members").classList.toggle("offline", !enabled);
}

/** Show `view`'s messages, members and composer. */
function activate(view) {
  active = view;
  view.unread = 0;
  $("messages").replaceWith(view.list);
  $("room-name").textContent = view.id;
  setComposer(client?.status !== "closed" && !view.left);
  showMembers();
  showRooms();
  showTyping();
  save();
}

function addView(id, room) {
  const list = el("ol", "messages");
  list.id = "messages";
  const button = el("button", "room-entry", id);
  button.type = "button";
  button.dataset.room = id;
  button.append(el("span", "unread"));
  const entry = el("li");
  entry.append(button);
  $("rooms").append(entry);
  const view = { id, room, list, entry, unread: 0, joined: false, left: false, before: [], typing: new Map(), typedAt: 0, readOnly: id === ANNOUNCEMENTS };
  button.addEventListener("click", () => activate(view));
  // older messages when scrolled to the top
  list.addEventListener("scroll", () => list.scrollTop < 40 && showOlder(view));
  views.set(id, view);
  return view;
}

/** Who came and went while the page was away, from a fresh member list. */
function diffMembers(view, names) {
  for (const name of names) if (!view.before.includes(name)) notice(view, `${name} joined`);
  for (const name of view.before) if (!names.includes(name)) notice(view, `${name} left`);
}

/** Follow one room's frames into its view. */
function follow(view, resume) {
  const room = view.room;
  const mine = (handler) => (...args) => views.get(view.id) === view && handler(...args);
  const joined = (members, offset) => {
    if (!view.joined) {
      view.joined = true;
      notice(view, `You joined ${view.id} as ${me}.`, "joined");
      // a new member got the last messages as a backlog; a reloaded page resumes after what
      // it had shown, which it gets back from the room's history
      if (resume) showOlder(view, resume.since + 1);
      else if (offset === 0) view.exhausted = true;
    } else diffMembers(view, members);
    if (view === active) showMembers();
  };
  room.on("*", mine((m) => {
    if (m.topic === "joined") joined(m.payload.members, m.payload.offset);
    else if (m.topic === "left") {
      view.left = true;
      notice(view, m.payload.reason === "kicked" ? "You were removed from this room." : `You left this room (${m.payload.reason}).`, "closed");
      if (view === active) activate(view);
      else showRooms();
    } else if (m.topic === "presence.join" || m.topic === "presence.leave") {
      const name = m.payload.username;
      if (view === active) showMembers();
      if (m.topic === "presence.leave") notice(view, `${name} left`);
      else if (name !== me) notice(view, `${name} joined`);
    } else if (m.topic === TYPING && m.from !== undefined && m.offset === undefined && m.from !== me) {
      startTyping(view, m.from);
    } else if (m.from !== undefined && !SHOWN.has(m.topic)) showMessage(view, m);
  }));
  room.onReset(mine(() => reset(view)));
  if (view === first) client.on("welcome", mine((m) => joined(m.payload.members, m.payload.offset)));
}

/** A room whose history could not be replayed after a reconnect. */
function reset(view, offset = view.room.offset) {
  view.lost = true;
  view.exhausted = true; // older pages would be of the lost history
  // offsets start again in the room's new history: what is shown no longer counts as seen
  for (const item of view.list.querySelectorAll(".msg[data-offset]")) delete item.dataset.offset;
  // a server that restarted with nothing sent since has lost nothing this page had not seen
  if (offset === 0) notice(view, "Reconnected: the server restarted.", "restarted");
  else notice(view, "Reconnected, but messages sent while you were away could not be recovered.", "reset");
}

function join(username, rooms) {
  if (client) client.close(); // a second click, or a join after a refusal: one client only
  for (const view of views.values()) view.entry.remove();
  views.clear();
  me = username;
  $("join-error").hidden = true;
  $("join-button").disabled = true;
  setStatus("connecting");

  const url = new URL(".", location.href).href; // the server that served this page
  const [main, ...others] = rooms;
  // a chat page should not wait long after the server is back: cap the backoff at 5 s
  const resumed = resumeOf(main);
  const c = new Client({ url, username, room: main.id, maxDelay: 5000, ...(resumed ?? { backlog: HISTORY }) });
  client = c;
  first = addView(main.id, c.rooms.get(main.id));
  activate(first);
  follow(first, resumeOf(main));
  const wanted = rooms.find((r) => r.active)?.id;
  const mine = (handler) => (...args) => c === client && handler(...args);
  let started = false;
  let away = false;
  let lastError = null;

  c.ready.then(mine((welcome) => {
    // a v1 server has one room per connection: no room list then
    $("room-nav").hidden = welcome.rooms === undefined;
    if (welcome.rooms === undefined) return;
    for (const room of others) openRoom(room.id, resumeOf(room));
    if (views.has(wanted)) activate(views.get(wanted));
  }), () => {});
  c.on("error", mine((m) => {
    lastError = notice(active, `error: ${m.payload.message}`, "error");
    // a room whose class refuses clients' messages: no composer there any more
    if (m.payload.code === "forbidden" && active && !active.readOnly) {
      active.readOnly = true;
      setComposer(client?.status !== "closed" && !active.left);
    }
  }));
  c.onReset(mine((w) => reset(first, w.offset)));
  c.onStatus(mine((status, info) => {
    if (status === "closed") {
      if (!started) {
        backToForm(REFUSED[info.code] ?? (info.reason || "could not join"));
        if (info.code === 4409) suggestName();
        return;
      }
      const why = ENDED[info.code] ?? info.reason ?? "";
      setStatus("closed", why);
      setComposer(false);
      // the server's error frame said the same as the close: one notice, not two
      if (lastError && info.error && lastError === lastError.parentNode?.lastElementChild) lastError.remove();
      notice(active, `Disconnected${why ? `: ${why}` : ""}.`, "closed");
      showMembers();
      return;
    }
    setStatus(status);
    if (status === "reconnecting" && !away) {
      away = true;
      for (const view of views.values()) {
        view.before = [...view.room.members];
        view.lost = false;
        notice(view, "Connection lost, reconnecting…", "lost");
      }
    }
    if (status === "connected" || status === "recovered") {
      if (!started) {
        started = true;
        showChat();
      } else if (away) {
        for (const view of views.values()) {
          if (!view.lost) notice(view, status === "recovered" || view !== first ? "Reconnected: nothing was missed." : "Reconnected.", status);
        }
      }
      away = false;
    }
  }));
}

function resumeOf(room) {
  return room.epoch === undefined ? undefined : { since: room.since, epoch: room.epoch };
}

/** Join one more room on the tab's connection and show it. */
function openRoom(id, resume) {
  if (views.has(id)) return activate(views.get(id));
  const joining = client.join(id, resume ?? { backlog: HISTORY });
  const view = addView(id, client.rooms.get(id));
  follow(view, resume);
  activate(view);
  joining.catch((error) => {
    if (views.get(id) !== view) return;
    view.left = true;
    notice(view, `Could not join ${id}: ${error.message}`, "error");
    if (view === active) activate(view);
  });
}

function showChat() {
  $("join-view").hidden = true;
  $("chat-view").hidden = false;
  $("room-name").hidden = false;
  $("leave").hidden = false;
  $("text").focus();
  tabs?.postMessage({ room: first.id, name: me });
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

/** The tab's rooms for a reload, and the first room in the address bar. */
function save() {
  if (!first) return;
  history.replaceState(null, "", `?room=${encodeURIComponent(first.id)}`);
}

/**
 * After a refusal of a name that another tab of this browser holds in the room (a server
 * without the `share` policy), offer another name. With `share` the second tab simply joins.
 */
function suggestName() {
  const input = $("username");
  const key = () => `${$("room").value.trim()}\n${input.value.trim()}`;
  if (!input.value || !elsewhere.has(key())) return;
  const base = input.value.trim().replace(/-\d+$/, "");
  for (let n = 2; elsewhere.has(key()); n++) input.value = `${base}-${n}`;
  $("join-hint").textContent = `${base} is in this room in another tab: this tab joins as ${input.value}.`;
}

tabs?.addEventListener("message", ({ data }) => {
  if (data === "who") {
    if (client && client.status !== "closed" && !$("chat-view").hidden) tabs.postMessage({ room: first.id, name: me });
  } else if (data && typeof data.name === "string") {
    elsewhere.add(`${data.room}\n${data.name}`);
  }
});

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const username = $("username").value.trim();
  const room = $("room").value.trim();
  if (!username || !room || $("join-button").disabled) return;
  localStorage.setItem("roomcast.username", username);
  join(username, [{ id: room }]);
});

$("add-room").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = $("new-room").value.trim();
  if (!id || !client || client.status === "closed") return;
  $("new-room").value = "";
  openRoom(id);
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !client || client.status === "closed" || !active || active.left) return;
  // the first room is the connection's own: its frames need no `room` (a v1 server has no other)
  if (active === first) client.send("chat", { text, at: Date.now() });
  else active.room.publish("chat", { text, at: Date.now() });
  input.value = "";
  active.typedAt = 0; // typing again right after a message is new typing
});

$("text").addEventListener("input", () => $("text").value.trim() && typed());

$("announcements").addEventListener("click", () => {
  if (client && client.status !== "closed") openRoom(ANNOUNCEMENTS);
});

$("leave").addEventListener("click", () => backToForm(""));

// A reload resumes the tab's rooms where they were: the resuming connection takes over the
// name at once, even while the server still counts the page's old connection as present.
addEventListener("pagehide", () => {
  if (!client || !client.welcome || client.status === "closed") return;
  const rooms = [...views.values()]
    .filter((view) => !view.left && view.room.epoch !== undefined)
    .map((view) => ({ id: view.id, since: view.room.offset, epoch: view.room.epoch, active: view === active }));
  if (rooms[0]?.id === first.id) sessionStorage.setItem(SESSION, JSON.stringify({ username: me, rooms }));
});

const params = new URLSearchParams(location.search);
const saved = JSON.parse(sessionStorage.getItem(SESSION) ?? "null");
sessionStorage.removeItem(SESSION); // a duplicated tab must not resume this tab's connection
$("username").value = params.get("username") ?? localStorage.getItem("roomcast.username") ?? "";
if (params.get("room")) $("room").value = params.get("room");
if (saved && (!params.get("room") || params.get("room") === saved.rooms[0].id)) {
  $("username").value = saved.username;
  $("room").value = saved.rooms[0].id;
  join(saved.username, saved.rooms);
} else {
  tabs?.postMessage("who");
  $("username").focus();
}
