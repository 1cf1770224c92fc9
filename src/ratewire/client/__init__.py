"""Python client: an async iterator of rating updates that reconnects and resumes."""

from ratewire.client.stream import StreamClosed, rating_updates

__all__ = ["StreamClosed", "rating_updates"]
