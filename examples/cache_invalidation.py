"""A cache that is never stale for long: keep game summaries in memory, read through on a
miss, and drop an entry the moment its game changes (rating.game.*), instead of expiring
entries on a timer.

    python examples/cache_invalidation.py --token "$(ratewire token cache)"

Reads of an unchanged game never reach the server; the first read after a change does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from ratewire.client import Client, Gap, Summary, Update


class SummaryCache:
    """Game summaries read through the client, invalidated by the stream."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.entries: dict[str, Summary] = {}
        self.hits = self.misses = 0

    async def get(self, game_id: str) -> Summary:
        if game_id in self.entries:
            self.hits += 1
        else:
            self.misses += 1
            self.entries[game_id] = await self.client.summary(game_id)
        return self.entries[game_id]

    async def invalidate_forever(self, stop_after: int | None = None) -> None:
        changes = 0
        async for item in self.client.subscribe("rating.game.*"):
            if isinstance(item, Gap):
                self.entries.clear()  # we missed changes: nothing cached can be trusted
            elif isinstance(item, Update):
                game = item.rating.game_id
                self.entries.pop(game, None)
                fresh = await self.get(game)  # re-read now, so the next read is a hit
                print(f"invalidated {game}: {fresh.count} ratings, mean {fresh.mean}", flush=True)
                changes += 1
                if stop_after is not None and changes >= stop_after:
                    return


async def run(url: str, token: str, rest_url: str | None, stop_after: int | None) -> None:
    async with Client(url, token, rest_url=rest_url) as client:
        cache = SummaryCache(client)
        print("watching", flush=True)
        await cache.invalidate_forever(stop_after)
        print(f"hits {cache.hits}, misses {cache.misses}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="ws://localhost:8081/")
    parser.add_argument("--rest-url", default=None)
    parser.add_argument("--token", required=True)
    parser.add_argument("--updates", type=int, default=None, help="stop after this many")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.url, args.token, args.rest_url, args.updates))


if __name__ == "__main__":
    main()
