/**
 * One WebSocket shared by every subscription of a client.
 *
 * Exactly once, in order, across reconnects: the connection remembers, per topic, the last
 * offset it handed to that topic's iterators (and the topic's epoch), and every (re)subscribe
 * asks the server for what came after it (`since`, `epoch`). Each iterator also keeps its own
 * last offset and drops anything at or below it, so a replay that overlaps (a second iterator
 * joining a topic from further back) never repeats an update to an iterator that had it.
 *
 * Summary streams (`summary.game.{id}`, `summary.games.top`) carry state, not events: they have
 * no offsets to resume, so a reconnect subscribes them again and the server sends the current
 * state at once; a second iterator of a followed summary topic starts with the last state the
 * connection received.
 *
 * Iterators' queues are bounded (`maxQueue`): an iterator that falls behind stops the
 * connection's reader; in Node the socket is paused, the server's send buffer fills, and the
 * server cuts the connection (4009); the client reconnects and resumes. Nothing is lost, and
 * memory stays bounded on both sides.
 */

import { AuthenticationError, SubscriptionRefused } from "./errors.js";
import {
  Gap,
  Snapshot,
  type StreamItem,
  SummaryState,
  type WireUpdate,
  summaryFromWire,
  updateFromWire,
} from "./models.js";
import { BoundedQueue, sleep } from "./queue.js";
import { type FrameSocket, SocketClosed, UpgradeRefused, openSocket } from "./socket.js";
import { tokenClaims } from "./token.js";

/** A function returning a fresh JWT (or a promise of one). */
export type TokenProvider = () => string | Promise<string>;

/** Close codes that are about the token: renewable through a provider, else final. */
const AUTH_CLOSE_CODES: Record<number, string> = { 4001: "token refused", 4002: "token expired" };
const WILDCARD = "rating.game.*";
const SUMMARY_PREFIX = "summary.";

/** What an iterator's queue holds. */
export type QueuedItem = StreamItem | SummaryState;

/** One iterator's view of a topic. */
export class Subscription {
  /** Last offset queued, per concrete topic (the wildcard spans many). */
  readonly last = new Map<string, number>();
  constructor(
    readonly topic: string,
    readonly queue: BoundedQueue<QueuedItem | Error>,
    public snapshot: boolean,
  ) {}

  /** Queue `item` unless this iterator had `offset` of `topic` already. */
  offer(topic: string, offset: number, item: StreamItem): Promise<void> | null {
    if (!(item instanceof Gap) && offset <= (this.last.get(topic) ?? -1)) return null;
    this.last.set(topic, offset);
    return this.queue.put(item);
  }
}

/** What {@link StreamConnection} is made with. */
export interface StreamOptions {
  url: string;
  token?: string | undefined;
  tokenProvider?: TokenProvider | undefined;
  maxBackoffMs: number;
  maxQueue: number;
  openTimeoutMs: number;
  refreshMarginMs: number;
}

/** A refused upgrade the client waited out. */
export interface Refusal {
  readonly status: number;
  readonly retryAfter: number | null;
}

/** Connects on the first subscription, reconnects with jittered exponential backoff. */
export class StreamConnection {
  #token: string | undefined;
  readonly #subs = new Map<string, Subscription[]>();
  /** Last offset handed to each topic's iterators, and the epoch it belongs to. */
  readonly #position = new Map<string, number>();
  readonly #epoch = new Map<string, string>();
  /** The filter each filtered topic is followed with (the server holds one per topic). */
  readonly #filters = new Map<string, string>();
  /** Summary topics: their iterators, subscribe options and last state received. */
  readonly #summarySubs = new Map<string, Subscription[]>();
  readonly #summaryOptions = new Map<string, Record<string, number>>();
  readonly #summaryLast = new Map<string, SummaryState>();
  #socket: FrameSocket | null = null;
  #subscribedThisSession = false;
  #running: Promise<void> | null = null;
  readonly #stop = new AbortController();
  /** Connections made (1 + reconnects). */
  connections = 0;
  /** Upgrades the server refused (429, 503) and the client waited out, newest last. */
  readonly refusals: Refusal[] = [];
  /** Why the stream ended for good (a token refused without a provider, a refused URL). */
  failure: Error | null = null;

  constructor(private readonly options: StreamOptions) {
    if (options.token === undefined && options.tokenProvider === undefined) {
      throw new TypeError("a token or a tokenProvider is needed");
    }
    this.#token = options.token;
  }

  get hasProvider(): boolean {
    return this.options.tokenProvider !== undefined;
  }

  get closed(): boolean {
    return this.#stop.signal.aborted;
  }

  // -- iterators ------------------------------------------------------------------------

  /** Register an iterator of `topic` after offset `since` (null: from now), with only the
   * updates `filter` passes (null: every one). */
  add(
    topic: string,
    since: number | null,
    snapshot: boolean,
    filter: string | null = null,
  ): Subscription {
    const first = !this.#subs.has(topic);
    const heldFilter = this.#filters.get(topic) ?? null;
    if (!first && heldFilter !== filter) {
      throw new TypeError(
        `${topic} is followed with filter ${JSON.stringify(heldFilter)} already: one client ` +
          "follows a topic with one filter at a time (use another client)",
      );
    }
    const sub = new Subscription(topic, new BoundedQueue(this.options.maxQueue), snapshot);
    if (this.closed) {
      sub.queue.close();
      return sub;
    }
    if (filter !== null) this.#filters.set(topic, filter);
    const held = this.#position.get(topic);
    const subs = this.#subs.get(topic) ?? [];
    subs.push(sub);
    this.#subs.set(topic, subs);
    if (since !== null) sub.last.set(topic, since);
    else if (held !== undefined) sub.last.set(topic, held); // joins a followed topic: from now on
    const further = since !== null && (held === undefined || since < held);
    if (first || snapshot || further) {
      if (further) this.#position.set(topic, since);
      if (this.#socket !== null) this.#subscribe(this.#socket, topic, snapshot);
    }
    this.#running ??= this.#run();
    return sub;
  }

  /**
   * Register an iterator of the summary topic `topic`; `options` (`intervalMs`, `limit`,
   * `minCount`) are the topic's for this connection: an iterator asking for others subscribes
   * the topic again with them.
   */
  addSummary(topic: string, options: Record<string, number>): Subscription {
    const sub = new Subscription(topic, new BoundedQueue(this.options.maxQueue), false);
    if (this.closed) {
      sub.queue.close();
      return sub;
    }
    const subs = this.#summarySubs.get(topic) ?? [];
    subs.push(sub);
    this.#summarySubs.set(topic, subs);
    const changed = JSON.stringify(this.#summaryOptions.get(topic)) !== JSON.stringify(options);
    this.#summaryOptions.set(topic, options);
    const last = this.#summaryLast.get(topic);
    if (changed || last === undefined) {
      if (this.#socket !== null) this.#subscribeSummary(this.#socket, topic);
    } else {
      sub.queue.force(last); // the state the others have: the server sends no other
    }
    this.#running ??= this.#run();
    return sub;
  }

  /** A summary iterator ended: forget it, and unsubscribe when it was the last one. */
  removeSummary(sub: Subscription): void {
    sub.queue.close();
    const subs = (this.#summarySubs.get(sub.topic) ?? []).filter((other) => other !== sub);
    if (subs.length > 0) {
      this.#summarySubs.set(sub.topic, subs);
      return;
    }
    if (this.#summarySubs.delete(sub.topic)) {
      this.#summaryOptions.delete(sub.topic);
      this.#summaryLast.delete(sub.topic);
      this.#socket?.send({ action: "unsubscribe", topic: sub.topic });
    }
  }

  #subscribeSummary(socket: FrameSocket, topic: string): void {
    const options = this.#summaryOptions.get(topic) ?? {};
    socket.send({ action: "subscribe", topic, id: topic, ...options });
  }

  /** An iterator ended: forget it, and the topic when it was the last one following it. */
  remove(sub: Subscription): void {
    sub.queue.close();
    const subs = (this.#subs.get(sub.topic) ?? []).filter((other) => other !== sub);
    if (subs.length > 0) {
      this.#subs.set(sub.topic, subs);
      return;
    }
    if (this.#subs.delete(sub.topic)) {
      this.#position.delete(sub.topic);
      this.#filters.delete(sub.topic);
      this.#socket?.send({ action: "unsubscribe", topic: sub.topic });
    }
  }

  /** Close the connection; every iterator ends. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.#stop.abort(new SubscriptionRefused("the client was closed"));
    this.#socket?.close(1000, "client closed");
    for (const subs of [...this.#subs.values(), ...this.#summarySubs.values()]) {
      for (const sub of subs) sub.queue.close();
    }
    this.#subs.clear();
    this.#summarySubs.clear();
    await this.#running;
  }

  /** The current token; a new one from the provider when `fresh` (or none is held yet). */
  async currentToken(fresh = false): Promise<string> {
    const provider = this.options.tokenProvider;
    if (provider !== undefined && (fresh || this.#token === undefined)) {
      const token = await provider();
      if (typeof token !== "string") throw new TypeError("tokenProvider must return a string");
      this.#token = token;
    }
    return this.#token as string;
  }

  // -- the connection -------------------------------------------------------------------

  async #run(): Promise<void> {
    try {
      await this.#reconnectForever();
    } catch (error) {
      if (!this.closed) this.#fail(error instanceof Error ? error : new Error(String(error)));
    }
  }

  async #reconnectForever(): Promise<void> {
    let attempt = 0;
    let freshToken = false;
    const signal = this.#stop.signal;
    while (!this.closed) {
      let retryAfter = 0;
      this.#subscribedThisSession = false;
      try {
        const token = await this.currentToken(freshToken);
        freshToken = false;
        const socket = await openSocket(this.options.url, {
          token,
          timeoutMs: this.options.openTimeoutMs,
          signal,
        });
        this.connections += 1;
        await this.#session(socket, token);
      } catch (error) {
        if (this.closed) return;
        if (error instanceof SocketClosed && error.code in AUTH_CLOSE_CODES) {
          if (!this.hasProvider) {
            const reason = error.reason || (AUTH_CLOSE_CODES[error.code] as string);
            this.#fail(new AuthenticationError(error.code, reason));
            return;
          }
          freshToken = true; // renew and come back at once
          attempt = 0;
          continue;
        }
        if (error instanceof UpgradeRefused) {
          if ([401, 403, 404].includes(error.status)) {
            this.#fail(new SubscriptionRefused(`${this.options.url}: ${error.message}`));
            return;
          }
          this.refusals.push({ status: error.status, retryAfter: error.retryAfter });
          retryAfter = error.retryAfter ?? 0;
        } else if (!(error instanceof SocketClosed)) {
          throw error; // not a connection failure: a bug or a bad URL; end the iterators
        }
      } finally {
        this.#socket = null;
      }
      if (this.#subscribedThisSession) attempt = 0; // it worked for a while: start over
      attempt += 1;
      const backoff = Math.min(this.options.maxBackoffMs, 250 * 2 ** Math.min(attempt, 10));
      const delay = backoff * (0.5 + Math.random() / 2); // jitter: clients do not return in step
      try {
        await sleep(Math.max(delay, retryAfter * 1000), signal);
      } catch {
        return;
      }
    }
  }

  /** Run one connection until it closes: always ends by throwing SocketClosed. */
  async #session(socket: FrameSocket, token: string): Promise<never> {
    const hello = JSON.parse(await socket.next()) as { type?: string };
    if (hello.type !== "connection_success") {
      socket.close(1002, "unexpected first frame");
      throw new SocketClosed(1002, `unexpected first frame ${JSON.stringify(hello)}`);
    }
    this.#socket = socket;
    for (const [topic, subs] of this.#subs) {
      this.#subscribe(socket, topic, subs.some((sub) => sub.snapshot));
    }
    for (const topic of this.#summarySubs.keys()) this.#subscribeSummary(socket, topic);
    const refresher = this.#refreshBeforeExpiry(socket, token);
    try {
      for (;;) {
        const frame = JSON.parse(await socket.next()) as Record<string, unknown>;
        if (frame.type === "subscribed") this.#subscribedThisSession = true;
        await this.#dispatch(frame);
      }
    } finally {
      refresher.cancel();
    }
  }

  #subscribe(socket: FrameSocket, topic: string, snapshot: boolean): void {
    const message: Record<string, unknown> = { action: "subscribe", topic, id: topic };
    const position = this.#position.get(topic);
    if (position !== undefined && topic !== WILDCARD) {
      message.since = position;
      const epoch = this.#epoch.get(topic);
      if (epoch !== undefined) message.epoch = epoch;
    } else if (snapshot) {
      message.snapshot = true;
    }
    const filter = this.#filters.get(topic);
    if (filter !== undefined) message.filter = filter;
    socket.send(message);
  }

  /** Send `refresh` with a new token before the current one expires (else close 4002). */
  #refreshBeforeExpiry(socket: FrameSocket, token: string): { cancel(): void } {
    let timer: ReturnType<typeof setTimeout> | undefined;
    let cancelled = false;
    const schedule = (current: string): void => {
      const expires = tokenClaims(current).exp;
      if (!this.hasProvider || typeof expires !== "number") return;
      const lifetime = expires * 1000 - Date.now();
      const wait = Math.max(0, lifetime - Math.min(this.options.refreshMarginMs, lifetime / 3));
      timer = setTimeout(() => {
        this.currentToken(true).then(
          (fresh) => {
            if (cancelled) return;
            socket.send({ action: "refresh", token: fresh });
            schedule(fresh);
          },
          () => {
            if (!cancelled) schedule(current); // the provider failed: the server says 4002
          },
        );
      }, wait);
    };
    schedule(token);
    return {
      cancel: () => {
        cancelled = true;
        clearTimeout(timer);
      },
    };
  }

  // -- frames ---------------------------------------------------------------------------

  #targets(topic: string): Subscription[] {
    const subs = [...(this.#subs.get(topic) ?? [])];
    if (topic.startsWith("rating.game.") && topic !== WILDCARD) {
      subs.push(...(this.#subs.get(WILDCARD) ?? []));
    }
    return subs;
  }

  async #dispatch(frame: Record<string, unknown>): Promise<void> {
    switch (frame.type) {
      case "rating_update": {
        const wire = frame as unknown as WireUpdate;
        const { topic, offset } = wire;
        const update = updateFromWire(wire, this.#epoch.get(topic) ?? null);
        if (this.#subs.has(topic)) {
          this.#position.set(topic, Math.max(offset, this.#position.get(topic) ?? 0));
        }
        for (const sub of this.#targets(topic)) {
          const put = sub.offer(topic, offset, update);
          if (put !== null) await put;
        }
        return;
      }
      case "subscribed":
        if (!String(frame.topic).startsWith(SUMMARY_PREFIX)) await this.#subscribed(frame);
        return;
      case "summary": {
        const topic = String(frame.topic);
        const subs = this.#summarySubs.get(topic);
        if (subs === undefined) return; // unsubscribed meanwhile
        const state = SummaryState.fromWire(frame);
        this.#summaryLast.set(topic, state);
        for (const sub of subs) await sub.queue.put(state);
        return;
      }
      case "snapshot": {
        const topic = String(frame.topic);
        const offset = Number(frame.offset);
        const snapshot = new Snapshot(topic, offset, summaryFromWire(frame.data as never));
        this.#position.set(topic, offset);
        for (const sub of this.#subs.get(topic) ?? []) {
          if (!sub.snapshot) continue;
          sub.snapshot = false;
          sub.last.set(topic, offset);
          await sub.queue.put(snapshot);
        }
        return;
      }
      case "error": {
        const refused = String(frame.id ?? "");
        const summarySubs = this.#summarySubs.get(refused);
        if (summarySubs !== undefined) {
          // A refused summary subscribe (its options, say): its iterators end with the reason.
          this.#summarySubs.delete(refused);
          this.#summaryOptions.delete(refused);
          for (const sub of summarySubs) {
            sub.queue.force(new SubscriptionRefused(`${refused}: ${String(frame.message)}`));
          }
          return;
        }
        if (["forbidden", "unknown_topic", "bad_filter"].includes(String(frame.code))) {
          const topic = String(frame.id ?? "");
          const subs = this.#subs.get(topic) ?? [];
          this.#subs.delete(topic);
          this.#filters.delete(topic);
          for (const sub of subs) {
            sub.queue.force(new SubscriptionRefused(`${topic}: ${String(frame.message)}`));
          }
        }
        return;
      }
      default:
        return;
    }
  }

  async #subscribed(frame: Record<string, unknown>): Promise<void> {
    const topic = String(frame.topic);
    const offset = Number(frame.offset ?? 0);
    if (typeof frame.epoch === "string" && frame.epoch) this.#epoch.set(topic, frame.epoch);
    if (frame.recovered === false) {
      const after = this.#position.get(topic) ?? 0;
      this.#position.set(topic, offset);
      for (const sub of this.#subs.get(topic) ?? []) {
        const gap = new Gap(topic, sub.last.get(topic) ?? after, offset);
        sub.last.set(topic, offset);
        await sub.queue.put(gap);
      }
      return;
    }
    const fresh = !("recovered" in frame); // not a resume: live from `offset`
    const held = this.#position.get(topic);
    if (fresh && (held === undefined || held < offset)) this.#position.set(topic, offset);
    for (const sub of this.#subs.get(topic) ?? []) {
      if (!sub.last.has(topic)) sub.last.set(topic, offset);
    }
  }

  #fail(error: Error): void {
    this.failure = error;
    for (const subs of [...this.#subs.values(), ...this.#summarySubs.values()]) {
      for (const sub of subs) sub.queue.force(error);
    }
  }
}
