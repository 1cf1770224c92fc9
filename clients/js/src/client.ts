/** The client: typed updates over one WebSocket, and the REST API. */

import { GapError, PreconditionFailed, type Problem, apiError } from "./errors.js";
import {
  Gap,
  type HistoryPage,
  type Rating,
  type Snapshot,
  type StreamItem,
  type Summary,
  SummaryState,
  type Update,
  type WireRating,
  type WireUpdate,
  ratingFromWire,
  summaryFromWire,
  updateFromWire,
} from "./models.js";
import { ConsumedUpdate, type ConsumeOptions } from "./consumer.js";
import { CLOSED, abortReason } from "./queue.js";
import {
  type QueuedItem,
  type Refusal,
  StreamConnection,
  type Subscription,
  type TokenProvider,
} from "./stream.js";
import { tokenClaims } from "./token.js";

/** Options of {@link RatewireClient}. */
export interface ClientOptions {
  /** The module port (`ws://host:8081/`) or the main port's `/ws`; `wss://` with TLS. */
  url: string;
  /** The REST base URL; by default derived from `url` (see {@link restUrlFor}). */
  restUrl?: string;
  /** A JWT. Give this or `tokenProvider`. */
  token?: string;
  /**
   * Returns a fresh JWT: the client renews tokens before they expire (on the same
   * connection) and after a 4001/4002 close, and REST retries a 401 once with a new token.
   */
  tokenProvider?: TokenProvider;
  /** Longest wait between reconnects, in ms (default 10,000). */
  maxBackoffMs?: number;
  /** Updates a subscription may hold unread before the connection stops reading (10,000). */
  maxQueue?: number;
  /** Timeout of each REST request and of each connection attempt, in ms (default 10,000). */
  timeoutMs?: number;
  /** Renew tokens this long before they expire, in ms (default 30,000; at most a third of their life). */
  refreshMarginMs?: number;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
}

/** Options of {@link RatewireClient.subscribe}. */
export interface SubscribeOptions {
  /** Start after this offset (replaying retained updates); default: with the next change. */
  since?: number | null;
  /** Game topics: yield a {@link Snapshot} of the game's summary first. */
  snapshot?: boolean;
  /**
   * A CEL expression evaluated on the server, e.g. `"data.score <= 2"`: only the updates it
   * passes are sent (offsets keep the topic's numbering, so they have gaps). A bad one ends
   * the subscription with a {@link SubscriptionRefused} naming what is wrong. One client
   * follows a topic with one filter at a time (a second, different one throws a TypeError).
   */
  filter?: string | null;
  /** `"yield"` (default) hands out a {@link Gap}; `"throw"` throws a {@link GapError}. */
  onGap?: "yield" | "throw";
  /** Ends the subscription: the pending `next()` rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Options of {@link RatewireClient.summaries}. */
export interface SummaryOptions {
  /** At most one state per this many ms (default 1,000; at least 50). */
  intervalMs?: number;
  /** `summary.games.top`: how many games (as `topGames`). */
  limit?: number;
  /** `summary.games.top`: the least ratings a game needs (as `topGames`). */
  minCount?: number;
  /** Ends the iteration: the pending `next()` rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** The `signal` every REST helper takes. */
export interface CallOptions {
  signal?: AbortSignal;
}

/** `rate(gameId, score, {comment})`: leaving `comment` out keeps the current comment. */
export interface RateOptions extends CallOptions {
  comment?: string | null;
  userId?: string;
}

/** Times `rate` reads again and retries when another write changed the rating meanwhile. */
const RATE_ATTEMPTS = 5;

/**
 * The REST base URL that goes with a WebSocket URL: the same origin for `/ws`; for the module
 * port (`ws://host:8081/`), port 8080 of the same host.
 */
export function restUrlFor(wsUrl: string): string {
  const url = new URL(wsUrl);
  const scheme = url.protocol === "wss:" ? "https:" : "http:";
  if (url.pathname.replace(/\/+$/, "") === "/ws") return `${scheme}//${url.host}`;
  return `${scheme}//${url.hostname}:8080`;
}

/**
 * A ratewire client: every update of a topic exactly once and in order over one WebSocket,
 * across reconnects and server restarts; and the REST API, typed. Call {@link close} when done.
 */
export class RatewireClient {
  readonly url: string;
  readonly restUrl: string;
  readonly #stream: StreamConnection;
  readonly #timeoutMs: number;
  readonly #fetch: typeof fetch;
  readonly #closing = new AbortController();

  constructor(options: ClientOptions) {
    this.url = options.url;
    this.restUrl = (options.restUrl ?? restUrlFor(options.url)).replace(/\/+$/, "");
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#stream = new StreamConnection({
      url: options.url,
      token: options.token,
      tokenProvider: options.tokenProvider,
      maxBackoffMs: options.maxBackoffMs ?? 10_000,
      maxQueue: options.maxQueue ?? 10_000,
      openTimeoutMs: this.#timeoutMs,
      refreshMarginMs: options.refreshMarginMs ?? 30_000,
    });
  }

  /** Connections the stream made (1 + reconnects). */
  get connections(): number {
    return this.#stream.connections;
  }

  /** Upgrades the server refused (429, 503) that the stream waited out. */
  get refusals(): readonly Refusal[] {
    return this.#stream.refusals;
  }

  /** Close the WebSocket; every subscription ends (its loop finishes), pending calls abort. */
  async close(): Promise<void> {
    this.#closing.abort(new DOMException("The client was closed.", "AbortError"));
    await this.#stream.close();
  }

  // -- the stream -----------------------------------------------------------------------

  /**
   * Every update of `topic` (`rating.global`, `rating.game.{id}`, `rating.game.*`,
   * `rating.user.{id}`) after offset `since` (default: from now), exactly once and in order,
   * across reconnects and server restarts. Several subscriptions share one WebSocket.
   *
   * When the server can no longer replay what was missed, a {@link Gap} is yielded (or a
   * {@link GapError} thrown, with `onGap: "throw"`): re-read the state you keep, then go on.
   */
  subscribe(
    topic: string,
    options: SubscribeOptions & { snapshot: true },
  ): AsyncGenerator<StreamItem, void, undefined>;
  subscribe(
    topic: string,
    options: SubscribeOptions & { onGap: "throw" },
  ): AsyncGenerator<Update, void, undefined>;
  subscribe(topic: string, options?: SubscribeOptions): AsyncGenerator<Update | Gap, void, undefined>;
  async *subscribe(
    topic: string,
    options: SubscribeOptions = {},
  ): AsyncGenerator<StreamItem, void, undefined> {
    const { signal } = options;
    if (signal?.aborted) throw abortReason(signal);
    const sub: Subscription = this.#stream.add(
      topic,
      options.since ?? null,
      !!options.snapshot,
      options.filter ?? null,
    );
    try {
      for (;;) {
        const item = await this.#next(sub, signal);
        if (item === CLOSED) return;
        if (item instanceof Error) throw item;
        if (item instanceof Gap && options.onGap === "throw") throw new GapError(item);
        if (!(item instanceof SummaryState)) yield item; // never on a rating topic
      }
    } finally {
      this.#stream.remove(sub);
    }
  }

  /**
   * The state of `summary.game.{id}` (a game's summary) or `summary.games.top` (the top list;
   * `limit` and `minCount` as {@link topGames} takes them): the current one at once, then at
   * most one per `intervalMs` (50 or more) and only when it changed; the latest state always
   * arrives. Across reconnects it starts again with the state then (no history to replay).
   */
  async *summaries(
    topic: string,
    options: SummaryOptions = {},
  ): AsyncGenerator<SummaryState, void, undefined> {
    const { signal, intervalMs = 1000, limit, minCount } = options;
    if (!Number.isInteger(intervalMs) || intervalMs < 50) {
      throw new RangeError(`intervalMs must be an integer of at least 50; got ${intervalMs}`);
    }
    if (signal?.aborted) throw abortReason(signal);
    const wire: Record<string, number> = { intervalMs };
    if (limit !== undefined) wire.limit = limit;
    if (minCount !== undefined) wire.minCount = minCount;
    const sub: Subscription = this.#stream.addSummary(topic, wire);
    try {
      for (;;) {
        const item = await this.#next(sub, signal);
        if (item === CLOSED) return;
        if (item instanceof Error) throw item;
        if (item instanceof SummaryState) yield item;
      }
    } finally {
      this.#stream.removeSummary(sub);
    }
  }

  #next(sub: Subscription, signal?: AbortSignal): Promise<QueuedItem | Error | typeof CLOSED> {
    if (sub.queue.size === 0 && this.#stream.failure !== null) {
      return Promise.resolve(this.#stream.failure); // ended for good, after what was queued
    }
    return sub.queue.get(signal);
  }

  // -- REST -----------------------------------------------------------------------------

  async #request(
    method: string,
    path: string,
    options: {
      auth?: boolean;
      json?: unknown;
      params?: Record<string, string | number | undefined>;
      headers?: Record<string, string>;
      signal?: AbortSignal | undefined;
      /** ms the server may hold the answer (a long-poll), added to the timeout. */
      waitMs?: number;
    } = {},
  ): Promise<Response> {
    const url = new URL(this.restUrl + path);
    for (const [name, value] of Object.entries(options.params ?? {})) {
      if (value !== undefined) url.searchParams.set(name, String(value));
    }
    const send = async (fresh: boolean): Promise<Response> => {
      const headers: Record<string, string> = { Accept: "application/json", ...options.headers };
      if (options.auth) {
        headers.Authorization = `Bearer ${await this.#stream.currentToken(fresh)}`;
      }
      if (options.json !== undefined) headers["Content-Type"] = "application/json";
      const timeout = AbortSignal.timeout(this.#timeoutMs + (options.waitMs ?? 0));
      const signals = [this.#closing.signal, timeout];
      if (options.signal !== undefined) signals.push(options.signal);
      const init: RequestInit = { method, headers, signal: AbortSignal.any(signals) };
      if (options.json !== undefined) init.body = JSON.stringify(options.json);
      return this.#fetch(url, init);
    };
    let answer = await send(false);
    if (answer.status === 401 && options.auth && this.#stream.hasProvider) {
      await answer.body?.cancel();
      answer = await send(true); // expired: renew once
    }
    if (answer.status >= 400) {
      const text = await answer.text();
      let body: Problem;
      try {
        body = JSON.parse(text) as Problem;
      } catch {
        body = { title: answer.statusText, detail: text.slice(0, 200) };
      }
      throw apiError(answer.status, body, method, path, answer.headers.get("Retry-After"));
    }
    return answer;
  }

  /** The game's summary (count, mean, Bayesian mean, histogram). */
  async summary(gameId: string, options: CallOptions = {}): Promise<Summary> {
    const answer = await this.#request("GET", `/games/${encodeURIComponent(gameId)}/summary`, {
      signal: options.signal,
    });
    return summaryFromWire(await answer.json());
  }

  /** Games by Bayesian mean, best first. */
  async topGames(
    options: CallOptions & { limit?: number; minCount?: number } = {},
  ): Promise<Summary[]> {
    const answer = await this.#request("GET", "/games/top", {
      params: { limit: options.limit ?? 10, minCount: options.minCount ?? 1 },
      signal: options.signal,
    });
    const page = (await answer.json()) as { items: Parameters<typeof summaryFromWire>[0][] };
    return page.items.map(summaryFromWire);
  }

  /** One rating ({@link NotFound} if there is none). */
  async get(ratingId: string, options: CallOptions = {}): Promise<Rating> {
    const answer = await this.#request("GET", `/ratings/${encodeURIComponent(ratingId)}`, {
      signal: options.signal,
    });
    return ratingFromWire(await answer.json());
  }

  /**
   * Create a rating (for the token's user unless `userId`); {@link Conflict} if the user rated
   * the game already.
   */
  async create(
    gameId: string,
    score: number,
    options: CallOptions & { comment?: string | null; userId?: string } = {},
  ): Promise<Rating> {
    const body: Record<string, unknown> = { gameId, score, comment: options.comment ?? null };
    if (options.userId !== undefined) body.userId = options.userId;
    const answer = await this.#request("POST", "/ratings", {
      auth: true,
      json: body,
      signal: options.signal,
    });
    return ratingFromWire(await answer.json());
  }

  /**
   * Create or replace the user's rating of `gameId` (`PUT`; the token's user unless
   * `userId`). Leaving `comment` out keeps the current comment; `null` clears it.
   *
   * The write names the version it read (`If-Match`), so a change made meanwhile is never
   * overwritten unseen: on 412 the rating is read again and the write retried.
   */
  async rate(gameId: string, score: number, options: RateOptions = {}): Promise<Rating> {
    const userId = await this.#user(options.userId);
    const path = `/games/${encodeURIComponent(gameId)}/ratings/${encodeURIComponent(userId)}`;
    let lastError: PreconditionFailed | undefined;
    for (let attempt = 0; attempt < RATE_ATTEMPTS; attempt += 1) {
      const current = await this.#current(gameId, userId, options.signal);
      const comment = "comment" in options ? options.comment : (current?.comment ?? null);
      const headers: Record<string, string> =
        current === null ? {} : { "If-Match": `"${current.version}"` };
      try {
        const answer = await this.#request("PUT", path, {
          auth: true,
          json: { score, comment: comment ?? null },
          headers,
          signal: options.signal,
        });
        return ratingFromWire(await answer.json());
      } catch (error) {
        if (!(error instanceof PreconditionFailed)) throw error;
        lastError = error; // changed (or created) meanwhile: read again
      }
    }
    throw lastError as PreconditionFailed;
  }

  async #current(gameId: string, userId: string, signal?: AbortSignal): Promise<Rating | null> {
    const answer = await this.#request("GET", "/ratings", {
      params: { gameId, userId, limit: 1 },
      signal,
    });
    const page = (await answer.json()) as { items: WireRating[] };
    return page.items[0] === undefined ? null : ratingFromWire(page.items[0]);
  }

  async #user(userId: string | undefined): Promise<string> {
    if (userId !== undefined) return userId;
    const sub = tokenClaims(await this.#stream.currentToken()).sub;
    if (typeof sub !== "string") throw new TypeError("the token has no sub claim; pass userId");
    return sub;
  }

  /** Delete a rating (only if still at `version`, when given: else {@link PreconditionFailed}). */
  async delete(ratingId: string, options: CallOptions & { version?: number } = {}): Promise<void> {
    const headers: Record<string, string> =
      options.version === undefined ? {} : { "If-Match": `"${options.version}"` };
    await this.#request("DELETE", `/ratings/${encodeURIComponent(ratingId)}`, {
      auth: true,
      headers,
      signal: options.signal,
    });
  }

  /** Every rating of a game and/or user, newest first, fetched page after page. */
  async *listRatings(
    options: CallOptions & { gameId?: string; userId?: string; pageSize?: number } = {},
  ): AsyncGenerator<Rating, void, undefined> {
    const params: Record<string, string | number | undefined> = {
      limit: options.pageSize ?? 100,
      gameId: options.gameId,
      userId: options.userId,
    };
    for (;;) {
      const answer = await this.#request("GET", "/ratings", { params, signal: options.signal });
      const page = (await answer.json()) as { items: WireRating[]; nextCursor?: string | null };
      for (const item of page.items) yield ratingFromWire(item);
      if (!page.nextCursor) return;
      params.cursor = page.nextCursor;
    }
  }

  /**
   * A topic's retained history after offset `since` (what a resume would replay);
   * {@link ApiError} 410 when history no longer reaches it.
   */
  async events(
    topic: string,
    options: CallOptions & { since?: number; limit?: number } = {},
  ): Promise<HistoryPage> {
    const answer = await this.#request("GET", `/topics/${encodeURIComponent(topic)}/events`, {
      auth: true,
      params: { since: options.since ?? 0, limit: options.limit ?? 100 },
      signal: options.signal,
    });
    const page = (await answer.json()) as {
      topic: string;
      epoch: string;
      head: number;
      events: WireUpdate[];
    };
    return {
      topic: page.topic,
      epoch: page.epoch,
      head: page.head,
      updates: page.events.map((frame) => updateFromWire(frame, page.epoch)),
    };
  }

  /**
   * The durable consumer `name` on `topic` (created if new): the server keeps the position and
   * every member of the same name and token shares the work. Items come in batches over REST
   * (long-polling); the acks given travel together, before each fetch and when the loop ends.
   *
   *     for await (const item of client.consume("rating.global", "moderation")) {
   *       await moderate(item.update.rating);
   *       item.ack();
   *     }
   */
  async *consume(
    topic: string,
    name: string,
    options: ConsumeOptions = {},
  ): AsyncGenerator<ConsumedUpdate, void, undefined> {
    const acks: number[] = [];
    const body: Record<string, unknown> = {
      topic,
      max: options.batch ?? 10,
      waitMs: options.waitMs ?? 10_000,
    };
    if (options.since !== undefined) body.since = options.since;
    if (options.ackWaitMs !== undefined) body.ackWaitMs = options.ackWaitMs;
    if (options.maxInFlight !== undefined) body.maxInFlight = options.maxInFlight;
    const callOptions: CallOptions = options.signal ? { signal: options.signal } : {};
    let last: ConsumedUpdate | null = null;
    try {
      for (;;) {
        if (acks.length > 0) {
          await this.ackConsumer(topic, name, acks.splice(0), callOptions);
        }
        const answer = await this.#request("POST", `/consumers/${encodeURIComponent(name)}/fetch`, {
          auth: true,
          json: body,
          signal: options.signal,
          waitMs: body.waitMs as number,
        });
        const { events } = (await answer.json()) as {
          events: (WireUpdate & { consumer: string; delivery: number })[];
        };
        for (const frame of events) {
          if (options.autoAck && last !== null) last.ack();
          last = new ConsumedUpdate(updateFromWire(frame, null), frame.consumer, frame.delivery, acks);
          yield last;
        }
      }
    } finally {
      // The last item is not auto-acked here: a loop left by a throw looks like a break.
      if (acks.length > 0 && !this.#closing.signal.aborted) {
        await this.ackConsumer(topic, name, acks.splice(0));
      }
    }
  }

  /** Ack `offsets` of the durable consumer `name` in one request (409: never delivered). */
  async ackConsumer(
    topic: string,
    name: string,
    offsets: number[],
    options: CallOptions = {},
  ): Promise<void> {
    const answer = await this.#request("POST", `/consumers/${encodeURIComponent(name)}/ack`, {
      auth: true,
      json: { topic, offsets: [...new Set(offsets)].sort((a, b) => a - b) },
      signal: options.signal,
    });
    await answer.body?.cancel();
  }
}
