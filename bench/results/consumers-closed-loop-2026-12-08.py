"""wrk POSTs against a ratewire server with 4 members of a durable consumer on rating.global acking every 100 ms."""
import asyncio, json, os, sys, threading, time, secrets, subprocess
sys.path.insert(0, "/work/main")
from bench.servers import start_ratewire, token
from bench.rest import wrk
from bench.fanout.measure import cpu_seconds
import websockets

target = start_ratewire("sqlite", None)
base = target.post_url.removesuffix("/ratings")
stats = {"got": 0, "acked": 0}
stop = threading.Event()

async def member(i):
    tok = token("agent", None)
    async with websockets.connect(target.ws_url + f"?token={tok}", max_size=None) as ws:
        await ws.recv()
        await ws.send(json.dumps({"action": "subscribe", "topic": "rating.global", "consumer": "w"}))
        pending = []
        last = time.monotonic()
        while not stop.is_set():
            try:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 0.1))
                if msg.get("type") == "rating_update":
                    pending.append(msg["offset"]); stats["got"] += 1
            except asyncio.TimeoutError:
                pass
            if pending and time.monotonic() - last > 0.1:
                await ws.send(json.dumps({"action": "ack", "topic": "rating.global", "consumer": "w", "offsets": pending}))
                stats["acked"] += len(pending); pending = []; last = time.monotonic()

def run_members():
    async def main():
        await asyncio.gather(*(member(i) for i in range(4)))
    asyncio.run(main())

members = int(sys.argv[1]) if len(sys.argv) > 1 else 1
th = None
if members:
    th = threading.Thread(target=run_members, daemon=True); th.start(); time.sleep(2)
writer = token("bench-writer", "ratings:write:any")
run = secrets.token_hex(3)
try:
    wrk(base, "post_ratings.lua", [f"w{run}", writer, "50"], 2, 4)
    pids = target.pids(); c0 = cpu_seconds(pids)
    raw = wrk(base, "post_ratings.lua", [run, writer, "50", "hot"], 10, 16)
    c1 = cpu_seconds(pids)
    n = raw["requests"]
    print(f"members={'4' if members else '0'} POST/s {n/ (raw['duration_us']/1e6):.0f} p50 {raw['p50_us']/1000:.1f} ms cpu ms/POST {1000*(c1-c0)/n:.3f} got {stats['got']} acked {stats['acked']}")
finally:
    stop.set(); time.sleep(0.3)
    target.stop()
