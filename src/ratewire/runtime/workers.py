"""``ratewire serve --workers N``: N server processes on one host sharing both ports.

Each worker is a full ``ratewire serve`` bound with SO_REUSEPORT, so the kernel spreads new
connections over them; they share the store and the broker exactly as instances on separate
hosts do, so a write on one reaches subscribers on every other. This process only starts
them, forwards SIGTERM/SIGINT and SIGHUP (reload), and restarts a worker that died (with
backoff). It also gives them a shared directory for prometheus-client's multi-process
mode, so a scrape of any worker answers for all of them (see ratewire.observability.metrics),
and one for their commit notices, so a commit in one worker reaches the subscribers of the
others at once (see ratewire.broker.siblings).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence

from ratewire.broker.siblings import NOTIFY_DIR_ENV, WORKER_INDEX_ENV, notices_directory
from ratewire.config import Settings
from ratewire.observability.metrics import MULTIPROC_ENV, forget_worker
from ratewire.storage import open_store

log = logging.getLogger("ratewire.workers")
RESTART_BACKOFF_MAX = 10.0


async def prepare_storage(settings: Settings) -> None:
    """Create the schema (and the epoch) once, before workers race to do it."""
    if settings.storage.backend == "none":
        return
    store = open_store(settings.storage)
    await store.start()
    await store.close()


async def supervise(count: int, serve_args: Sequence[str]) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT; returns the exit status."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    processes: dict[int, asyncio.subprocess.Process] = {}

    def reload_workers() -> None:
        # SIGHUP (ratewire reload): every worker re-reads its certificate and keys.
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload_workers)
    metrics_dir = tempfile.mkdtemp(prefix="ratewire-metrics-")
    notices_dir = notices_directory()
    env = {
        **os.environ,
        "RATEWIRE_SERVER__WORKERS": "1",
        MULTIPROC_ENV: metrics_dir,
        NOTIFY_DIR_ENV: notices_dir,
    }
    command = [sys.executable, "-m", "ratewire", "serve", *serve_args, "--reuse-port"]

    async def keep_running(index: int) -> None:
        backoff = 0.5
        while not stopping.is_set():
            started = loop.time()
            process = await asyncio.create_subprocess_exec(
                *command, env={**env, WORKER_INDEX_ENV: str(index)}
            )
            processes[index] = process
            log.info("worker %d started (pid %d)", index, process.pid)
            code = await process.wait()
            forget_worker(process.pid, metrics_dir)
            if stopping.is_set():
                return
            backoff = 0.5 if loop.time() - started > 30 else min(backoff * 2, RESTART_BACKOFF_MAX)
            log.error("worker %d exited with %d; restarting in %.1f s", index, code, backoff)
            await asyncio.sleep(backoff)

    keepers = [asyncio.create_task(keep_running(i)) for i in range(count)]
    log.info("running %d workers", count)
    await stopping.wait()
    log.info("stopping %d workers", count)
    for process in processes.values():
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    codes = [await process.wait() for process in processes.values()]
    for keeper in keepers:
        keeper.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    shutil.rmtree(notices_dir, ignore_errors=True)
    return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1
