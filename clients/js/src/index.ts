/**
 * roomcast-client: join roomcast rooms over WebSocket, in browsers and in Node 20+.
 *
 * The client reconnects by itself, following the close code table of the wire contract
 * (docs/protocol.md), and resumes every room with `since` + `epoch` so that the application sees
 * every room message once, in offset order, across reconnects. Every request carries an
 * idempotency `key` and is sent again after a reconnect until it is answered, so a publish is
 * neither lost nor duplicated. One connection may be in many rooms (protocol v1.1):
 * `client.join(roomID)` gives a {@link Room} handle.
 *
 * @example
 * const client = await connect({ url: "ws://127.0.0.1:8000/api/v1/ws", username: "alice", room: "lobby" });
 * client.on("chat", (msg) => console.log(msg.from, msg.payload));
 * const offset = await client.request("chat", { text: "hi" });
 * const news = await client.join("news", { backlog: 20 });
 * news.on("headline", (msg) => console.log(msg.payload));
 * const older = await news.history({ before: 120, limit: 50 });
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
  /** The room offset: increases by one per room message (none on an ephemeral topic). */
  offset?: number;
  /** Set on a message addressed to one member. */
  to?: string;
}

/**
 * The payload of the `welcome` frame, the first frame of every connection. The room fields are
 * those of the URL's room; a connection opened without a room has only `connectionId`,
 * `username` and `rooms`.
 */
export interface Welcome {
  connectionId: string;
  username: string;
  /** The URL's room, and where it stands: absent for a connection made without `roomID` (protocol v1.1). */
  roomID?: string;
  members?: string[];
  epoch?: string;
  offset?: number;
  /** Present when the connection resumed a room: false when messages may have been missed. */
  recovered?: boolean;
  /** The rooms the connection is in (protocol v1.1). */
  rooms?: string[];
}

/** The payload of a `joined` frame: a room joined with `room.join` (protocol v1.1). */
export interface Joined {
  roomID: string;
  members: string[];
  epoch: string;
  offset: number;
  /** Present when the join resumed the room: false when messages may have been missed. */
  recovered?: boolean;
}

/** Options of {@link Client.join}. */
export interface JoinOptions {
  /** Replay the room's last `backlog` retained messages before live ones. */
  backlog?: number;
  /** Resume from this offset (with `epoch`) on the first join. */
  since?: number;
  epoch?: string;
}

/** Options of a publish: {@link Client.send}, {@link Client.request} and their {@link Room} forms. */
export interface PublishOptions {
  /**
   * `false`: the message is not delivered back to this connection (everyone else, and this
   * user's other connections, still get it; the `ack` still has its offset). Default `true`.
   */
  echo?: boolean;
}

/** Options of {@link Client.history} and {@link Room.history}. */
export interface HistoryOptions {
  /** Only messages with a lower offset; default: the room's latest offset + 1. */
  before?: number;
  /** At most this many messages, 1-100 (default 50). */
  limit?: number;
}

/** A page of a room's retained messages: the answer to `room.history`. */
export interface HistoryPage {
  /** The room's history epoch: offsets of another epoch belong to a lost history. */
  epoch: string;
  /**
   * The latest retained messages below `before`, oldest first, each as members received it
   * (messages to other members left out). Empty: nothing older is retained.
   */
  messages: Message[];
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
  /** The room to join when connecting; without it the connection starts in no room (v1.1). */
  room?: string;
  /** Resume the room from this offset on the first connection (with `epoch`). */
  since?: number;
  /** The epoch that `since` belongs to. */
  epoch?: string;
  /**
   * Replay the `room` option's last `backlog` retained messages after the first welcome,
   * before live ones (not with `since`; reconnects resume instead).
   */
  backlog?: number;
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
  /** With the ack's offset, or with the answer frame that came before the ack (`answered`). */
  resolve(result: any): void;
  reject(error: RoomcastError): void;
  timer: ReturnType<typeof setTimeout>;
  sent: boolean;
  /** Resolve with the answer frame that precedes the ack (`room.history`). */
  answered?: boolean;
  /** The frame, with its key. */
  text: string;
  /** A publish, sent again after a reconnect or a `timeout` error (built-in topics are not). */
  resend: boolean;
  /** `timeout` and later `unavailable` answers so far: the outcome is unknown until an `ack`. */
  uncertain: number;
  /** The wait before it is sent again after such an answer. */
  again?: ReturnType<typeof setTimeout>;
}

type Handlers = Map<string, Set<Handler>>;

function add<T>(set: Set<T>, item: T): () => void {
  set.add(item);
  return () => set.delete(item);
}

function addHandler(handlers: Handlers, topic: string, handler: Handler): () => void {
  let set = handlers.get(topic);
  if (!set) handlers.set(topic, (set = new Set()));
  return add(set, handler);
}

function emit(handlers: Handlers, message: Message): void {
  for (const key of [message.topic, "*"]) for (const handler of handlers.get(key) ?? []) handler(message);
}

/**
 * One room of a client's connection, from {@link Client.join}: its own handlers, members,
 * offset and epoch. The client re-joins it after every reconnect, resuming from its offset.
 */
export class Room {
  /** The room's members, kept up to date from `joined`, `presence.join` and `presence.leave`. */
  members: string[] = [];
  /** The room's history epoch, used to resume. */
  epoch?: string;
  /** The offset of the last room message delivered to the application. */
  offset = 0;
  /** False once the room was left, or the server removed the connection from it. */
  joined = false;
  /** Settles when the room is joined, or fails when the join is refused. */
  readonly ready: Promise<Room>;
  /** @internal */ handlers: Handlers = new Map();
  /** @internal */ resets = new Set<(joined: Joined) => void>();
  /** @internal */ backlog?: number;
  /** @internal re-joins asked again in a row (their backoff) */
  retries = 0;
  /** @internal a join waiting for its backoff to be asked again */
  timer?: ReturnType<typeof setTimeout>;
  /** @internal frames that came before any handler of their topic (none for the URL's room) */
  early?: Message[];
  /** @internal */ settle!: [(room: Room) => void, (error: RoomcastError) => void];

  constructor(
    /** The room's ID. */
    readonly id: string,
    private readonly client: Client,
  ) {
    this.ready = new Promise((resolve, reject) => (this.settle = [resolve, reject]));
    this.ready.catch(() => {});
  }

  /**
   * Call `handler` with every frame of this room on `topic` (`"*"`: every topic). Frames that
   * arrived before the room had a handler for them (a backlog replayed by the join) are given
   * to it first. Returns a function that removes the handler.
   */
  on<P = any>(topic: string, handler: Handler<P>): () => void {
    const off = addHandler(this.handlers, topic, handler);
    const early = this.early ?? [];
    this.early = early.filter((m) => topic !== "*" && m.topic !== topic);
    for (const m of early) if (!this.early.includes(m)) handler(m);
    return off;
  }

  /** Call `handler` when a re-join could not resume the room (`recovered: false`). */
  onReset(handler: (joined: Joined) => void): () => void {
    return add(this.resets, handler);
  }

  /** Publish to this room, or to its member `to`; queued while reconnecting. */
  publish(topic: string, payload: unknown, to?: string, options: PublishOptions = {}): void {
    this.client.send(topic, payload, to, this.id, options);
  }

  /**
   * Publish like {@link publish} and wait for the `ack`: resolves with the offset (undefined
   * for an ephemeral topic). Sent again after a reconnect until answered, with the same key
   * (see {@link Client.request}).
   */
  request(topic: string, payload: unknown, to?: string, options: PublishOptions = {}): Promise<number | undefined> {
    return this.client.request(topic, payload, to, this.id, options);
  }

  /** A page of this room's retained messages below `before` (see {@link Client.history}). */
  history(options: HistoryOptions = {}): Promise<HistoryPage> {
    return this.client.history({ ...options, room: this.id });
  }

  /** Ask the server for this room's members, cluster-wide. */
  async presence(): Promise<string[]> {
    await this.client.request("presence", { roomID: this.id });
    return this.members;
  }

  /** Leave the room: nothing more of it reaches the client. */
  async leave(): Promise<void> {
    this.client.drop(this);
    if (this.client.status !== "closed") await this.client.request("room.leave", { roomID: this.id }).catch(() => {});
  }
}

/**
 * A WebSocket connection of one user, in one room (the `room` option) or many (v1.1,
 * {@link join}). It connects on construction and reconnects until {@link close} is called or
 * the server ends the connection with a final close code. `on`, `send`, `request`, `members`,
 * `offset` and `epoch` are those of the `room` option's room (v1); {@link join} gives a handle
 * for each other room.
 */
export class Client {
  /** The current connection state. */
  status: Status = "connecting";
  /** The last welcome received. */
  welcome?: Welcome;
  /** Settles with the first welcome, or fails when the first connection is refused for good. */
  readonly ready: Promise<Welcome>;
  /** The rooms the client is in, by ID (the `room` option's included). */
  readonly rooms = new Map<string, Room>();

  private readonly o: ClientOptions;
  private first?: Room;
  private ws?: WebSocketLike;
  private token?: string;
  private handlers: Handlers = new Map();
  private statusHandlers = new Set<(status: Status, info: StatusInfo) => void>();
  private resetHandlers = new Set<(welcome: Welcome) => void>();
  private pending = new Map<number, Pending>();
  private queue: [string, number?][] = [];
  private nextId = 1;
  /** The start of this client's idempotency keys (the frame id follows). */
  private readonly keys = randomKey();
  private attempt = 0;
  private upSince?: number;
  private authFailures = 0;
  private timer?: ReturnType<typeof setTimeout>;
  private keepalive?: ReturnType<typeof setTimeout>;
  private refresher?: ReturnType<typeof setTimeout>;
  private refusal?: RoomcastError;
  private failure?: string;
  private closed = false;
  private joined = false;
  private settle!: [(welcome: Welcome) => void, (error: RoomcastError) => void];
  private lastAnswer?: Message;

  constructor(options: ClientOptions) {
    this.o = options;
    this.token = options.token;
    if (options.room !== undefined) {
      const room = (this.first = new Room(options.room, this));
      this.rooms.set(room.id, room);
      if (options.epoch !== undefined) {
        room.epoch = options.epoch;
        room.offset = options.since ?? 0;
      }
    }
    this.ready = new Promise<Welcome>((resolve, reject) => {
      this.settle = [resolve, reject];
    });
    // Awaiting `ready` is optional: a refusal is also reported through onStatus.
    this.ready.catch(() => {});
    this.open();
  }

  /** The members of the `room` option's room. */
  get members(): string[] {
    return this.first?.members ?? [];
  }

  /** The history epoch of the `room` option's room, used to resume. */
  get epoch(): string | undefined {
    return this.first?.epoch;
  }

  /** The offset of the last message of the `room` option's room delivered to the application. */
  get offset(): number {
    return this.first?.offset ?? 0;
  }

  /**
   * Call `handler` with every frame of `topic` (`"*"`: every frame), of every room: room
   * messages, `presence.join`, `presence.leave`, `joined`, `left`, `welcome`, `error` (errors
   * that answer no request). Returns a function that removes the handler.
   */
  on<P = any>(topic: string, handler: Handler<P>): () => void {
    return addHandler(this.handlers, topic, handler);
  }

  /** Call `handler` on every status change. Returns a function that removes the handler. */
  onStatus(handler: (status: Status, info: StatusInfo) => void): () => void {
    return add(this.statusHandlers, handler);
  }

  /**
   * Call `handler` when a reconnect could not resume the `room` option's room
   * (`recovered: false`): messages may have been missed, so the application should reload
   * its state. Each {@link Room} has its own `onReset`.
   */
  onReset(handler: (welcome: Welcome) => void): () => void {
    return add(this.resetHandlers, handler);
  }

  /**
   * Join another room on this connection (protocol v1.1); resolves with its handle once the
   * server said `joined`. The client re-joins it after every reconnect with its own `since` +
   * `epoch`. Joining a room the client is in gives the same handle.
   *
   * @throws RoomcastError `forbidden`, `duplicate`, `too_many_rooms`, `bad_request`, ...
   */
  join(roomID: string, options: JoinOptions = {}): Promise<Room> {
    if (this.closed) return Promise.reject(new RoomcastError("closed", "the client is closed"));
    let room = this.rooms.get(roomID);
    if (!room) {
      room = new Room(roomID, this);
      room.early = [];
      room.backlog = options.backlog;
      if (options.epoch !== undefined) {
        room.epoch = options.epoch;
        room.offset = options.since ?? 0;
      }
      this.rooms.set(roomID, room);
      if (this.joined) this.sendJoin(room);
    }
    return room.ready;
  }

  /**
   * Publish `payload` on `topic` to the room (the `room` option's, or `room`), or to its member
   * `to`. While the client is reconnecting the frame is queued and sent after the reconnect.
   *
   * @throws RoomcastError `closed` when the client is closed, `queue_full` when too many
   *   frames wait for a reconnect.
   */
  send(topic: string, payload: unknown, to?: string, room?: string, options: PublishOptions = {}): void {
    this.write(frame(topic, payload, to, undefined, this.roomOf(topic, room), options.echo));
  }

  /**
   * The room a frame names: `room`, else, for a relayed topic, the `room` option's, so that
   * once that room was left the server answers `not_joined` rather than taking the frame to
   * the connection's next room.
   */
  private roomOf(topic: string, room?: string): string | undefined {
    return room ?? (isBuiltin(topic) ? undefined : this.o.room);
  }

  /**
   * Publish like {@link send} and wait for the server's `ack`. The frame carries an idempotency
   * `key` unique to this client: when the connection drops before the answer, it is sent again
   * after the reconnect (in order, with the same key, before newer frames), and so it is after
   * an `error` with code `timeout`; the server publishes a key at most once, so the message
   * reaches the room exactly once (protocol section 10). Built-in topics (`presence`, `room.*`)
   * are not sent again: they fail with `disconnected`.
   *
   * @returns the offset the message got in the room (the first one's when the key had published
   *   already; undefined for topics that publish nothing, and for ephemeral topics).
   * @throws RoomcastError with the `code` and `message` of the server's `error` frame, or
   *   `disconnected`, `timeout` (no answer within `requestTimeout`, resends included), `closed`.
   */
  request(
    topic: string,
    payload: unknown,
    to?: string,
    room?: string,
    options: PublishOptions = {},
  ): Promise<number | undefined> {
    const named = this.roomOf(topic, room);
    return this.call(topic, (id, key) => frame(topic, payload, to, id, named, options.echo, key), false);
  }

  /**
   * A page of a room's retained messages (`room.history`): at most `limit` (1-100, default
   * 50) messages with offsets below `before` (default: the latest), oldest first, as members
   * received them. Page back with `before` set to the first message's offset, until a page
   * is empty. The room is `room`, or the `room` option's.
   *
   * @throws RoomcastError `not_joined` for a room the client is not in, `bad_request` for a
   *   bad `before` or `limit`, or `disconnected`, `timeout`, `closed`.
   */
  async history(options: HistoryOptions & { room?: string } = {}): Promise<HistoryPage> {
    const payload: Record<string, unknown> = {};
    const room = options.room ?? this.o.room;
    if (room !== undefined) payload.roomID = room;
    if (options.before !== undefined) payload.before = options.before;
    if (options.limit !== undefined) payload.limit = options.limit;
    const answer: Message<HistoryPage> = await this.call(
      "room.history",
      (id, key) => frame("room.history", payload, undefined, id, undefined, undefined, key),
      true,
    );
    return { epoch: answer.payload.epoch, messages: answer.payload.messages };
  }

  /**
   * Send the frame `build(id, key)` makes (with this request's id and idempotency key) and wait
   * for its ack, or its answer frame.
   */
  private call(topic: string, build: (id: number, key: string) => string, answered: boolean): Promise<any> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.answer(id, new RoomcastError("timeout", `no answer to ${topic} in time`)),
        this.o.requestTimeout ?? 10000,
      );
      const text = build(id, `${this.keys}-${id}`);
      const resend = !isBuiltin(topic);
      this.pending.set(id, { resolve, reject, timer, sent: false, answered, text, resend, uncertain: 0 });
      try {
        this.write(text, id);
      } catch (error) {
        this.answer(id, error as RoomcastError);
      }
    });
  }

  /** Ask the server for the members of the `room` option's room, cluster-wide. */
  async presence(): Promise<string[]> {
    await this.request("presence", {});
    return this.members;
  }

  /** @internal Forget `room`: nothing more of it is delivered, nor re-joined. */
  drop(room: Room): void {
    room.joined = false;
    this.rooms.delete(room.id);
    if (room === this.first) this.first = undefined;
  }

  /** Send `room.join` for `room`, resuming it when it has an epoch. */
  private sendJoin(room: Room): void {
    const payload: Record<string, unknown> = { roomID: room.id };
    if (room.epoch !== undefined) Object.assign(payload, { since: room.offset, epoch: room.epoch });
    else if (room.backlog) payload.backlog = room.backlog;
    this.request("room.join", payload).catch((error: RoomcastError) => {
      // a join lost with its connection is sent again after the reconnect
      if (error.code === "disconnected" || this.closed) return;
      // no answer in time, or (a room joined before the reconnect) the broker unavailable
      // for now: asked again (joining a room twice changes nothing), unless the connection
      // dropped meanwhile, after which the reconnect joins it; a first join three times at
      // most, so that join() settles
      if (error.code === (room.joined || room.retries < 2 ? "timeout" : 0) || (error.code === "unavailable" && room.joined)) {
        const ws = this.ws;
        room.timer = setTimeout(() => {
          if (!this.closed && ws === this.ws && this.joined && this.rooms.get(room.id) === room) this.sendJoin(room);
        }, this.backoff(room.retries++));
        return;
      }
      this.drop(room);
      room.settle[1](error);
      // a room re-joined after a reconnect may be refused now: it is left
      const left = { topic: "left", room: room.id, payload: { roomID: room.id, reason: error.code } };
      emit(this.handlers, left);
      emit(room.handlers, left);
    });
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
    // the first connection, token included, has `connectTimeout` to be welcomed
    if (!this.welcome) this.armConnect();
    if (opts.tokenProvider && this.token === undefined) {
      Promise.resolve()
        .then(opts.tokenProvider)
        .then(
          (token) => {
            this.token = token;
            if (!this.closed) this.dial();
          },
          (error) => {
            if (this.closed) return;
            const why = `the token provider failed: ${error?.message ?? error}`;
            // the first connection is tried once: `ready` fails rather than retrying for ever
            if (!this.welcome) return this.finish(undefined, why, new RoomcastError("unauthenticated", why));
            this.retry(1011, why);
          },
        );
      return;
    }
    this.dial();
  }

  /** Fail the first connection when no welcome came within `connectTimeout`. */
  private armConnect(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      const ws = this.ws;
      this.ws = undefined;
      try {
        ws?.close(1000);
      } catch {
        // a socket that never opened may throw; it is dropped either way
      }
      const why = `no welcome from ${this.o.url} in time`;
      this.finish(undefined, why, new RoomcastError("timeout", why));
    }, this.o.connectTimeout ?? 10000);
  }

  /** Open the WebSocket, with the token and the URL room's resume point. */
  private dial(): void {
    const opts = this.o;
    const Ctor = opts.WebSocket ?? (globalThis as any).WebSocket;
    if (!Ctor) throw new TypeError("no WebSocket: pass the WebSocket option");
    const query: Record<string, string> = { username: opts.username };
    const first = this.first;
    if (first) query.roomID = first.id;
    if (this.token !== undefined) query.token = this.token;
    if (first?.epoch !== undefined) {
      query.since = String(first.offset);
      query.epoch = first.epoch;
    } else if (first && opts.backlog) {
      query.backlog = String(opts.backlog);
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
    // an error frame without id says why the close right after it came; any later frame
    // means it was not a refusal
    this.refusal = undefined;
    const p = m.payload;
    // a v1 server's frames about the room (presence answers) may not name it
    const room = m.room === undefined ? (m.topic === "presence" ? this.first : undefined) : this.rooms.get(m.room);
    // Server frames never carry `from`; a relayed message named "ack" is just a message.
    switch (m.from === undefined ? m.topic : "") {
      case "welcome":
        return this.welcomed(m as Message<Welcome>);
      case "joined":
        if (!room) return;
        this.joinedRoom(room, p);
        break;
      case "left":
        if (room) this.drop(room);
        break;
      case "ack":
        return this.answer(p.id, this.pending.get(p.id)?.answered ? this.lastAnswer : p.offset);
      case "room.history":
        // the answer to a history request, whose ack comes next
        this.lastAnswer = m;
        return;
      case "error":
        if (p.id != null && this.pending.has(p.id)) {
          const pending = this.pending.get(p.id)!;
          // The outcome is unknown: the same key publishes at most once, and only its answer
          // can say what became of it (`unavailable` meanwhile is retried after a backoff).
          if (pending.resend && (p.code === "timeout" || (p.code === "unavailable" && pending.uncertain))) {
            const delay = p.code === "timeout" ? 0 : this.backoff(pending.uncertain - 1);
            pending.uncertain++;
            const ws = this.ws;
            // a connection lost meanwhile sends it again after the reconnect
            pending.again = setTimeout(
              () => ws === this.ws && this.pending.get(p.id) === pending && this.write(pending.text, p.id),
              delay,
            );
            return;
          }
          return this.answer(p.id, new RoomcastError(p.code, p.message));
        }
        // an error frame without id precedes a refusal's close
        this.refusal = new RoomcastError(p.code, p.message);
        break;
      case "pong":
        if (p === KEEPALIVE) return;
        break;
      case "presence":
        if (room) room.members = [...p.members];
        break;
      case "presence.join":
        if (room && !room.members.includes(p.username)) room.members = [...room.members, p.username];
        break;
      case "presence.leave":
        if (room) room.members = room.members.filter((name) => name !== p.username);
    }
    if (m.room !== undefined && !room && m.topic !== "left") return; // a room left meanwhile
    if (room && typeof m.offset === "number") {
      // resumed history and live delivery may overlap: each offset reaches the app once
      if (m.offset <= room.offset) return;
      room.offset = m.offset;
    }
    emit(this.handlers, m);
    if (!room) return;
    const has = (topic: string) => room.handlers.get(topic)?.size;
    if (room.early && !has(m.topic) && !has("*")) {
      if (room.early.length < (this.o.maxQueue ?? 1000)) room.early.push(m);
    } else emit(room.handlers, m);
  }

  /** A `joined` frame: the room's state, as `welcomed` does for the URL's room. */
  private joinedRoom(room: Room, j: Joined): void {
    const resumed = room.epoch !== undefined;
    room.members = [...j.members];
    if (!resumed || !j.recovered) {
      room.epoch = j.epoch;
      // a backlog replays messages up to the join's offset: let them through once
      room.offset = resumed ? j.offset : Math.max(0, j.offset - (room.backlog ?? 0));
    }
    if (resumed && !j.recovered) for (const handler of room.resets) handler(j);
    room.joined = true;
    room.retries = 0;
    room.settle[0](room);
  }

  private welcomed(m: Message<Welcome>): void {
    const w = m.payload;
    const first = this.first;
    const resumed = first?.epoch !== undefined;
    this.welcome = w;
    this.authFailures = 0;
    this.upSince = Date.now();
    if (first) {
      // a connection with a room is welcomed with where that room stands
      first.members = [...w.members!];
      if (!resumed || !w.recovered) {
        first.epoch = w.epoch;
        // a backlog replays messages up to the welcome's offset: let them through once
        first.offset = resumed ? w.offset! : Math.max(0, w.offset! - (this.o.backlog ?? 0));
      }
      first.joined = true;
      first.settle[0](first);
    }
    this.joined = true;
    clearTimeout(this.timer);
    emit(this.handlers, m);
    if (resumed && !w.recovered) for (const handler of this.resetHandlers) handler(w);
    this.setStatus(resumed && w.recovered ? "recovered" : "connected", {});
    this.settle[0](w);
    this.scheduleRefresh();
    // every other room first, each resumed from its own offset; then what waited
    for (const room of this.rooms.values()) if (room !== first) this.sendJoin(room);
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
      throw new RoomcastError("queue_full", "too many frames queued");
    }
  }

  private answer(id: number, result: number | undefined | RoomcastError): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    clearTimeout(pending.again);
    // a request that failed before it was sent is not sent later
    if (!pending.sent) this.queue = this.queue.filter((queued) => queued[1] !== id);
    if (result instanceof RoomcastError) pending.reject(result);
    else pending.resolve(result);
  }

  private dropped(code: number, reason: string): void {
    this.ws = undefined;
    clearTimeout(this.keepalive);
    clearTimeout(this.refresher);
    // a publish already sent may or may not have been handled: it goes first after the
    // reconnect, with its key; a built-in request fails
    this.joined = false;
    const again: [string, number][] = [];
    for (const [id, pending] of this.pending) {
      if (!pending.sent) continue;
      if (pending.resend) {
        pending.sent = false;
        // it may have been published: an `unavailable` to its resend is retried, as after `timeout`
        pending.uncertain = Math.max(pending.uncertain, 1);
        again.push([pending.text, id]);
      } else this.answer(id, new RoomcastError("disconnected", "the connection dropped"));
    }
    this.queue = [...again, ...this.queue];
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
    // A connection welcomed and then closed at once (a server that rate-limits or fails) is
    // a failed attempt too: only one that lasted `maxDelay` resets the backoff.
    if (this.upSince !== undefined && Date.now() - this.upSince >= (this.o.maxDelay ?? 20000)) {
      this.attempt = 0;
    }
    this.upSince = undefined;
    let delay: number;
    if (RESTART.includes(code) && this.attempt === 0) {
      delay = Math.random() * 1000;
      this.attempt++;
    } else delay = this.backoff(this.attempt++);
    this.setStatus(this.welcome ? "reconnecting" : "connecting", {
      code,
      reason,
      delay,
    });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.closed || this.open(), delay);
  }

  /** The exponential backoff with jitter of attempt `n` (from 0), in milliseconds. */
  private backoff(n: number): number {
    const ceiling = Math.min(this.o.maxDelay ?? 20000, (this.o.minDelay ?? 500) * 2 ** n);
    return ceiling / 2 + (Math.random() * ceiling) / 2;
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
    for (const room of this.rooms.values()) {
      clearTimeout(room.timer); // a join waiting to be asked again
      room.settle[1](failure);
    }
    this.setStatus("closed", { code, reason, error });
  }

  private setStatus(status: Status, info: StatusInfo): void {
    this.status = status;
    for (const handler of this.statusHandlers) handler(status, info);
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

/** A topic the server answers itself (never relayed, never resent). */
function isBuiltin(topic: string): boolean {
  return ["ping", "presence", "auth.refresh"].includes(topic) || topic.startsWith("room.");
}

function frame(
  topic: string,
  payload: unknown,
  to?: string,
  id?: number,
  room?: string,
  echo?: boolean,
  key?: string,
): string {
  const f: Record<string, unknown> = { topic, payload };
  if (to !== undefined) f.to = to;
  if (id !== undefined) f.id = id;
  if (room !== undefined) f.room = room;
  if (echo === false) f.echo = false;
  if (key !== undefined) f.key = key;
  return JSON.stringify(f);
}

/** 16 random bytes in hex: `crypto.getRandomValues` works outside secure contexts too. */
function randomKey(): string {
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
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
