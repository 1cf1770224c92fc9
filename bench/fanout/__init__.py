"""Fan-out benchmark: N subscribers of one game topic, a publisher writing R ratings/s over
REST, each rating carrying its send time. Reports deliveries/s, losses, send-to-receive
latency and connection rate, for ratewire and, in the same run, for the Node server modelled
on the original guide (bench/peers/guide_server.js).

    python -m bench.fanout --subs 1000 --rate 50 --seconds 10
    ratewire bench fanout --subs 2000 --rate 0 --seconds 10      # 0 = as fast as they go
    python -m bench.fanout --target cluster --procs 3            # cluster mode, PostgreSQL + Redis
    python -m bench.fanout --alternate 5                         # median ratios to the guide
    python -m bench.fanout --alternate 5 --procs 1               # the agent fleet (below)
    python -m bench.fanout --target ratewire,floor --rate 0      # beside the bare picows floor
    python -m bench.fanout --target ratewire-3w --subs 50000 --rate 1 --seconds 5 --procs 6
    python -m bench.fanout --summary --rate 200                  # summary.game.{id} vs plain

With ``--procs 1`` one process holds every subscription and makes the writes too, as one
agent process following 1,000 topics does (``--publisher separate`` writes from this process
instead). Every run reports POST latency, the server's and the subscribers' CPU, and the
server's stage budget; ``--py-spy DIR`` profiles the server while it is measured.

``--summary`` runs each target twice (ratewire targets only): the subscribers follow the game's
every update, then its ``summary.game.{id}`` at ``--interval-ms`` (default 1,000); it prints the
server's CPU per write of both loads and their ratio, and how many summary subscribers ended
without the last write's state (must be 0: the trailing edge is never dropped).

Cluster targets (PostgreSQL at RATEWIRE_BENCH_POSTGRES, Redis at RATEWIRE_BENCH_REDIS, NATS with
JetStream at RATEWIRE_BENCH_NATS): pg-local (one instance, local broker), pg-redis (one instance,
Redis broker), cluster-3 (three instances, subscribers spread over them, writes through the
first), workers-2 (`--workers 2`), and pg-nats and cluster-3-nats on the NATS broker
(``--target brokers`` runs the four broker targets in one run).

Subscribers are spread over worker processes (picows clients: the load generator shares
this 2-core machine with the server, so it must be cheap); each worker keeps a latency
histogram (10 us buckets) and per-connection offset checks, and the parent merges them.

The package, one job a module: ``subscribers`` (the worker processes and their tally),
``publisher`` (the timed writes), ``targets`` (the servers by name, and the presets),
``measure`` (one run against a started target), ``budget`` (the server's stage budget from
/metrics), ``report`` (the tables and the JSON file), ``runs`` (every target once, or in
alternating rounds against the guide's server); ``__main__`` is the command line.
"""
