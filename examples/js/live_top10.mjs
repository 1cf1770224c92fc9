// A live top-10 in Node: follow rating.global and keep the ten best games (by Bayesian mean)
// in memory, redrawn at every change, without polling.
//
//   npm install            # ratewire-client (from ../../clients/js) and ws
//   node live_top10.mjs --url ws://localhost:8081/ --token "$(ratewire token agent)"
//
// Each update names its game; the agent re-reads that game's summary and re-ranks. If the
// server could not replay what the agent missed while away (a Gap), it reloads the ranking.
import { parseArgs } from "node:util";
import { Gap, RatewireClient, Update } from "ratewire-client";

const { values: options } = parseArgs({
  options: {
    url: { type: "string", default: "ws://localhost:8081/" },
    "rest-url": { type: "string" },
    token: { type: "string" },
    updates: { type: "string" },
  },
});
if (!options.token) {
  console.error("usage: node live_top10.mjs --token JWT [--url WS_URL] [--rest-url URL] [--updates N]");
  process.exit(2);
}
const stopAfter = options.updates === undefined ? Infinity : Number(options.updates);

function ranking(summaries, size = 10) {
  return [...summaries.values()]
    .filter((summary) => summary.count > 0 && summary.bayesianMean !== null)
    .sort((a, b) => b.bayesianMean - a.bayesianMean || a.gameId.localeCompare(b.gameId))
    .slice(0, size);
}

function render(top) {
  const rows = top.map(
    (summary, index) =>
      `${String(index + 1).padStart(2)}. ${summary.gameId.padEnd(20)} ${summary.bayesianMean.toFixed(2).padStart(5)}  (${summary.count} ratings)`,
  );
  return ["top 10:", ...rows, ""].join("\n");
}

const client = new RatewireClient({
  url: options.url,
  ...(options["rest-url"] ? { restUrl: options["rest-url"] } : {}),
  token: options.token,
});
const stop = new AbortController();
process.once("SIGINT", () => stop.abort());

const load = async () =>
  new Map((await client.topGames({ limit: 500 })).map((summary) => [summary.gameId, summary]));

try {
  let summaries = await load();
  console.log(render(ranking(summaries)));
  let seen = 0;
  for await (const item of client.subscribe("rating.global", { signal: stop.signal })) {
    if (item instanceof Gap) {
      summaries = await load(); // changes we will never see: start from the server's view
    } else if (item instanceof Update) {
      summaries.set(item.rating.gameId, await client.summary(item.rating.gameId));
      seen += 1;
    }
    console.log(render(ranking(summaries)));
    if (seen >= stopAfter) break;
  }
} catch (error) {
  if (!stop.signal.aborted) throw error;
} finally {
  await client.close();
}
