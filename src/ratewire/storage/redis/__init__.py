"""The Redis store (the NoSQL backend; ``ratewire[redis]``): ``store``, its Lua ``scripts``,
the ``wire`` encoding of its values, ``audit`` and ``webhooks``. Nothing is imported here, so
that naming the package needs no Redis client."""
