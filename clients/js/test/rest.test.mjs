// Every REST helper against a real server, with errors as typed exceptions.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  ApiError,
  BadRequest,
  Conflict,
  Forbidden,
  NotFound,
  PreconditionFailed,
  RateLimited,
  RatewireClient,
  SubscriptionRefused,
  SummaryState,
  Unauthorized,
  restUrlFor,
} from "../dist/index.js";
import { Server, token } from "./support.mjs";

let server;
before(async () => {
  server = await Server.start();
});
after(() => server.stop());

const clientAs = (user, extra = {}) =>
  new RatewireClient({ url: server.wsUrl, token: token(user), ...extra });

test("the REST URL follows the WebSocket URL", () => {
  assert.equal(restUrlFor("ws://h:8080/ws"), "http://h:8080");
  assert.equal(restUrlFor("wss://h:9443/ws/"), "https://h:9443");
  assert.equal(restUrlFor("ws://h:8081/"), "http://h:8080");
  assert.equal(clientAs("x").restUrl, server.baseUrl);
});

test("create, get, conflict, delete at a version", async () => {
  const client = clientAs("7");
  const created = await client.create("rest-a", 3, { comment: "fine" });
  assert.deepEqual(
    [created.userId, created.gameId, created.score, created.comment, created.version],
    ["7", "rest-a", 3, "fine", 1],
  );
  assert.ok(created.createdAt instanceof Date && !Number.isNaN(created.createdAt.getTime()));
  assert.deepEqual(await client.get(created.id), created);
  const conflict = await client.create("rest-a", 4).catch((error) => error);
  assert.ok(conflict instanceof Conflict && conflict instanceof ApiError);
  assert.equal(conflict.status, 409);
  assert.match(conflict.message, /POST \/ratings: 409/);
  const stale = await client.delete(created.id, { version: 7 }).catch((error) => error);
  assert.ok(stale instanceof PreconditionFailed);
  assert.equal(stale.status, 412);
  await client.delete(created.id, { version: 1 });
  await assert.rejects(client.get(created.id), NotFound);
  await client.close();
});

test("rate keeps the comment, names the version it read, and retries on 412", async () => {
  const client = clientAs("8");
  const first = await client.rate("rest-b", 2, { comment: "meh" });
  assert.equal(first.version, 1);
  const kept = await client.rate("rest-b", 4);
  assert.deepEqual([kept.score, kept.comment, kept.version], [4, "meh", 2]);
  // Another writer changes the rating between rate()'s read and its write: the first PUT is
  // refused with 412, rate() reads again and writes on top of the newer version.
  let puts = 0;
  const racing = clientAs("8", {
    fetch: async (url, init) => {
      if (init.method === "PUT" && puts++ === 0) await server.rate("rest-b", "8", 1);
      return fetch(url, init);
    },
  });
  const replaced = await racing.rate("rest-b", 5, { comment: null });
  assert.deepEqual([replaced.score, replaced.comment, replaced.version], [5, null, 4]);
  assert.equal(puts, 2);
  await client.close();
  await racing.close();
});

test("listRatings iterates over every page, newest first", async () => {
  const client = clientAs("lister");
  for (const user of ["l1", "l2", "l3", "l4", "l5"]) await server.rate("rest-list", user, 3);
  const seen = [];
  for await (const rating of client.listRatings({ gameId: "rest-list", pageSize: 2 })) {
    seen.push(rating.userId);
  }
  assert.deepEqual(seen, ["l5", "l4", "l3", "l2", "l1"]);
  await client.close();
});

test("summary, topGames and events", async () => {
  const client = clientAs("viewer");
  await server.rate("rest-top", "t1", 5);
  await server.rate("rest-top", "t2", 4);
  const summary = await client.summary("rest-top");
  assert.deepEqual([summary.gameId, summary.count, summary.mean], ["rest-top", 2, 4.5]);
  assert.deepEqual(summary.histogram, { 1: 0, 2: 0, 3: 0, 4: 1, 5: 1 });
  const top = await client.topGames({ limit: 50 });
  assert.ok(top.some((game) => game.gameId === "rest-top" && game.count === 2));
  const page = await client.events("rating.game.rest-top", { since: 1 });
  assert.equal(page.head, 2);
  assert.deepEqual(
    page.updates.map((update) => [update.offset, update.event, update.rating.userId, update.epoch]),
    [[2, "created", "t2", page.epoch]],
  );
  await client.close();
});

test("errors are typed: 401, 403, 404, 422", async () => {
  const client = clientAs("9");
  await assert.rejects(client.get("r_nothing"), NotFound);
  const invalid = await client.create("rest-c", 9).catch((error) => error);
  assert.ok(invalid instanceof BadRequest);
  assert.equal(invalid.status, 422);
  assert.match(invalid.detail + JSON.stringify(invalid.body), /score/);
  await assert.rejects(client.create("rest-c", 3, { userId: "someone-else" }), Forbidden);
  const expired = new RatewireClient({ url: server.wsUrl, token: token("9", { ttl: -60 }) });
  await assert.rejects(expired.create("rest-c", 3), Unauthorized);
  let issued = 0;
  const renewing = new RatewireClient({
    url: server.wsUrl,
    tokenProvider: () => token("9", { ttl: issued++ === 0 ? -60 : 600 }),
  });
  assert.equal((await renewing.create("rest-c", 3)).userId, "9"); // 401, renewed, retried once
  assert.equal(issued, 2);
  await Promise.all([client.close(), expired.close(), renewing.close()]);
});

test("a call takes an AbortSignal", async () => {
  const client = clientAs("aborter");
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(client.summary("rest-a", { signal: controller.signal }), { name: "AbortError" });
  await client.close();
});

test("a durable consumer is an async iterator; acks go in batches and never come back", async () => {
  const worker = clientAs("worker");
  const writer = clientAs("admin", { token: token("admin", { scope: "ratings:admin" }) });
  for (const user of ["c1", "c2", "c3"]) await writer.create("consumed", 4, { userId: user });
  const seen = [];
  for await (const item of worker.consume("rating.game.consumed", "q", { since: 0, batch: 2, waitMs: 5000 })) {
    assert.equal(item.consumer, "q");
    assert.equal(item.delivery, 1);
    seen.push([item.offset, item.update.rating.userId]);
    item.ack();
    if (seen.length === 3) break; // the last ack goes as the loop ends
  }
  assert.deepEqual(seen, [[1, "c1"], [2, "c2"], [3, "c3"]]);
  await writer.create("consumed", 5, { userId: "c4" });
  for await (const item of worker.consume("rating.game.consumed", "q", { autoAck: true, waitMs: 5000 })) {
    assert.equal(item.offset, 4); // 1..3 were acked: only the new one comes
    item.ack();
    break;
  }
  const refused = await worker.ackConsumer("rating.game.consumed", "q", [99]).catch((error) => error);
  assert.ok(refused instanceof Conflict, String(refused));
  await Promise.all([worker.close(), writer.close()]);
});

test("429 is RateLimited with its Retry-After", async () => {
  const limited = await Server.start({ RATEWIRE_LIMITS__REST_REQUESTS_PER_CLIENT_PER_MINUTE: "2" });
  const client = new RatewireClient({ url: limited.wsUrl, token: token("hasty") });
  try {
    const errors = [];
    for (let index = 0; index < 4; index += 1) {
      await client.create(`hasty-${index}`, 3).catch((error) => errors.push(error));
    }
    assert.ok(errors.length >= 1);
    assert.ok(errors.every((error) => error instanceof RateLimited), String(errors));
    assert.ok(errors[0].retryAfter > 0);
  } finally {
    await client.close();
    await limited.stop();
  }
});

test("summaries: a game's state at once, then its changes; the top list; bad options", async () => {
  const client = clientAs("sum");
  const states = client.summaries("summary.game.js-sum", { intervalMs: 50 });
  const first = (await states.next()).value;
  assert.ok(first instanceof SummaryState);
  assert.deepEqual([first.offset, first.summary.count, first.games], [0, 0, []]);
  await client.rate("js-sum", 5);
  const second = (await states.next()).value;
  assert.deepEqual([second.offset, second.summary.count], [1, 1]);
  assert.deepEqual(second.data, await (await fetch(`${server.baseUrl}/games/js-sum/summary`)).json());
  await states.return();
  const top = client.summaries("summary.games.top", { intervalMs: 50, limit: 1 });
  const ranked = (await top.next()).value;
  const rest = await (await fetch(`${server.baseUrl}/games/top?limit=1`)).json();
  assert.deepEqual(ranked.data, rest);
  assert.equal(ranked.summary, null);
  await top.return();
  await assert.rejects(client.summaries("summary.game.x", { intervalMs: 10 }).next(), RangeError);
  const refused = client.summaries("summary.game.x", { limit: 3 });
  await assert.rejects(refused.next(), SubscriptionRefused);
  await client.close();
});
