"""Durable-consumer benchmark: M members of one consumer on ``rating.global`` share the events
of R writes/s made over REST against a ratewire server the run starts. Reports the
delivered-to-acked throughput (distinct offsets acked per second), latency from each write's
send time to its first delivery (the method bench.fanout uses: the send time rides in the
rating's comment, so the commit is inside it), each member's share of the work, and, after
member 0 is SIGKILLed mid-stream, how long its unacked events took to reach another member.
Every offset is counted: none may be left unacked, none delivered again after its ack.

    python -m bench.consumers                               # 4 members, 500 writes/s, 20 s
    python -m bench.consumers --runs 3 --seconds 30         # the median of three runs
    python -m bench.consumers --backend postgresql          # RATEWIRE_BENCH_POSTGRES
    python -m bench.consumers --kill-at 0                   # no member is killed

Members are processes of their own (a kill is a real SIGKILL, the kernel closes the socket)
holding one picows WebSocket each, not ``ratewire.client``'s consumer iterator: that one
long-polls ``POST /consumers/{name}/fetch``, which adds a request per batch to the latency
and to the load generator's CPU on a 2-core machine shared with the server. Members ack every
``--ack-every-ms`` (100: ten frames a second, under the default
``limits.ws_messages_per_client_per_second`` of 20, which the run leaves as it is).

The package, one job a module: ``members`` (the member process and its ledger file),
``ledger`` (the ledgers counted offset by offset), ``run`` (one measured run), ``report`` (the
table, the median over runs and the JSON file); ``__main__`` is the command line.
"""
