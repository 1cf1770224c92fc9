"""The NATS JetStream cluster broker: one stream per epoch for events, a core subject and a
key-value bucket for announcements, key-value buckets for the lease, epoch and quota chunks."""
