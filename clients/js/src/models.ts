/**
 * What the client hands out: typed ratings, summaries, updates, snapshots and gap markers.
 * Field names are the wire's camelCase names (docs/protocol.md); times are `Date`s.
 */

/** `created`, `updated` or `deleted`. */
export type EventKind = "created" | "updated" | "deleted";

/** The JSON object of a rating, as the server sends it. */
export interface WireRating {
  id: string;
  gameId: string;
  userId: string;
  score: number;
  comment?: string | null;
  timestamp?: string;
  createdAt?: string;
  updatedAt?: string;
  version?: number;
  [key: string]: unknown;
}

/** One user's score (1 to 5) for one game. */
export interface Rating {
  readonly id: string;
  readonly gameId: string;
  readonly userId: string;
  readonly score: number;
  readonly comment: string | null;
  readonly createdAt: Date;
  readonly updatedAt: Date;
  /** Grows by one on every change; `If-Match` on writes names it. */
  readonly version: number;
}

/** A game's ratings at a glance. `histogram[s]` counts the ratings with score `s`. */
export interface Summary {
  readonly gameId: string;
  readonly count: number;
  readonly mean: number | null;
  readonly bayesianMean: number | null;
  readonly histogram: Readonly<Record<1 | 2 | 3 | 4 | 5, number>>;
}

/**
 * One change of a rating, as published on `topic` at `offset`. Offsets of a topic are
 * gapless: the topic's next update has `offset + 1`. For `deleted`, `rating` is the rating as
 * it was. `epoch` is the topic's history epoch when the server told it (not for the updates of
 * `rating.game.*`, which span many topics).
 */
export class Update {
  readonly kind = "update" as const;
  constructor(
    readonly topic: string,
    readonly offset: number,
    readonly epoch: string | null,
    readonly event: EventKind,
    readonly rating: Rating,
    /** The rating as the server sent it. */
    readonly data: WireRating,
  ) {}
}

/**
 * A game's summary as of `offset` of its topic (`subscribe(topic, {snapshot: true})`): the
 * updates that follow start after it.
 */
export class Snapshot {
  readonly kind = "snapshot" as const;
  constructor(
    readonly topic: string,
    readonly offset: number,
    readonly summary: Summary,
  ) {}
}

/**
 * The server could not replay what this subscription missed: its history no longer reaches
 * `after` (or the epoch changed, after a restore). Updates go on from `offset`; re-read
 * whatever state you keep (`summary()`, `listRatings()`).
 */
export class Gap {
  readonly kind = "gap" as const;
  constructor(
    readonly topic: string,
    readonly after: number,
    readonly offset: number,
  ) {}
}

/** What a subscription yields. */
export type StreamItem = Update | Snapshot | Gap;

/**
 * The state of a summary stream ({@link RatewireClient.summaries}) as of `offset`: a game's
 * `summary` on `summary.game.{id}` (`offset`: the `rating.game.{id}` offset it includes), or
 * the `games` of `summary.games.top`, best first (`offset`: the `rating.global` offset it
 * includes at least). Each one replaces the one before.
 */
export class SummaryState {
  readonly kind = "summary" as const;
  constructor(
    readonly topic: string,
    readonly offset: number,
    /** The game's summary (`summary.game.{id}`; null on the top list). */
    readonly summary: Summary | null,
    /** The top list (`summary.games.top`; empty on a game's stream). */
    readonly games: Summary[],
    /** `data` as the server sent it. */
    readonly data: Record<string, unknown>,
  ) {}

  /** A `summary` frame as the server sends it. */
  static fromWire(frame: Record<string, unknown>): SummaryState {
    const data = frame.data as Record<string, unknown>;
    const topic = String(frame.topic);
    const offset = Number(frame.offset);
    if (Array.isArray(data.items)) {
      const games = (data.items as WireSummary[]).map(summaryFromWire);
      return new SummaryState(topic, offset, null, games, data);
    }
    return new SummaryState(topic, offset, summaryFromWire(data as unknown as WireSummary), [], data);
  }
}

/** `GET /topics/{topic}/events`: retained events after an offset. */
export interface HistoryPage {
  readonly topic: string;
  readonly epoch: string;
  readonly head: number;
  readonly updates: Update[];
}

/** A rating from its wire form. */
export function ratingFromWire(fields: WireRating): Rating {
  const created = fields.createdAt ?? fields.timestamp ?? "";
  const updated = fields.updatedAt ?? fields.timestamp ?? created;
  return {
    id: fields.id,
    gameId: String(fields.gameId),
    userId: String(fields.userId),
    score: fields.score,
    comment: fields.comment ?? null,
    createdAt: new Date(created),
    updatedAt: new Date(updated),
    version: fields.version ?? 1,
  };
}

interface WireSummary {
  gameId: string;
  count: number;
  mean?: number | null;
  bayesianMean?: number | null;
  histogram: Record<string, number>;
}

/** A summary from its wire form. */
export function summaryFromWire(fields: WireSummary): Summary {
  const histogram = { 1: 0, 2: 0, 3: 0, 4: 0, 5: 0 };
  for (const score of [1, 2, 3, 4, 5] as const) {
    histogram[score] = fields.histogram[String(score)] ?? 0;
  }
  return {
    gameId: String(fields.gameId),
    count: fields.count,
    mean: fields.mean ?? null,
    bayesianMean: fields.bayesianMean ?? null,
    histogram,
  };
}

/** A `rating_update` frame (or history event) as the server sends it. */
export interface WireUpdate {
  type: "rating_update";
  topic: string;
  offset: number;
  event: EventKind;
  data: WireRating;
}

/** An update from its wire form. */
export function updateFromWire(frame: WireUpdate, epoch: string | null): Update {
  return new Update(
    frame.topic,
    frame.offset,
    epoch,
    frame.event,
    ratingFromWire(frame.data),
    frame.data,
  );
}
