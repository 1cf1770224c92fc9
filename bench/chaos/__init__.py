"""A fault-injection soak of a ratewire cluster, with a checker written apart from the server.

``python -m bench.chaos --seconds 60 --seed 7`` starts a topology from nothing (its own
PostgreSQL database, its own broker: a ``redis-server`` with its append-only file, or with
``--broker nats`` a ``nats-server`` with JetStream; three instances behind HAProxy), runs
writers, subscribers and the members of a durable consumer through it while a nemesis injects
faults, then reads the final state and proves the delivery promise over the whole recorded
history (:mod:`bench.chaos.checker`).
The checker imports nothing of ratewire: it reads what a client can read (REST, the WebSocket
frames it recorded) and the database with plain SQL.
"""
