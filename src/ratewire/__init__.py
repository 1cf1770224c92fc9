"""ratewire: a rating engine that streams every rating change in real time over WebSockets."""

__version__ = "0.2.0.dev0"
