// The roomcast admin page: the HTTP API for actions and one live feed for everything shown.
// Every text from the server goes into the page as text (textContent), never as HTML.

const KEY_STORE = "roomcast.admin.key";
const CHART_SECONDS = 300;
const CLOSE_MEANINGS = {
  1000: "normal", 1001: "going away", 1007: "invalid text", 1008: "policy", 1009: "too big",
  1011: "internal error", 1012: "restart", 4400: "bad request", 4401: "unauthenticated",
  4403: "forbidden", 4408: "keepalive / slow consumer", 4409: "duplicate / replaced",
  4429: "rate limited", 4499: "kicked",
};

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  feed: null,
  retry: 0,
  room: null,
  samples: [], // [{time, in, out}] of the cluster, one per stats frame
  closes: [], // [{time, counts}] to tell the closes of the last minute
};

function headers() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

async function api(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers = { ...init.headers, "Content-Type": "application/json" };
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  return { status: response.status, data };
}

function setStatus(status, text) {
  const el = $("status");
  el.dataset.status = status;
  el.textContent = text;
}

function show(view) {
  $("login-view").hidden = view !== "login";
  $("dashboard").hidden = view !== "dashboard";
  $("logout").hidden = view !== "dashboard" || !state.key;
}

async function signIn() {
  const { status, data } = await api("GET", "/api/v1/admin/stats");
  if (status === 200) {
    show("dashboard");
    renderStats(data);
    openFeed();
    return true;
  }
  state.key = "";
  sessionStorage.removeItem(KEY_STORE);
  show("login");
  setStatus("idle", "signed out");
  return status;
}

function signOut(message) {
  state.key = "";
  sessionStorage.removeItem(KEY_STORE);
  if (state.feed) {
    state.feed.onclose = null;
    state.feed.close(1000);
    state.feed = null;
  }
  show("login");
  setStatus("idle", "signed out");
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message || "";
}

function openFeed() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/api/v1/admin/feed`);
  state.feed = ws;
  setStatus("connecting", "connecting");
  ws.onopen = () => {
    if (state.key) ws.send(JSON.stringify({ topic: "auth", payload: { key: state.key } }));
    if (state.room) watch(state.room);
  };
  ws.onmessage = (event) => onFrame(JSON.parse(event.data));
  ws.onclose = (event) => {
    if (state.feed !== ws) return;
    state.feed = null;
    if (event.code === 4401) {
      signOut("The API key was refused.");
      return;
    }
    setStatus("reconnecting", "reconnecting");
    const delay = Math.min(10000, 500 * 2 ** state.retry++) * (0.5 + Math.random() / 2);
    setTimeout(openFeed, delay);
  };
}

function onFrame(frame) {
  switch (frame.topic) {
    case "ready":
      state.retry = 0;
      setStatus("connected", "live");
      $("served-by").textContent = `served by ${frame.payload.node}`;
      break;
    case "stats":
      renderStats(frame.payload);
      break;
    case "room":
      if (frame.room === state.room) renderRoom(frame.payload);
      break;
    case "tail":
      if (frame.room === state.room) frame.payload.messages.forEach(addMessage);
      break;
    case "error":
      result(`feed: ${frame.payload.code}: ${frame.payload.message}`, true);
      break;
  }
}

function watch(room) {
  state.room = room;
  $("room-panel").hidden = room === null;
  $("room-name").textContent = room || "";
  $("tail").replaceChildren();
  $("members").replaceChildren();
  if (state.feed && state.feed.readyState === WebSocket.OPEN) {
    state.feed.send(JSON.stringify({ topic: "watch", payload: { roomID: room } }));
  }
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = String(text);
  if (className) td.className = className;
  row.append(td);
  return td;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

function renderStats(view) {
  const totals = view.totals;
  $("total-nodes").textContent = totals.nodes;
  $("total-connections").textContent = totals.connections;
  $("total-in").textContent = totals.in;
  $("total-out").textContent = totals.out;
  $("total-published").textContent = totals.published;

  const nodes = $("nodes").tBodies[0];
  nodes.replaceChildren(...view.nodes.map((node) => {
    const row = document.createElement("tr");
    row.dataset.node = node.node;
    cell(row, node.node, "name");
    cell(row, duration(node.uptime));
    cell(row, node.connections, "connections");
    cell(row, node.rooms);
    cell(row, node.in);
    cell(row, node.out);
    cell(row, node.broker ? "ok" : "unavailable", node.broker ? "ok" : "bad");
    return row;
  }));

  const rooms = $("rooms").tBodies[0];
  rooms.replaceChildren(...view.rooms.map((room) => {
    const row = document.createElement("tr");
    row.dataset.room = room.roomID;
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = room.roomID;
    open.addEventListener("click", () => watch(room.roomID));
    cell(row, "").append(open);
    cell(row, room.members);
    cell(row, room.rate);
    return row;
  }));

  const now = view.time;
  state.closes.push({ time: now, counts: view.disconnects });
  while (state.closes.length > 1 && state.closes[1].time <= now - 60) state.closes.shift();
  const minuteAgo = state.closes[0].counts;
  const closes = $("disconnects").tBodies[0];
  const rows = Object.entries(view.disconnects);
  if (!rows.length) {
    const row = document.createElement("tr");
    cell(row, "none since the nodes started", "muted").colSpan = 4;
    closes.replaceChildren(row);
  } else closes.replaceChildren(...rows.map(([code, total]) => {
    const row = document.createElement("tr");
    row.dataset.code = code;
    cell(row, code);
    cell(row, CLOSE_MEANINGS[code] || "");
    cell(row, total, "total");
    cell(row, total - (minuteAgo[code] || 0));
    return row;
  }));

  state.samples.push({ time: now, in: totals.in, out: totals.out });
  while (state.samples.length && state.samples[0].time < now - CHART_SECONDS) state.samples.shift();
  drawChart();
}

function renderRoom(room) {
  $("room-offset").textContent = room.offset;
  $("member-count").textContent = room.members.length;
  $("members").replaceChildren(...room.members.map((name) => {
    const li = document.createElement("li");
    li.dataset.member = name;
    const span = document.createElement("span");
    span.textContent = name;
    const kick = document.createElement("button");
    kick.type = "button";
    kick.className = "kick";
    kick.textContent = "Kick";
    kick.addEventListener("click", () => kickMember(state.room, name));
    li.append(span, kick);
    return li;
  }));
  if (room.messages) {
    $("tail").replaceChildren();
    room.messages.forEach(addMessage);
  }
}

function addMessage(message) {
  const li = document.createElement("li");
  li.className = "msg";
  const parts = [
    ["offset", `#${message.offset ?? ""}`],
    ["from", message.from ?? ""],
    ["topic", message.topic],
    ["payload", JSON.stringify(message.payload)],
  ];
  if (message.to) parts.splice(2, 0, ["to", `→ ${message.to}`]);
  for (const [name, text] of parts) {
    const span = document.createElement("span");
    span.className = name;
    span.textContent = text;
    li.append(span);
  }
  if (message.offset !== undefined) $("room-offset").textContent = message.offset;
  const tail = $("tail");
  tail.append(li);
  while (tail.children.length > 200) tail.firstElementChild.remove();
  tail.scrollTop = tail.scrollHeight;
}

function result(text, bad) {
  const el = $("action-result");
  el.textContent = text;
  el.className = bad ? "result bad" : "result ok";
}

function describe(status, data) {
  if (data && data.error) return `${status} ${data.error.code}: ${data.error.message}`;
  return `${status}${data ? ` ${JSON.stringify(data)}` : ""}`;
}

const segment = (name) => encodeURIComponent(name);

async function kickMember(room, username) {
  const { status, data } = await api(
    "DELETE", `/api/v1/rooms/${segment(room)}/members/${segment(username)}`);
  result(status === 204 ? `kicked ${username}: 204` : `kick ${username}: ${describe(status, data)}`,
    status !== 204);
}

async function publish(room, topic, payloadText) {
  let payload;
  try {
    payload = JSON.parse(payloadText);
  } catch {
    result("the payload is not valid JSON", true);
    return;
  }
  const { status, data } = await api(
    "POST", `/api/v1/rooms/${segment(room)}/messages`, { topic, payload });
  result(status === 202 ? `published at offset ${data.offset}: 202` : `publish: ${describe(status, data)}`,
    status !== 202);
}

function drawChart() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const samples = state.samples;
  const top = Math.max(1, ...samples.map((s) => Math.max(s.in, s.out)));
  const left = 44, bottom = height - 18, plotW = width - left - 8, plotH = bottom - 8;
  const style = getComputedStyle(document.documentElement);
  ctx.strokeStyle = style.getPropertyValue("--line");
  ctx.fillStyle = style.getPropertyValue("--muted");
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const fraction of [0, 0.5, 1]) {
    const y = bottom - fraction * plotH;
    ctx.beginPath();
    ctx.moveTo(left, y);
    ctx.lineTo(left + plotW, y);
    ctx.stroke();
    ctx.fillText(String(Math.round(top * fraction)), 4, y + 4);
  }
  ctx.fillText(`-${CHART_SECONDS / 60} min`, left, height - 4);
  ctx.fillText("now", left + plotW - 22, height - 4);
  const now = samples.length ? samples[samples.length - 1].time : 0;
  for (const [field, color] of [["in", "--accent"], ["out", "--ok"]]) {
    ctx.strokeStyle = style.getPropertyValue(color);
    ctx.lineWidth = 2;
    ctx.beginPath();
    samples.forEach((sample, index) => {
      const x = left + plotW * (1 - (now - sample.time) / CHART_SECONDS);
      const y = bottom - (sample[field] / top) * plotH;
      if (index === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = $("key").value.trim();
  sessionStorage.setItem(KEY_STORE, state.key);
  const outcome = await signIn();
  if (outcome !== true) {
    const error = $("login-error");
    error.hidden = false;
    error.textContent = outcome === 401 ? "The API key was refused." : `Sign-in failed (${outcome}).`;
  }
});
$("logout").addEventListener("click", () => signOut(""));
$("watch-form").addEventListener("submit", (event) => {
  event.preventDefault();
  watch($("watch-room").value.trim());
});
$("publish-form").addEventListener("submit", (event) => {
  event.preventDefault();
  publish(state.room, $("pub-topic").value.trim(), $("pub-payload").value);
});
window.addEventListener("resize", drawChart);

signIn();
