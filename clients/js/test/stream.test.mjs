// The stream against real ratewire processes: every offset once and in order across SIGKILL,
// network cuts, token expiry, refused upgrades; several topics over one socket; gaps; aborts.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import {
  AuthenticationError,
  Gap,
  GapError,
  RatewireClient,
  SubscriptionRefused,
  Update,
} from "../dist/index.js";
import { Proxy, Server, take, token } from "./support.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const offsets = (items) => items.map((item) => item.offset);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, index) => from + index);

/** Start an iterator and wait until the server has subscribed it (its first `next()` is pending). */
async function following(client, topic, options = {}) {
  const iterator = client.subscribe(topic, options);
  const first = iterator.next();
  await waitFor(() => client.connections >= 1);
  await sleep(300);
  let pending = first;
  return {
    iterator,
    async take(count, ms) {
      const items = [];
      if (pending !== null && count > 0) {
        const next = await pending;
        pending = null;
        if (!next.done) items.push(next.value);
      }
      items.push(...(await take(iterator, count - items.length, ms)));
      return items;
    },
  };
}

async function waitFor(condition, ms = 20_000) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met in ${ms} ms: ${condition}`);
    await sleep(25);
  }
}

describe("one server, restarted and cut off", () => {
  let server;
  before(async () => {
    server = await Server.start();
  });
  after(() => server.stop());

  test("SIGKILL and restart mid-stream: every offset once and in order", async () => {
    const client = new RatewireClient({ url: server.moduleUrl, token: token("agent"), restUrl: server.baseUrl, maxBackoffMs: 500 });
    let writing = true;
    try {
      const stream = await following(client, "rating.game.kill", { since: 0 });
      let written = 0;
      const writer = (async () => {
        for (let index = 0; writing; index += 1) {
          try {
            await server.rate("kill", `u${index}`, 1 + (index % 5));
            written += 1;
          } catch {
            index -= 1; // the server is down: the same write again
            await sleep(50);
          }
          await sleep(10);
        }
      })();
      for (let round = 0; round < 2; round += 1) {
        await waitFor(() => written >= 15 * (round + 1));
        await server.kill(); // writes in flight may or may not have committed
        await server.start();
        // Killed again only once the client is back: fast writes once reached the next kill
        // while it was still in its backoff, and it reconnected once for two kills.
        await waitFor(() => client.connections >= round + 2);
      }
      await waitFor(() => written >= 45);
      writing = false;
      await writer;
      const head = (await client.events("rating.game.kill", { since: 0, limit: 1 })).head;
      assert.ok(head >= written, `head ${head} < ${written} acknowledged writes`);
      const items = await stream.take(head);
      assert.ok(items.every((item) => item instanceof Update && item.topic === "rating.game.kill"));
      assert.deepEqual(offsets(items), range(1, head));
      assert.ok(client.connections >= 3, `${client.connections} connections`);
    } finally {
      writing = false;
      await client.close(); // a failed assertion must not leave it reconnecting (node waits)
    }
  });

  test("a network cut through a proxy: resumed with nothing lost", async () => {
    const proxy = await Proxy.start(server.wsPort);
    const client = new RatewireClient({
      url: `ws://127.0.0.1:${proxy.port}/`,
      restUrl: server.baseUrl,
      token: token("agent"),
      maxBackoffMs: 300,
    });
    try {
      const stream = await following(client, "rating.game.cut");
      for (const user of ["a", "b", "c"]) await server.rate("cut", user, 4);
      const before = await stream.take(3);
      proxy.cut();
      for (const user of ["d", "e", "f"]) await server.rate("cut", user, 2);
      await sleep(700); // a few refused reconnects
      proxy.restore();
      const afterCut = await stream.take(3);
      assert.deepEqual(offsets([...before, ...afterCut]), [1, 2, 3, 4, 5, 6]);
      assert.deepEqual(afterCut.map((item) => item.rating.userId), ["d", "e", "f"]);
      assert.ok(client.connections >= 2);
    } finally {
      await client.close();
      await proxy.close();
    }
  });

  test("two topics share one socket across a restart", async () => {
    const client = new RatewireClient({ url: server.wsUrl, token: token("pair-1"), maxBackoffMs: 300 });
    try {
      const game = await following(client, "rating.game.two");
      const user = await following(client, "rating.user.pair-1");
      await server.rate("two", "pair-1", 5);
      await server.rate("two", "pair-2", 3);
      await server.rate("other", "pair-1", 1);
      await server.kill();
      await server.start();
      await server.rate("two", "pair-1", 2); // an update of pair-1's rating: on both topics
      const gameItems = await game.take(3);
      const userItems = await user.take(3);
      assert.deepEqual(offsets(gameItems), [1, 2, 3]);
      assert.deepEqual(
        gameItems.map((item) => [item.rating.userId, item.event]),
        [["pair-1", "created"], ["pair-2", "created"], ["pair-1", "updated"]],
      );
      assert.deepEqual(offsets(userItems), [1, 2, 3]);
      assert.deepEqual(userItems.map((item) => item.rating.gameId), ["two", "other", "two"]);
      assert.equal(client.connections, 2, "one socket for both topics, reconnected once");
    } finally {
      await client.close();
    }
  });

  test("a graceful shutdown (1001) is resumed from where it stopped", async () => {
    const client = new RatewireClient({ url: server.wsUrl, token: token("agent"), maxBackoffMs: 300 });
    try {
      const stream = await following(client, "rating.game.graceful");
      await server.rate("graceful", "a", 3);
      await server.terminate();
      await server.start();
      await server.rate("graceful", "b", 3);
      assert.deepEqual(offsets(await stream.take(2)), [1, 2]);
      assert.equal(client.connections, 2);
    } finally {
      await client.close();
    }
  });

  test("abort ends one subscription; close ends every other", async () => {
    const client = new RatewireClient({ url: server.wsUrl, token: token("agent") });
    const controller = new AbortController();
    const aborted = client.subscribe("rating.game.abort", { signal: controller.signal });
    const pending = aborted.next();
    const other = client.subscribe("rating.global");
    const otherPending = other.next();
    await waitFor(() => client.connections === 1);
    controller.abort();
    await assert.rejects(pending, { name: "AbortError" });
    await client.close();
    assert.deepEqual(await otherPending, { done: true, value: undefined });
    await assert.rejects(client.summary("abort"), { name: "AbortError" });
  });

  test("a forbidden topic is refused with a typed error", async () => {
    const client = new RatewireClient({ url: server.wsUrl, token: token("u1") });
    await assert.rejects(take(client.subscribe("rating.user.someone-else"), 1), SubscriptionRefused);
    await client.close();
  });

  test("a filter replays and follows only what it passes; a bad one is refused, typed", async () => {
    for (const [user, score] of [["f1", 1], ["f2", 5], ["f3", 2]]) await server.rate("jsf", user, score);
    const client = new RatewireClient({ url: server.wsUrl, token: token("agent") });
    const filter = "data.score <= 2";
    const iterator = client.subscribe("rating.game.jsf", { since: 0, filter });
    assert.deepEqual(offsets(await take(iterator, 2)), [1, 3]);
    await assert.rejects(client.subscribe("rating.game.jsf", { filter: "true" }).next(), TypeError);
    await server.rate("jsf", "f4", 4);
    await server.rate("jsf", "f5", 1);
    assert.deepEqual(offsets(await take(iterator, 1)), [5]);
    await assert.rejects(
      take(client.subscribe("rating.global", { filter: "data.stars > 1" }), 1),
      (error) => error instanceof SubscriptionRefused && /unknown field data\.stars/.test(error.message),
    );
    await client.close();
  });
});

describe("a consumer too slow for the server", () => {
  let server;
  before(async () => {
    server = await Server.start({ RATEWIRE_LIMITS__SEND_BUFFER_BYTES: "16384" });
  });
  after(() => server.stop());

  test("is cut with 4009 and loses nothing", async () => {
    // One update queued at most: the reader pauses the socket, the server's buffer fills, 4009.
    const client = new RatewireClient({ url: server.moduleUrl, token: token("slow"), maxQueue: 1 });
    try {
      const stream = await following(client, "rating.game.slow", { since: 0 });
      for (let index = 0; index < 150; index += 1) {
        await server.rate("slow", `u${index}`, 3, "x".repeat(1990));
      }
      const items = await stream.take(150, 60_000);
      assert.deepEqual(offsets(items), range(1, 150));
      const metrics = await (await fetch(`${server.baseUrl}/metrics`)).text();
      assert.match(metrics, /ratewire_websocket_closed_total\{code="4009"\}/);
      assert.ok(client.connections >= 2);
    } finally {
      await client.close();
    }
  });
});

describe("tokens", () => {
  let server;
  before(async () => {
    server = await Server.start({ RATEWIRE_JWT__LEEWAY_SECONDS: "0" });
  });
  after(() => server.stop());

  test("a token expiring mid-stream is renewed in place", async () => {
    let issued = 0;
    const client = new RatewireClient({
      url: server.wsUrl,
      tokenProvider: () => {
        issued += 1;
        return token("renewed", { ttl: 3 });
      },
      refreshMarginMs: 1000,
    });
    const stream = await following(client, "rating.game.renew");
    const started = Date.now();
    let written = 0;
    while (Date.now() - started < 7000) {
      written += 1;
      await server.rate("renew", `u${written}`, 3);
      await sleep(500);
    }
    const items = await stream.take(written);
    assert.deepEqual(offsets(items), range(1, written));
    assert.equal(client.connections, 1, "renewed on the same connection");
    assert.ok(issued >= 3, `only ${issued} tokens were issued over 7 s of 3 s tokens`);
    await client.close();
  });

  test("without a provider an expired token ends the stream with AuthenticationError", async () => {
    const client = new RatewireClient({ url: server.wsUrl, token: token("short", { ttl: 2 }) });
    const error = await take(client.subscribe("rating.global"), 1).catch((caught) => caught);
    assert.ok(error instanceof AuthenticationError, String(error));
    assert.equal(error.code, 4002);
    await client.close();
  });

  test("a refused token (4001) is replaced through the provider", async () => {
    const tokens = [token("late", { ttl: -60 }), token("late")];
    const client = new RatewireClient({ url: server.wsUrl, tokenProvider: () => tokens.shift() ?? token("late") });
    const stream = await following(client, "rating.game.late");
    await server.rate("late", "u1", 5);
    assert.deepEqual(offsets(await stream.take(1)), [1]);
    assert.equal(client.connections, 2);
    await client.close();
  });
});

describe("limits and history", () => {
  let server;
  before(async () => {
    server = await Server.start({
      RATEWIRE_LIMITS__WS_CONNECTIONS_PER_IP_PER_SECOND: "1",
      RATEWIRE_HISTORY__MAX_EVENTS_PER_TOPIC: "5",
      RATEWIRE_HISTORY__PRUNE_INTERVAL_SECONDS: "0.2",
    });
  });
  after(() => server.stop());

  test("a 429 at the upgrade is waited out (Retry-After) and retried", async () => {
    // Another connection takes this second's one upgrade (retrying until a second begins).
    let holder;
    for (;;) {
      holder = new WebSocket(`${server.wsUrl}?token=${token("holder")}`);
      const opened = await new Promise((resolve) => {
        holder.once("message", () => resolve(true));
        holder.once("error", () => resolve(false));
      });
      if (opened) break;
      await sleep(200);
    }
    const client = new RatewireClient({ url: server.wsUrl, token: token("agent") });
    try {
      const started = Date.now();
      const stream = client.subscribe("rating.game.busy");
      const first = stream.next();
      await waitFor(() => client.connections === 1);
      assert.equal(client.refusals[0]?.status, 429, JSON.stringify(client.refusals));
      assert.ok(client.refusals[0].retryAfter >= 1);
      assert.ok(Date.now() - started >= 900, "retried before Retry-After");
      await sleep(300);
      await server.rate("busy", "u1", 4);
      assert.equal((await first).value.offset, 1);
    } finally {
      holder.close();
      await client.close();
    }
  });

  test("a gap in history is a Gap item, or a GapError when asked", async () => {
    for (let index = 0; index < 12; index += 1) await server.rate("gap", "g1", 1 + (index % 5));
    const client = new RatewireClient({ url: server.wsUrl, token: token("agent"), restUrl: server.baseUrl });
    for (let tries = 0; ; tries += 1) {
      const status = await client.events("rating.game.gap", { since: 2 }).then(() => 200, (error) => error.status);
      if (status === 410) break;
      assert.ok(tries < 100, "history was never pruned");
      await sleep(100);
    }
    await sleep(1100); // the per-second upgrade limit of this server
    const stream = await following(client, "rating.game.gap", { since: 2 });
    const [gap] = await stream.take(1);
    assert.ok(gap instanceof Gap);
    assert.deepEqual([gap.topic, gap.after, gap.offset], ["rating.game.gap", 2, 12]);
    await server.rate("gap", "someone-else", 5);
    const [next] = await stream.take(1);
    assert.equal(next.offset, 13);
    await assert.rejects(take(client.subscribe("rating.game.gap", { since: 1, onGap: "throw" }), 1), GapError);
    await client.close();
  });
});
