/** Durable consumers: a position the server keeps, shared by every member of one name. */

import type { Update } from "./models.js";

/** Options of {@link RatewireClient.consume}. */
export interface ConsumeOptions {
  /** Updates per fetch (default 10). */
  batch?: number;
  /** How long a fetch waits for its first update, in ms (default 10,000; a long-poll). */
  waitMs?: number;
  /**
   * Taking the next item acks the one before. The last is not acked when the loop ends (a
   * loop left by a throw looks like a `break`): ack it yourself, or it comes again.
   */
  autoAck?: boolean;
  /** A new consumer starts after this offset (else from now). */
  since?: number;
  /** The consumer's settings at creation (server defaults: 30,000 ms and 100). */
  ackWaitMs?: number;
  maxInFlight?: number;
  signal?: AbortSignal;
}

/**
 * An update handed to this member of `consumer` for the `delivery`-th time (2+: a member
 * before did not ack it in time). Call {@link ack} once handled; acks travel in batches.
 */
export class ConsumedUpdate {
  constructor(
    readonly update: Update,
    readonly consumer: string,
    readonly delivery: number,
    private readonly acks: number[],
  ) {}

  get offset(): number {
    return this.update.offset;
  }

  /** Mark it handled: sent with the next batch of acks (before the next fetch, or at the end). */
  ack(): void {
    this.acks.push(this.update.offset);
  }
}
