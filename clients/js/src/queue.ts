/** A bounded first-in first-out queue between the connection's reader and one iterator. */

/** Returned by {@link BoundedQueue.get} once the queue is closed and empty. */
export const CLOSED: unique symbol = Symbol("closed");

/** The reason an aborted signal gives, as an `Error` (the DOM default is an `AbortError`). */
export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("The operation was aborted.", "AbortError");
}

/**
 * `put` waits while the queue holds `capacity` items, so a consumer that falls behind stops
 * the producer instead of growing memory; `get` waits for an item, or ends with
 * {@link CLOSED} once the queue is closed.
 */
export class BoundedQueue<T> {
  #items: T[] = [];
  #takers: Array<(item: T | typeof CLOSED) => void> = [];
  #givers: Array<() => void> = [];
  #closed = false;

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.#items.length;
  }

  /** Add an item; resolves once there is room (at once, mostly). */
  async put(item: T): Promise<void> {
    if (this.#closed) return;
    const taker = this.#takers.shift();
    if (taker !== undefined) {
      taker(item);
      return;
    }
    while (this.#items.length >= this.capacity && !this.#closed) {
      await new Promise<void>((resolve) => this.#givers.push(resolve));
    }
    if (!this.#closed) this.#items.push(item);
  }

  /** Add an item now, room or not (errors that end an iterator must not wait). */
  force(item: T): void {
    const taker = this.#takers.shift();
    if (taker !== undefined) taker(item);
    else this.#items.push(item);
  }

  /** The next item, waiting for one; {@link CLOSED} once closed; rejects when `signal` aborts. */
  get(signal?: AbortSignal): Promise<T | typeof CLOSED> {
    if (this.#items.length > 0) {
      const item = this.#items.shift() as T;
      this.#givers.shift()?.();
      return Promise.resolve(item);
    }
    if (this.#closed) return Promise.resolve(CLOSED);
    if (signal?.aborted) return Promise.reject(abortReason(signal));
    return new Promise<T | typeof CLOSED>((resolve, reject) => {
      const taker = (item: T | typeof CLOSED): void => {
        signal?.removeEventListener("abort", onAbort);
        resolve(item);
      };
      const onAbort = (): void => {
        this.#takers = this.#takers.filter((waiting) => waiting !== taker);
        reject(abortReason(signal as AbortSignal));
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.#takers.push(taker);
    });
  }

  /** End the queue: waiting and later `get`s return {@link CLOSED}; waiting `put`s return. */
  close(): void {
    this.#closed = true;
    this.#items = [];
    for (const taker of this.#takers.splice(0)) taker(CLOSED);
    for (const giver of this.#givers.splice(0)) giver();
  }
}

/** Resolves after `ms`, or rejects at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal as AbortSignal));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
