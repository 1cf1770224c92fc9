"""A live top-10: follow rating.global and keep the ten best games (by Bayesian mean) in
memory, redrawn at every change, without polling.

    python examples/live_top10.py --url ws://localhost:8081/ --token "$(ratewire token agent)"

Each update names its game; the agent re-reads that one game's summary and re-ranks. If the
server could not replay what the agent missed while away (a Gap), it reloads the ranking.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from ratewire.client import Client, Gap, Summary, Update


def ranking(summaries: dict[str, Summary], size: int = 10) -> list[Summary]:
    rated = [s for s in summaries.values() if s.count and s.bayesian_mean is not None]
    return sorted(rated, key=lambda s: (-(s.bayesian_mean or 0), s.game_id))[:size]


def render(top: list[Summary]) -> str:
    rows = [
        f"{place:>2}. {s.game_id:<20} {s.bayesian_mean:5.2f}  ({s.count} ratings)"
        for place, s in enumerate(top, start=1)
    ]
    return "\n".join(["top 10:", *rows, ""])


async def follow(url: str, token: str, rest_url: str | None, stop_after: int | None) -> None:
    async with Client(url, token, rest_url=rest_url) as client:
        summaries = {s.game_id: s for s in await client.top_games(limit=500)}
        print(render(ranking(summaries)), flush=True)
        seen = 0
        async for item in client.subscribe("rating.global"):
            if isinstance(item, Gap):  # changes we will never see: start from the server's view
                summaries = {s.game_id: s for s in await client.top_games(limit=500)}
            elif isinstance(item, Update):
                game = item.rating.game_id
                summaries[game] = await client.summary(game)
                seen += 1
            print(render(ranking(summaries)), flush=True)
            if stop_after is not None and seen >= stop_after:
                return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://localhost:8081/")
    parser.add_argument("--rest-url", default=None)
    parser.add_argument("--token", required=True)
    parser.add_argument("--updates", type=int, default=None, help="stop after this many")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow(args.url, args.token, args.rest_url, args.updates))


if __name__ == "__main__":
    main()
