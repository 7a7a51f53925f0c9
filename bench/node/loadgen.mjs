// The load generator: one Node process speaking three wire protocols over its own minimal
// WebSocket client (or the `ws` client with spec.client = "ws").
//
//   node bench/node/loadgen.mjs '<json spec>'
//
// The spec names the protocol ("raw": the payload is the whole frame; "roomcast": PROTOCOL.md
// frames; "sio": Engine.IO v4 / Socket.IO v5 packets written by hand, far cheaper than
// socket.io-client), the server URLs (members are spread over them round-robin) and one
// scenario: "room" (one room; its phases, "fanout" at saturation or "fixed" at a rate, run one
// after another on the same connections), "chat", "idle", "join" (phases of fresh connections
// joining rooms of a given size) or "storm" (roomcast only: every client loses its node, which
// the driver kills and restarts, and resumes with since+epoch). Progress and results are JSON
// lines on stdout; {"event": "mark"} lines let the driver sample the server's CPU time at the
// edges of each measured window, and {"event": "hold"} waits for a line on stdin (the driver
// reads the server's memory meanwhile), as {"event": "settle"} does (the driver waits for the
// server's CPU to go quiet).
//
// Every message carries `~<send time in us>|<seq>|<sender>|` padded to 64 bytes, so latency is
// measured on one clock, in this process. Received frames are scanned as bytes, never decoded.

import { randomBytes } from "node:crypto";
import net from "node:net";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import WebSocket from "ws";

const spec = JSON.parse(process.argv[2]);
const PAYLOAD_BYTES = 64;
const TILDE = 126;
const BAR = 124;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function nowUs() {
  return Math.round(performance.now() * 1000);
}

function payload(seq, sender) {
  const head = `~${nowUs()}|${seq}|${sender}|`;
  return head + "x".repeat(Math.max(0, PAYLOAD_BYTES - head.length));
}

// Latency histogram: 10 us buckets up to 30 s.
const BUCKET_US = 10;
const hist = new Int32Array(3_000_000);
let histCount = 0;
function record(latUs) {
  let b = Math.floor(latUs / BUCKET_US);
  if (b < 0) b = 0;
  if (b >= hist.length) b = hist.length - 1;
  hist[b]++;
  histCount++;
}
function percentile(p) {
  if (histCount === 0) return null;
  const target = Math.ceil((histCount * p) / 100);
  let seen = 0;
  for (let i = 0; i < hist.length; i++) {
    seen += hist[i];
    if (seen >= target) return ((i + 1) * BUCKET_US) / 1000; // ms
  }
  return null;
}

// --- protocols -----------------------------------------------------------------------------

const protocols = {
  raw: {
    url: (base, room, user) => `${base}/?room=${room}&user=${user}`,
    frame: (p) => p,
    // Ready as soon as the socket is open.
    onOpen: (c) => c.ready(),
    control: () => {},
  },
  roomcast: {
    url: (base, room, user) => `${base}/api/v1/ws?username=${user}&roomID=${room}`,
    frame: (p) => `{"topic":"b","payload":"${p}"}`,
    onOpen: () => {},
    // The first frame is the welcome (or an error and a close).
    control: (c, buf) => {
      if (!c.isReady && buf.includes('"welcome"')) c.ready();
    },
  },
  sio: {
    url: (base) => `${base}/socket.io/?EIO=4&transport=websocket`,
    frame: (p) => `42["m","${p}"]`,
    onOpen: () => {},
    control: (c, buf) => {
      const s = buf.toString();
      if (s === "2") c.ws.send("3");
      else if (s.startsWith("0{")) c.ws.send("40");
      else if (s.startsWith("40")) c.ws.send(`420["join","${c.room}"]`);
      else if (s.startsWith("430")) c.ready();
    },
  },
};
const proto = protocols[spec.proto];

// --- connections ---------------------------------------------------------------------------

// A minimal WebSocket client on a bare TCP socket: the handshake, unfragmented frames, ping and
// close, and nothing that allocates per frame beyond the payload view. It measured the same
// cost per received frame as the `ws` client (spec.client "ws" selects that one instead):
// most of it is the kernel's read, one per frame per socket.
class MiniWebSocket {
  constructor(url, handlers, localAddress) {
    const u = new URL(url);
    this.h = handlers;
    this.buf = null;
    this.isOpen = false;
    this.closed = false;
    const sock = (this.sock = net.connect({ host: u.hostname, port: Number(u.port), localAddress }));
    sock.setNoDelay(true);
    sock.on("connect", () => {
      sock.write(
        `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n` +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      );
    });
    sock.on("data", (d) => this.data(d));
    sock.on("error", (err) => this.closedWith(1006, err));
    sock.on("close", () => this.closedWith(1006));
  }

  data(chunk) {
    let b = this.buf === null ? chunk : Buffer.concat([this.buf, chunk]);
    if (!this.isOpen) {
      const end = b.indexOf("\r\n\r\n");
      if (end < 0) {
        this.buf = b;
        return;
      }
      const status = b.subarray(0, b.indexOf("\r\n")).toString();
      if (!status.startsWith("HTTP/1.1 101")) {
        this.status = status;
        this.closedWith(1002, new Error(`handshake refused: ${status}`));
        this.sock.destroy();
        return;
      }
      this.isOpen = true;
      b = b.subarray(end + 4);
      this.h.onopen();
    }
    const n = b.length;
    let off = 0;
    while (n - off >= 2) {
      const op = b[off] & 0x0f;
      let len = b[off + 1] & 0x7f;
      let head = 2;
      if (len === 126) {
        if (n - off < 4) break;
        len = b.readUInt16BE(off + 2);
        head = 4;
      } else if (len === 127) {
        if (n - off < 10) break;
        len = Number(b.readBigUInt64BE(off + 2));
        head = 10;
      }
      if (n - off < head + len) break;
      const payload = b.subarray(off + head, off + head + len);
      off += head + len;
      if (op <= 2) this.h.onmessage(payload);
      else if (op === 9) this.write(0x8a, payload);
      else if (op === 8) {
        this.closedWith(len >= 2 ? payload.readUInt16BE(0) : 1005);
        this.sock.end();
        return;
      }
    }
    this.buf = off === n ? null : b.subarray(off);
  }

  // Client frames must be masked; an all-zero key leaves the payload as it is.
  write(first, payload) {
    const len = payload.length;
    let head;
    if (len < 126) {
      head = Buffer.from([first, 0x80 | len, 0, 0, 0, 0]);
    } else if (len < 65536) {
      head = Buffer.alloc(8);
      head[0] = first;
      head[1] = 0x80 | 126;
      head.writeUInt16BE(len, 2);
    } else {
      head = Buffer.alloc(14);
      head[0] = first;
      head[1] = 0x80 | 127;
      head.writeBigUInt64BE(BigInt(len), 2);
    }
    this.sock.write(Buffer.concat([head, payload]));
  }

  send(text) {
    if (!this.closed) this.write(0x81, Buffer.from(text));
  }

  // Drop the TCP connection (the server sees it go without a close frame).
  destroy() {
    this.sock.destroy();
  }

  closedWith(code, err) {
    if (this.closed) return;
    this.closed = true;
    this.h.onclose(code, err);
  }
}

class Client {
  constructor(index, room, url) {
    this.index = index;
    this.room = room;
    this.user = `u${RUN}-${index}`;
    this.isReady = false;
    this.inflight = 0;
    this.onMessage = null;
    this.onFrame = null; // when set, gets every data frame (the storm parses them as JSON)
    this.onClose = null;
    this.closing = false;
    this.base = url;
    this.url = proto.url(url, room, this.user);
    // Several source addresses for more connections than one address has ports.
    const sources = spec.source_addresses;
    this.localAddress = sources ? sources[index % sources.length] : undefined;
  }

  open() {
    return spec.client === "ws" ? this.openWs() : this.openNet();
  }

  openNet() {
    return new Promise((resolve, reject) => {
      this._resolve = resolve;
      this.ws = new MiniWebSocket(
        this.url,
        {
        onopen: () => proto.onOpen(this),
        onclose: (code, err) => {
          if (this.onClose !== null) this.onClose(this, code, err);
          else if (!this.isReady) reject(err ?? new Error(`closed ${code} before ready`));
          else if (!stopping && !this.closing) lost++;
        },
        onmessage: (buf) => {
          if (this.onFrame !== null) {
            this.onFrame(this, buf);
            return;
          }
          const i = buf.indexOf(TILDE);
          if (i < 0) proto.control(this, buf);
          else if (this.onMessage !== null) this.onMessage(this, buf, i);
        },
        },
        this.localAddress,
      );
    });
  }

  openWs() {
    return new Promise((resolve, reject) => {
      this._resolve = resolve;
      const ws = (this.ws = new WebSocket(this.url, { perMessageDeflate: false }));
      ws.on("open", () => proto.onOpen(this));
      ws.on("error", (err) => reject(err));
      ws.on("close", (code) => {
        if (!this.isReady) reject(new Error(`closed ${code} before ready`));
        else if (!stopping) lost++;
      });
      ws.on("message", (buf) => {
        const i = buf.indexOf(TILDE);
        if (i < 0) {
          proto.control(this, buf);
          return;
        }
        if (this.onMessage !== null) this.onMessage(this, buf, i);
      });
    });
  }

  ready() {
    this.isReady = true;
    this._resolve(this);
  }

  close() {
    this.closing = true;
    if (spec.client === "ws") this.ws.terminate();
    else this.ws.destroy();
  }

  send(p) {
    this.ws.send(proto.frame(p));
  }
}

let lost = 0;
let stopping = false;
// Usernames are unique per generator run: a server may still hold the previous run's members.
const RUN = Math.floor(Math.random() * 1e9).toString(36);

// Parse `~ts|seq|sender|` from a frame's bytes at index i.
// Frames parsed so far, in or out of a window: the first window waits for traffic to flow.
let parsed = 0;
function parse(buf, i) {
  parsed++;
  let j = i + 1;
  let ts = 0;
  let c;
  while ((c = buf[j++]) !== BAR) ts = ts * 10 + (c - 48);
  let seq = 0;
  while ((c = buf[j++]) !== BAR) seq = seq * 10 + (c - 48);
  let sender = 0;
  while ((c = buf[j++]) !== BAR) sender = sender * 10 + (c - 48);
  return [ts, seq, sender];
}

// `times`, when given, gets each connection's time from connect to ready, in ms; `prepare`,
// when given, is called with each client before it connects.
async function connectAll(count, roomOf, concurrency, times = null, prepare = null) {
  const clients = new Array(count);
  let next = 0;
  const t0 = performance.now();
  async function worker() {
    while (next < count) {
      const i = next++;
      const c = new Client(i, roomOf(i), spec.urls[i % spec.urls.length]);
      clients[i] = c;
      if (prepare !== null) prepare(c);
      const t = performance.now();
      await c.open();
      if (times !== null) times[i] = performance.now() - t;
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return { clients, seconds: (performance.now() - t0) / 1000 };
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

function readStdinLine() {
  return new Promise((resolve) => {
    const rl = createInterface({ input: process.stdin });
    rl.once("line", (line) => {
      rl.close();
      resolve(line);
    });
    rl.once("close", () => resolve(""));
  });
}

const waitStdinLine = readStdinLine;

// The measured window: counters reset at its start, CPU sampled by both sides at its edges.
const window_ = { on: false, deliveries: 0, t0: 0, cpu0: null };
// The phase being measured (its name goes on the marks) and its window counter.
let phaseName = spec.scenario;
let windowIndex = 0;
function startWindow() {
  hist.fill(0);
  histCount = 0;
  window_.deliveries = 0;
  window_.on = true;
  window_.t0 = performance.now();
  window_.cpu0 = process.cpuUsage();
  emit({ event: "mark", name: "start", phase: phaseName, index: windowIndex });
}
function endWindow() {
  window_.on = false;
  const seconds = (performance.now() - window_.t0) / 1000;
  const cpu = process.cpuUsage(window_.cpu0);
  emit({ event: "mark", name: "end", phase: phaseName, index: windowIndex++ });
  return {
    seconds,
    deliveries: window_.deliveries,
    deliveries_per_s: window_.deliveries / seconds,
    p50_ms: percentile(50),
    p99_ms: percentile(99),
    loadgen_cpu_pct: ((cpu.user + cpu.system) / 1e6 / seconds) * 100,
  };
}

// `windows` consecutive windows of `duration` seconds after `warmup`: the driver keeps the
// best one, which drops the windows disturbed by other work on the machine. The warmup lasts
// until the first delivery too (up to 10 s more), so that a server slow to answer its first
// frames on a busy machine is not measured at zero.
async function measure(p) {
  await sleep(p.warmup * 1000);
  for (let t = 0; parsed === 0 && t < 200; t++) await sleep(50);
  const results = [];
  for (let k = 0; k < (p.windows ?? 1); k++) {
    startWindow();
    await sleep(p.duration * 1000);
    results.push(endWindow());
  }
  return results;
}

function onDelivery(buf, i) {
  if (!window_.on) return null;
  const m = parse(buf, i);
  window_.deliveries++;
  record(nowUs() - m[0]);
  return m;
}

// --- scenarios -----------------------------------------------------------------------------

// Sequence numbers are unique over the whole run, so that a late frame of one phase is never
// taken for one of the next.
let seq = 0;

async function fanoutPhase(clients, p) {
  // One publisher, at most `window` messages not yet delivered to every member.
  const n = clients.length;
  const base = seq;
  const counts = new Int32Array(1 << 22);
  let completed = 0;
  let active = true;
  const pub = clients[0];
  let lastProgress = performance.now();
  const pump = () => {
    while (active && seq - base - completed < p.window && seq - base < counts.length) {
      pub.send(payload(seq++, 0));
    }
  };
  for (const c of clients) {
    c.onMessage = (_c, buf, i) => {
      const m = window_.on ? onDelivery(buf, i) : parse(buf, i);
      if (m[1] >= base && ++counts[m[1] - base] === n) {
        completed++;
        lastProgress = performance.now();
        pump();
      }
    };
  }
  pump();
  const stall = setInterval(() => {
    if (performance.now() - lastProgress > 3000) {
      emit({ event: "error", error: "stalled: a message never reached every member" });
      process.exit(2);
    }
  }, 500);
  const windows = await measure(p);
  active = false;
  clearInterval(stall);
  // Let what is in flight arrive before the next phase.
  for (let t = 0; t < 60 && completed < seq - base; t++) await sleep(50);
  return { windows };
}

async function fixedPhase(clients, p) {
  // One publisher sending `rate` messages per second on a schedule.
  const n = clients.length;
  for (const c of clients) c.onMessage = (_c, buf, i) => onDelivery(buf, i);
  const pub = clients[0];
  let sent = 0;
  const t0 = performance.now();
  const timer = setInterval(() => {
    const due = Math.floor(((performance.now() - t0) / 1000) * p.rate);
    while (sent < due) {
      pub.send(payload(seq++, 0));
      sent++;
    }
  }, 1);
  const windows = await measure(p);
  clearInterval(timer);
  await sleep(200);
  return { windows, offered_per_s: p.rate * n };
}

async function room() {
  // One room of `members`; each phase ("fanout" or "fixed") runs on the same connections.
  const { clients, seconds } = await connectAll(spec.members, () => "r0", spec.concurrency ?? 50);
  for (const p of spec.phases) {
    phaseName = p.name;
    windowIndex = 0;
    const result = p.kind === "fanout" ? await fanoutPhase(clients, p) : await fixedPhase(clients, p);
    emit({ event: "result", scenario: p.name, ...result, connect_seconds: seconds, lost });
  }
  return null;
}

async function chat() {
  // `rooms` rooms of two members, every member publishing with `window` messages in flight
  // (counted by its own echo).
  const n = spec.rooms * 2;
  const { clients, seconds } = await connectAll(
    n,
    (i) => `c${Math.floor(i / 2)}`,
    spec.concurrency ?? 50,
  );
  const refill = (c) => {
    while (c.inflight < spec.window) {
      c.inflight++;
      c.send(payload(seq++, c.index));
    }
  };
  for (const c of clients) {
    c.onMessage = (self, buf, i) => {
      const m = window_.on ? onDelivery(buf, i) : parse(buf, i);
      if (m[2] === self.index) {
        self.inflight--;
        refill(self);
      }
    };
  }
  for (const c of clients) refill(c);
  const windows = await measure(spec);
  return { windows, connect_seconds: seconds, lost };
}

async function idle() {
  // `connections` idle members in rooms of `room_size`; the driver reads memory during "hold".
  const n = spec.connections;
  const size = spec.room_size ?? 10;
  const { clients, seconds } = await connectAll(
    n,
    (i) => `i${Math.floor(i / size)}`,
    spec.concurrency ?? 100,
  );
  emit({ event: "hold", connections: clients.length });
  await waitStdinLine();
  return { connections: n, connect_seconds: seconds, connections_per_s: n / seconds, lost };
}

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function mean(values) {
  return values.length === 0 ? null : values.reduce((a, b) => a + b, 0) / values.length;
}

async function closeAll(clients, timeoutMs) {
  let open = clients.length;
  const done = new Promise((resolve) => {
    if (open === 0) resolve();
    for (const c of clients) {
      c.onClose = () => {
        if (--open === 0) resolve();
      };
      c.close();
    }
  });
  await Promise.race([done, sleep(timeoutMs)]);
}

async function join() {
  // Phases of fresh connections, `concurrency` handshakes at a time, into rooms of `room_size`:
  // connections per second, and each join's time from connect to ready (the welcome, or the
  // Socket.IO join acknowledgement). The mean of the first and of the last tenth of the joins
  // shows whether a join costs more as its room grows.
  for (const p of spec.phases) {
    phaseName = p.name;
    const times = [];
    // The server's CPU time over the joins alone (the driver reads it at these marks).
    emit({ event: "mark", name: "start", phase: p.name, index: 0 });
    const { clients, seconds } = await connectAll(
      p.connections,
      (i) => `${p.room_prefix ?? ""}j${RUN}${p.name}-${Math.floor(i / p.room_size)}`,
      p.concurrency,
      times,
    );
    emit({ event: "mark", name: "end", phase: p.name, index: 0 });
    const sorted = [...times].sort((a, b) => a - b);
    const tenth = Math.max(1, Math.floor(times.length / 10));
    emit({
      event: "result",
      scenario: p.name,
      connections: p.connections,
      room_size: p.room_size,
      concurrency: p.concurrency,
      seconds,
      connections_per_s: p.connections / seconds,
      join_p50_ms: quantile(sorted, 0.5),
      join_p99_ms: quantile(sorted, 0.99),
      first_tenth_ms: mean(times.slice(0, tenth)),
      last_tenth_ms: mean(times.slice(-tenth)),
      lost,
    });
    await closeAll(clients, 10_000);
    // The next phase starts once the server has handled this one's leaves (the driver waits
    // for its CPU to go quiet): else a phase pays for the one before it.
    emit({ event: "settle" });
    await readStdinLine();
  }
  return null;
}

// The client libraries' backoff after a lost connection: attempt n waits between half and all
// of min(20 s, 0.5 s * 2^n).
function backoffMs(attempt) {
  const ceiling = Math.min(20, 0.5 * 2 ** attempt) * 1000;
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

async function storm() {
  // `connections` roomcast clients in rooms of `room_size`; the first member of every room
  // publishes `messages` messages, so that every room has history. Then the driver kills the
  // node (SIGKILL) and starts it again; every client resumes with since+epoch after the
  // client libraries' jittered backoff. Measured: how many recovered (a welcome with
  // `recovered: true`), refusals (HTTP 429/503, close codes 44xx), reconnect attempts, and the
  // time from the node's restart to the last recovery.
  const n = spec.connections;
  const size = spec.room_size;
  const stats = { recovered: 0, not_recovered: 0, gaps: 0, refused: 0, attempts: 0 };
  const recoveredAt = [];
  let published = 0;
  const onFrame = (c, buf) => {
    const frame = JSON.parse(buf.toString());
    const s = c.storm;
    if (frame.topic === "welcome") {
      s.epoch = frame.payload.epoch;
      s.offset = frame.payload.offset;
      if (s.resuming) {
        s.resuming = false;
        if (frame.payload.recovered !== true) stats.not_recovered++;
        else if (!s.recovered) {
          s.recovered = true;
          stats.recovered++;
          recoveredAt.push(performance.now());
        }
      }
      if (!c.isReady) c.ready();
    } else if (typeof frame.offset === "number") {
      if (frame.offset !== s.offset + 1) stats.gaps++;
      s.offset = frame.offset;
      published++;
    }
  };
  const reconnect = (c, attempt) => {
    setTimeout(() => {
      if (stopping) return;
      stats.attempts++;
      const s = c.storm;
      c.url = `${proto.url(c.base, c.room, c.user)}&since=${s.offset}&epoch=${s.epoch}`;
      s.resuming = true;
      c.isReady = false;
      c.onClose = (_c, code) => {
        const status = c.ws.status ?? "";
        if (/ (429|503) /.test(status) || (code >= 4400 && code < 4500)) stats.refused++;
        reconnect(c, s.resuming ? attempt + 1 : 0);
      };
      c.open().catch(() => {});
    }, backoffMs(attempt));
  };
  const { clients, seconds } = await connectAll(
    n,
    (i) => `s${RUN}-${Math.floor(i / size)}`,
    spec.concurrency,
    null,
    (c) => {
      c.storm = { epoch: null, offset: 0, resuming: false, recovered: false };
      c.onFrame = onFrame;
    },
  );
  const expected = n * spec.messages;
  for (let k = 0; k < spec.messages; k++) {
    for (const c of clients) if (c.index % size === 0) c.ws.send(`{"topic":"b","payload":"m${k}"}`);
    await sleep(20);
  }
  for (let t = 0; t < 600 && published < expected; t++) await sleep(50);
  if (published < expected) throw new Error(`history: ${published} of ${expected} delivered`);
  const gapsBefore = stats.gaps;
  for (const c of clients) c.onClose = () => reconnect(c, 0);
  emit({ event: "kill" });
  // The driver answers once the node listens again: "go <seconds since it was started>".
  const line = await readStdinLine();
  const restartAt = performance.now() - Number(line.split(" ")[1] ?? 0) * 1000;
  const deadline = performance.now() + spec.recovery_timeout * 1000;
  while (stats.recovered < n && performance.now() < deadline) await sleep(50);
  stopping = true;
  const after = recoveredAt.map((t) => (t - restartAt) / 1000).sort((a, b) => a - b);
  return {
    connections: n,
    rooms: Math.ceil(n / size),
    connect_seconds: seconds,
    ...stats,
    gaps_before_kill: gapsBefore,
    gaps: stats.gaps - gapsBefore,
    recovery_seconds: after.length ? after[after.length - 1] : null,
    recovery_p50_s: quantile(after, 0.5),
  };
}

const scenarios = { room, chat, idle, idle100k: idle, join, storm };

const guard = setTimeout(() => {
  emit({ event: "error", error: "timed out" });
  process.exit(3);
}, (spec.timeout ?? 120) * 1000);

try {
  const result = await scenarios[spec.scenario]();
  if (result !== null) emit({ event: "result", scenario: spec.scenario, ...result });
} catch (err) {
  emit({ event: "error", error: String(err && err.message ? err.message : err) });
  process.exitCode = 1;
}
stopping = true;
clearTimeout(guard);
// Closing thousands of sockets politely takes long; the process exit resets them.
process.exit(process.exitCode ?? 0);
