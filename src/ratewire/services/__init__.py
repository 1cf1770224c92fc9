"""The use cases: ratings (the only writer), the relay that publishes what is committed, the
summary cache, and revocations."""
