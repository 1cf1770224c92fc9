"""The Redis cluster broker: Redis Streams for events, pub/sub and a hash for announcements,
a Lua lease for shared quota chunks."""
