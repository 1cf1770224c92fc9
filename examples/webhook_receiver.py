"""A webhook receiver: verify each POST's signature, handle every event exactly once (by its
``webhook-id``), print it.

    ratewire webhook add http://127.0.0.1:9000/ --topic rating.global   # prints the secret
    python examples/webhook_receiver.py --port 9000 --secret whsec_...

A webhook URL must be https to a public address unless the server allows otherwise: for
this local trial start the server with both settings on (never in production):

    RATEWIRE_WEBHOOKS__ALLOW_INSECURE_HTTP=true RATEWIRE_WEBHOOKS__ALLOW_PRIVATE_NETWORKS=true \
        make run

ratewire delivers at least once (a retry after a lost answer, a replay, a restart repeat
an event with the same webhook-id); keeping the ids seen makes it exactly once here. The ids
are kept in memory, and in ``--seen FILE`` (one per line) to survive a restart of this
receiver. Answers: 204 handled (or seen before), 400 bad signature.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Lock

from ratewire.client.webhooks import WebhookVerificationError, verify


class SeenIds:
    """webhook-ids handled so far (and appended to a file, if given)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._ids = set(path.read_text().split()) if path and path.exists() else set()
        self._lock = Lock()

    def add_if_new(self, message_id: str) -> bool:
        with self._lock:
            if message_id in self._ids:
                return False
            self._ids.add(message_id)
            if self._path is not None:
                with self._path.open("a") as kept:
                    kept.write(message_id + "\n")
            return True


def handler(secret: str, seen: SeenIds) -> type[BaseHTTPRequestHandler]:
    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            try:
                update = verify(dict(self.headers.items()), body, secret)
            except WebhookVerificationError as exc:
                print(f"refused: {exc}", file=sys.stderr, flush=True)
                self.send_response(400)
                self.end_headers()
                return
            message_id = self.headers["webhook-id"]
            if seen.add_if_new(message_id):
                print(json.dumps(update), flush=True)
            else:
                print(f"duplicate {message_id}: already handled", file=sys.stderr, flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Receiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", required=True, help="the whsec_... secret of the webhook")
    parser.add_argument("--seen", type=Path, default=None, help="file keeping the ids handled")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), handler(args.secret, SeenIds(args.seen)))
    print(f"listening on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
