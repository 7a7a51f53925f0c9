// Test helpers: real roomcast server processes, the HTTP API, a TCP proxy that can cut the
// network, and a scripted WebSocket server for close codes the real server rarely sends.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";
import WebSocket, { WebSocketServer } from "ws";
import { Client } from "../dist/index.js";

/** This package's folder: the tests run in a copy outside the repository too. */
export const PACKAGE = fileURLToPath(new URL("../", import.meta.url));
/** The repository around the package (only the tests in test/repo/ need it). */
export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
// A Python with roomcast installed: ROOMCAST_PYTHON, else the repository's virtualenv.
const PYTHON =
  process.env.ROOMCAST_PYTHON || (existsSync(`${ROOT}.venv/bin/python`) ? `${ROOT}.venv/bin/python` : "python3");
export const TIMEOUT = 10000;

/** A `roomcast serve` process; `url` is its http://host:port. */
export class Server {
  constructor(args = []) {
    this.args = args;
  }

  async start() {
    this.proc = spawn(PYTHON, ["-m", "roomcast", "serve", "--port", "0", ...this.args], {
      cwd: PACKAGE,
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    this.url = await within(
      new Promise((resolve, reject) => {
        this.proc.stderr.on("data", (chunk) => {
          log += chunk;
          const match = /roomcast\.ready url=(http:\/\/\S+)/.exec(log);
          if (match) resolve(match[1]);
        });
        this.proc.on("exit", (code) => reject(new Error(`server exited (${code}):\n${log}`)));
      }),
      "server start",
    );
    this.port = Number(this.url.split(":").pop());
    return this;
  }

  /** Stop with SIGTERM (the server closes its clients with 1012), or with another signal. */
  async stop(signal = "SIGTERM") {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = once(this.proc, "exit");
    this.proc.kill(signal);
    await within(exited, "server stop");
  }
}

/** A throwaway redis-server on a free loopback port. */
export async function redis(t) {
  const port = await freePort();
  const proc = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
    { stdio: ["ignore", "pipe", "ignore"] },
  );
  t.after(() => proc.kill("SIGKILL"));
  let log = "";
  await within(
    new Promise((resolve, reject) => {
      proc.stdout.on("data", (chunk) => {
        log += chunk;
        if (log.includes("Ready to accept connections")) resolve();
      });
      proc.on("error", reject);
      proc.on("exit", (code) => reject(new Error(`redis-server exited (${code}):\n${log}`)));
    }),
    "redis-server start",
  );
  return `redis://127.0.0.1:${port}/0`;
}

/** A loopback port with nothing listening on it. */
export async function freePort() {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The server the suite runs against: ROOMCAST_URL when given, else one started here. */
export async function sharedServer(t) {
  if (process.env.ROOMCAST_URL) return { url: process.env.ROOMCAST_URL };
  const server = await new Server().start();
  t.after(() => server.stop());
  return server;
}

/** A client of `server` with the `ws` package (Node 20 has no global WebSocket). */
export function client(t, url, username, room, options = {}) {
  const c = new Client({ url, username, room, WebSocket, minDelay: 20, maxDelay: 200, ...options });
  t.after(() => c.close());
  return c;
}

/** Wait for a promise at most `ms`, failing with `what`. */
export function within(promise, what, ms = TIMEOUT) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

/** Resolve with the next frame of `topic` that `client` delivers. */
export function next(client, topic, what = topic) {
  return within(
    new Promise((resolve) => {
      const off = client.on(topic, (message) => {
        off();
        resolve(message);
      });
    }),
    what,
  );
}

/** Resolve with the `count` next frames of `topic`. */
export function collect(client, topic, count) {
  const seen = [];
  return within(
    new Promise((resolve) => {
      const off = client.on(topic, (message) => {
        seen.push(message);
        if (seen.length === count) {
          off();
          resolve(seen);
        }
      });
    }),
    `${count} ${topic} frames (got ${seen.length})`,
  );
}

/** Resolve when `client` reports `status`, with its info. */
export function status(client, wanted) {
  return within(
    new Promise((resolve) => {
      const off = client.onStatus((s, info) => {
        if (s === wanted) {
          off();
          resolve(info);
        }
      });
    }),
    `status ${wanted}`,
  );
}

/** Call the server's HTTP API. */
export async function api(url, method, path, body) {
  const response = await fetch(url + path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** Publish through the HTTP API; returns the offset. */
export async function publish(url, room, topic, payload) {
  const { status, body } = await api(url, "POST", `/api/v1/rooms/${room}/messages`, { topic, payload });
  if (status !== 202) throw new Error(`publish answered ${status}: ${JSON.stringify(body)}`);
  return body.offset;
}

/**
 * A TCP proxy to `port`, like a load balancer: `cut()` drops every connection and refuses new
 * ones until `heal(port)`, which may point it at another server.
 */
export async function proxy(t, port) {
  const sockets = new Set();
  let down = false;
  const server = net.createServer((inbound) => {
    if (down) return inbound.destroy();
    const outbound = net.connect(port, "127.0.0.1");
    for (const [a, b] of [
      [inbound, outbound],
      [outbound, inbound],
    ]) {
      a.pipe(b);
      a.on("error", () => b.destroy());
      a.on("close", () => b.destroy());
      sockets.add(a);
      a.on("close", () => sockets.delete(a));
    }
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.after(() => {
    sockets.forEach((s) => s.destroy());
    return new Promise((resolve) => server.close(() => resolve()));
  });
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    cut() {
      down = true;
      sockets.forEach((s) => s.destroy());
    },
    heal(to = port) {
      port = to;
      down = false;
    },
  };
}

/**
 * A scripted WebSocket server: `script(ws, request, n)` runs for the n-th connection (from 0).
 * `connections` resolves the next connection's request URL.
 */
export async function fakeServer(t, script) {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  await once(wss, "listening");
  const urls = [];
  const waiters = [];
  wss.on("connection", (ws, request) => {
    const url = new URL(request.url, "http://x");
    const n = urls.length;
    urls.push(url);
    waiters.splice(0).forEach((w) => w());
    script(ws, url, n);
  });
  t.after(() => {
    wss.clients.forEach((ws) => ws.terminate());
    return new Promise((resolve) => wss.close(() => resolve()));
  });
  return {
    url: `ws://127.0.0.1:${wss.address().port}/api/v1/ws`,
    urls,
    /** Resolve with the URL of connection number `n` once it has arrived. */
    connection(n) {
      return within(
        new Promise((resolve) => {
          const check = () => (urls.length > n ? resolve(urls[n]) : waiters.push(check));
          check();
        }),
        `connection ${n}`,
      );
    },
  };
}

/** Send a server frame. */
export function sendFrame(ws, topic, payload, extra = {}) {
  ws.send(JSON.stringify({ topic, payload, ...extra }));
}

/** The welcome frame a fake server sends. */
export function welcome(ws, url, { offset = 0, epoch = "e1", recovered, members } = {}) {
  const payload = {
    connectionId: "c",
    username: url.searchParams.get("username"),
    roomID: url.searchParams.get("roomID"),
    members: members ?? [url.searchParams.get("username")],
    epoch,
    offset,
  };
  if (recovered !== undefined) payload.recovered = recovered;
  sendFrame(ws, "welcome", payload);
}
