/**
 * roomcast-client: join a roomcast room over WebSocket, in browsers and in Node 20+.
 *
 * The client reconnects by itself, following the close code table of the wire contract
 * (docs/protocol.md), and resumes the room with `since` + `epoch` so that the application sees
 * every room message once, in offset order, across reconnects.
 *
 * @example
 * const client = await connect({ url: "ws://127.0.0.1:8000/api/v1/ws", username: "alice", room: "lobby" });
 * client.on("chat", (msg) => console.log(msg.from, msg.payload));
 * const offset = await client.request("chat", { text: "hi" });
 */

/** The connection state reported to {@link Client.onStatus} handlers. */
export type Status = "connecting" | "connected" | "reconnecting" | "recovered" | "closed";

/** A frame from the server. Room messages carry `room`, `from` and `offset`. */
export interface Message<P = any> {
  topic: string;
  payload: P;
  /** The room the message was published to. */
  room?: string;
  /** The sender's username, or `$server` for messages sent through the HTTP API. */
  from?: string;
  /** The room offset: increases by one per room message. */
  offset?: number;
  /** Set on a message addressed to one member. */
  to?: string;
}

/** The payload of the `welcome` frame, the first frame of every connection. */
export interface Welcome {
  connectionId: string;
  username: string;
  roomID: string;
  members: string[];
  epoch: string;
  offset: number;
  /** Present when the connection resumed a room: false when messages may have been missed. */
  recovered?: boolean;
}

/** What a status change carries besides the status itself. */
export interface StatusInfo {
  /** The close code of the connection that ended (for `reconnecting` and `closed`). */
  code?: number;
  /** The close reason, or the message of the server's error frame. */
  reason?: string;
  /** Milliseconds until the next attempt (for `reconnecting`). */
  delay?: number;
  /** The server's refusal, when it sent one (for `closed`). */
  error?: RoomcastError;
}

/** The part of the WebSocket API the client uses: browsers' `WebSocket` and the `ws` package fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  // The events are `any`: each implementation has its own event classes (a DOM `MessageEvent`,
  // a `ws` `MessageEvent`), and a narrower type here would refuse one of them under `strict`.
  // The client reads `data` of messages, `code` and `reason` of closes, `message` of errors.
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

/** A WebSocket constructor, e.g. `globalThis.WebSocket` or `import WebSocket from "ws"`. */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

/** Options of {@link connect} and {@link Client}. Times are in milliseconds. */
export interface ClientOptions {
  /**
   * The server: a URL whose path ends in `/api/v1/ws` is used as it is; any other URL is a base
   * to which `/api/v1/ws` is added (`http://host:port`, `wss://host/rt`). `http(s)` becomes
   * `ws(s)`; query parameters are kept.
   */
  url: string;
  username: string;
  room: string;
  /** Resume the room from this offset on the first connection (with `epoch`). */
  since?: number;
  /** The epoch that `since` belongs to. */
  epoch?: string;
  /** A JWT, when the server requires authentication. */
  token?: string;
  /**
   * Returns a fresh token: called at the first connect when `token` is not given, after a 4401,
   * and, for a JWT with `exp`, at 80 % of its remaining lifetime to send the new token in-band
   * (`auth.refresh`) so that the connection is not closed at `exp`.
   */
  tokenProvider?: () => string | Promise<string>;
  /** The WebSocket implementation; defaults to `globalThis.WebSocket` (Node 20 needs the `ws` package). */
  WebSocket?: WebSocketConstructor;
  /** Send a ping after this long without a frame from the server (default 20000; 0 turns keepalive off). */
  pingInterval?: number;
  /** Reconnect when the server stays silent this long after a ping (default 10000). */
  pingTimeout?: number;
  /** The first reconnect delay of the exponential backoff (default 500). */
  minDelay?: number;
  /** The longest reconnect delay (default 20000). */
  maxDelay?: number;
  /** How long {@link Client.request} waits for its `ack` (default 10000). */
  requestTimeout?: number;
  /** How many frames to keep while disconnected, sent after the reconnect (default 1000). */
  maxQueue?: number;
  /**
   * How long the first connection may take to get its welcome (default 10000). The first
   * connection is tried once: when it fails, `ready` rejects and the client is closed.
   */
  connectTimeout?: number;
}

/** A topic handler: called with each frame of its topic. */
export type Handler<P = any> = (message: Message<P>) => void;

/** Close codes after which the client does not reconnect (see the close code table). */
const FINAL = [1000, 1007, 1008, 1009, 4400, 4403, 4409, 4499];
/** Close codes that mean "restart": reconnect at once, with jitter only. */
const RESTART = [1001, 1012];
const OPEN = 1;
const KEEPALIVE = "$keepalive";

/**
 * An error frame from the server, a refusal, or a local failure.
 *
 * `code` is the contract's error code (`forbidden`, `unknown_topic`, `member_not_found`, ...) or
 * one of the client's own: `closed` (the client is closed), `disconnected` (the connection
 * dropped before the answer came), `timeout`, `queue_full`.
 */
export class RoomcastError extends Error {
  /** The error code. */
  readonly code: string;
  /** The WebSocket close code, when the error ended the connection. */
  readonly closeCode?: number;

  constructor(code: string, message: string, closeCode?: number) {
    super(message);
    this.name = "RoomcastError";
    this.code = code;
    this.closeCode = closeCode;
  }
}

interface Pending {
  resolve(offset: number | undefined): void;
  reject(error: RoomcastError): void;
  timer: ReturnType<typeof setTimeout>;
  sent: boolean;
}

/**
 * A member of one room. It connects on construction and reconnects until {@link close} is called
 * or the server ends the connection with a final close code.
 */
export class Client {
  /** The current connection state. */
  status: Status = "connecting";
  /** The room's members, kept up to date from `welcome`, `presence.join` and `presence.leave`. */
  members: string[] = [];
  /** The last welcome received. */
  welcome?: Welcome;
  /** The room's history epoch, used to resume. */
  epoch?: string;
  /** The offset of the last room message delivered to the application. */
  offset = 0;
  /** Settles with the first welcome, or fails when the first connection is refused for good. */
  readonly ready: Promise<Welcome>;

  private readonly o: ClientOptions;
  private ws?: WebSocketLike;
  private token?: string;
  private handlers = new Map<string, Set<Handler>>();
  private statusHandlers = new Set<(status: Status, info: StatusInfo) => void>();
  private resetHandlers = new Set<(welcome: Welcome) => void>();
  private pending = new Map<number, Pending>();
  private queue: [string, number?][] = [];
  private nextId = 1;
  private attempt = 0;
  private authFailures = 0;
  private timer?: ReturnType<typeof setTimeout>;
  private keepalive?: ReturnType<typeof setTimeout>;
  private refresher?: ReturnType<typeof setTimeout>;
  private refusal?: RoomcastError;
  private failure?: string;
  private presenceList: string[] = [];
  private closed = false;
  private joined = false;
  private settle!: [(welcome: Welcome) => void, (error: RoomcastError) => void];

  constructor(options: ClientOptions) {
    this.o = options;
    this.token = options.token;
    if (options.epoch !== undefined) {
      this.epoch = options.epoch;
      this.offset = options.since ?? 0;
    }
    this.ready = new Promise<Welcome>((resolve, reject) => {
      this.settle = [resolve, reject];
    });
    // Awaiting `ready` is optional: a refusal is also reported through onStatus.
    this.ready.catch(() => {});
    this.open();
  }

  /**
   * Call `handler` with every frame of `topic`: room messages, `presence.join`,
   * `presence.leave`, `welcome`, `error` (errors that answer no request). Returns a function
   * that removes the handler.
   */
  on<P = any>(topic: string, handler: Handler<P>): () => void {
    let set = this.handlers.get(topic);
    if (!set) this.handlers.set(topic, (set = new Set()));
    set.add(handler);
    return () => set!.delete(handler);
  }

  /** Call `handler` on every status change. Returns a function that removes the handler. */
  onStatus(handler: (status: Status, info: StatusInfo) => void): () => void {
    this.statusHandlers.add(handler);
    return () => this.statusHandlers.delete(handler);
  }

  /**
   * Call `handler` when a reconnect could not resume the room (`recovered: false`): messages
   * may have been missed, so the application should reload its state.
   */
  onReset(handler: (welcome: Welcome) => void): () => void {
    this.resetHandlers.add(handler);
    return () => this.resetHandlers.delete(handler);
  }

  /**
   * Publish `payload` on `topic` to the room, or to the member `to`. While the client is
   * reconnecting the frame is queued and sent after the reconnect.
   *
   * @throws RoomcastError `closed` when the client is closed, `queue_full` when too many
   *   frames wait for a reconnect.
   */
  send(topic: string, payload: unknown, to?: string): void {
    this.write(frame(topic, payload, to));
  }

  /**
   * Publish like {@link send} and wait for the server's `ack`.
   *
   * @returns the offset the message got in the room (undefined for topics that publish nothing).
   * @throws RoomcastError with the `code` and `message` of the server's `error` frame, or
   *   `disconnected`, `timeout`, `closed`.
   */
  request(topic: string, payload: unknown, to?: string): Promise<number | undefined> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.answer(id, new RoomcastError("timeout", `no answer to ${topic} in time`)),
        this.o.requestTimeout ?? 10000,
      );
      this.pending.set(id, { resolve, reject, timer, sent: false });
      try {
        this.write(frame(topic, payload, to, id), id);
      } catch (error) {
        this.answer(id, error as RoomcastError);
      }
    });
  }

  /** Ask the server for the room's members, cluster-wide. */
  async presence(): Promise<string[]> {
    await this.request("presence", {});
    return this.presenceList;
  }

  /** Close the connection with 1000 and stop reconnecting. Pending requests fail with `closed`. */
  close(): void {
    if (this.closed) return;
    const ws = this.ws;
    this.finish(1000, "closed by the client");
    if (ws) ws.close(1000);
  }

  private open(): void {
    const opts = this.o;
    if (opts.tokenProvider && this.token === undefined) {
      Promise.resolve()
        .then(opts.tokenProvider)
        .then(
          (token) => {
            this.token = token;
            if (!this.closed) this.open();
          },
          () => this.retry(1011, "the token provider failed"),
        );
      return;
    }
    const Ctor = opts.WebSocket ?? (globalThis as any).WebSocket;
    if (!Ctor) throw new TypeError("no WebSocket: pass the WebSocket option (e.g. from the ws package)");
    const query: Record<string, string> = { username: opts.username, roomID: opts.room };
    if (this.token !== undefined) query.token = this.token;
    if (this.epoch !== undefined) {
      query.since = String(this.offset);
      query.epoch = this.epoch;
    }
    const ws: WebSocketLike = new Ctor(endpoint(opts.url, query));
    this.ws = ws;
    this.joined = false;
    this.refusal = undefined;
    this.failure = undefined;
    ws.onmessage = (event) => ws === this.ws && this.receive(String(event.data));
    ws.onclose = (event) => ws === this.ws && this.dropped(event.code, event.reason);
    // a close event follows; `ws` says why a handshake failed ("Unexpected server response: 404")
    ws.onerror = (event) => (this.failure = event?.message);
    this.arm();
    if (!this.welcome) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => {
        if (ws !== this.ws) return;
        this.ws = undefined;
        try {
          ws.close(1000);
        } catch {
          // a socket that never opened may throw; it is dropped either way
        }
        const why = `no welcome from ${opts.url} in time`;
        this.finish(undefined, why, new RoomcastError("timeout", why));
      }, opts.connectTimeout ?? 10000);
    }
  }

  /** Keepalive: ping after `pingInterval` of silence, give up `pingTimeout` later. */
  private arm(): void {
    clearTimeout(this.keepalive);
    const interval = this.o.pingInterval ?? 20000;
    if (!interval) return;
    this.keepalive = setTimeout(() => {
      const ws = this.ws;
      if (ws && ws.readyState === OPEN) ws.send(frame("ping", KEEPALIVE));
      this.keepalive = setTimeout(() => {
        if (ws !== this.ws) return;
        this.ws = undefined;
        try {
          ws?.close(4000, "keepalive timeout");
        } catch {
          // closing a socket that never opened may throw; it is dropped either way
        }
        this.dropped(4408, "keepalive timeout");
      }, this.o.pingTimeout ?? 10000);
    }, interval);
  }

  private receive(text: string): void {
    let m: Message;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    this.arm();
    const p = m.payload;
    // Server frames never carry `from`; a relayed message named "ack" is just a message.
    switch (m.from === undefined ? m.topic : "") {
      case "welcome":
        return this.welcomed(m as Message<Welcome>);
      case "ack":
        return this.answer(p.id, p.offset);
      case "error":
        if (p.id != null && this.pending.has(p.id)) {
          return this.answer(p.id, new RoomcastError(p.code, p.message));
        }
        // an error frame without id precedes a refusal's close
        this.refusal = new RoomcastError(p.code, p.message);
        break;
      case "pong":
        if (p === KEEPALIVE) return;
        break;
      case "presence":
        this.presenceList = this.members = [...p.members];
        break;
      case "presence.join":
        if (!this.members.includes(p.username)) this.members = [...this.members, p.username];
        break;
      case "presence.leave":
        this.members = this.members.filter((name) => name !== p.username);
    }
    if (typeof m.offset === "number") {
      // resumed history and live delivery may overlap: each offset reaches the app once
      if (m.offset <= this.offset) return;
      this.offset = m.offset;
    }
    this.emit(m.topic, m);
  }

  private welcomed(m: Message<Welcome>): void {
    const w = m.payload;
    const resumed = this.epoch !== undefined;
    this.welcome = w;
    this.members = [...w.members];
    this.attempt = this.authFailures = 0;
    if (!resumed || !w.recovered) {
      this.epoch = w.epoch;
      this.offset = w.offset;
    }
    this.joined = true;
    clearTimeout(this.timer);
    this.emit("welcome", m);
    if (resumed && !w.recovered) for (const handler of this.resetHandlers) handler(w);
    this.setStatus(resumed && w.recovered ? "recovered" : "connected", {});
    this.settle[0](w);
    this.scheduleRefresh();
    const queued = this.queue;
    this.queue = [];
    for (const [text, id] of queued) this.write(text, id);
  }

  /** Send a fresher token from the provider at 80 % of the current token's remaining lifetime. */
  private scheduleRefresh(): void {
    clearTimeout(this.refresher);
    const provider = this.o.tokenProvider;
    const exp = expiry(this.token);
    if (!provider || !exp) return;
    this.refresher = setTimeout(async () => {
      try {
        const token = await provider();
        // nothing fresher: the server's 4401 at exp makes the client ask again
        if ((expiry(token) ?? 0) <= exp) return;
        await this.request("auth.refresh", { token });
        this.token = token;
        this.scheduleRefresh();
      } catch {
        // a refused token ends the connection with 4401, which fetches a fresh one
      }
    }, Math.min(2 ** 31 - 1, Math.max(0, (exp - Date.now()) * 0.8)));
  }

  private write(text: string, id?: number): void {
    if (this.closed) throw new RoomcastError("closed", "the client is closed");
    const ws = this.ws;
    if (ws && this.joined && ws.readyState === OPEN) {
      ws.send(text);
      const pending = id === undefined ? undefined : this.pending.get(id);
      if (pending) pending.sent = true;
    } else if (this.queue.length < (this.o.maxQueue ?? 1000)) {
      this.queue.push([text, id]);
    } else {
      throw new RoomcastError("queue_full", "too many frames wait for a reconnect");
    }
  }

  private answer(id: number, result: number | undefined | RoomcastError): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    // a request that failed before it was sent is not sent later
    if (!pending.sent) this.queue = this.queue.filter((queued) => queued[1] !== id);
    if (result instanceof RoomcastError) pending.reject(result);
    else pending.resolve(result);
  }

  private dropped(code: number, reason: string): void {
    this.ws = undefined;
    clearTimeout(this.keepalive);
    clearTimeout(this.refresher);
    // a request already sent may or may not have been handled: let the caller decide
    for (const [id, pending] of this.pending) {
      if (pending.sent) this.answer(id, new RoomcastError("disconnected", "the connection dropped"));
    }
    if (this.closed) return;
    const refusal = this.refusal;
    const why = refusal?.message ?? (reason || this.failure || "");
    // The first connection is tried once (and once more with a fresh token after 4401), as
    // the Python client does: an unreachable server or a wrong URL fails `ready` at once.
    const first = !this.welcome;
    if (first && !refusal && code === 1006) {
      const cannot = `cannot connect to ${this.o.url}${this.failure ? `: ${this.failure}` : ""}`;
      return this.finish(code, cannot, new RoomcastError("unreachable", cannot, code));
    }
    if (FINAL.includes(code) || (first && code !== 4401)) {
      return this.finish(code, why, refusal);
    }
    if (code === 4401) {
      // only a new token can help; give up when fresh tokens keep being refused
      if (!this.o.tokenProvider || ++this.authFailures > (first ? 1 : 3)) {
        return this.finish(code, why, refusal);
      }
      this.token = undefined;
    }
    this.retry(code, why);
  }

  private retry(code: number, reason: string): void {
    let delay: number;
    if (RESTART.includes(code)) {
      delay = Math.random() * 1000;
    } else {
      const ceiling = Math.min(this.o.maxDelay ?? 20000, (this.o.minDelay ?? 500) * 2 ** this.attempt++);
      delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    }
    this.setStatus(this.welcome ? "reconnecting" : "connecting", {
      code,
      reason,
      delay,
    });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.closed || this.open(), delay);
  }

  private finish(code: number | undefined, reason: string, error?: RoomcastError): void {
    this.closed = true;
    this.ws = undefined;
    clearTimeout(this.timer);
    clearTimeout(this.keepalive);
    clearTimeout(this.refresher);
    const failure = new RoomcastError(error?.code ?? "closed", reason || "the connection closed", code);
    for (const id of [...this.pending.keys()]) this.answer(id, failure);
    this.queue = [];
    this.settle[1](failure);
    this.setStatus("closed", { code, reason, error });
  }

  private setStatus(status: Status, info: StatusInfo): void {
    this.status = status;
    for (const handler of this.statusHandlers) handler(status, info);
  }

  private emit(topic: string, message: Message): void {
    for (const key of [topic, "*"]) for (const handler of this.handlers.get(key) ?? []) handler(message);
  }
}

/**
 * Connect to a room and wait for the welcome.
 *
 * @throws RoomcastError when the server refuses the connection for good (bad request,
 *   forbidden, duplicate username, no valid token).
 */
export async function connect(options: ClientOptions): Promise<Client> {
  const client = new Client(options);
  await client.ready;
  return client;
}

function frame(topic: string, payload: unknown, to?: string, id?: number): string {
  const f: Record<string, unknown> = { topic, payload };
  if (to !== undefined) f.to = to;
  if (id !== undefined) f.id = id;
  return JSON.stringify(f);
}

/** The `exp` of a JWT in milliseconds, read without verifying it (undefined for other tokens). */
function expiry(token?: string): number | undefined {
  try {
    const claims = JSON.parse(atob(token!.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** `http://h/x?a=1` + query -> `ws://h/x/api/v1/ws?a=1&...`; a path that names the endpoint is kept. */
function endpoint(url: string, query: Record<string, string>): string {
  const u = new URL(url.replace(/^http/, "ws"));
  if (!/\/api\/v1\/ws$/.test(u.pathname)) u.pathname = u.pathname.replace(/\/?$/, "/api/v1/ws");
  u.hash = "";
  for (const [key, value] of Object.entries(query)) u.searchParams.set(key, value);
  return String(u);
}
