"""What an operator sees: Prometheus metrics, and the latency budget of each event."""
