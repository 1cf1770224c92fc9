"""Brokers carry committed events from the relay to the hub of every instance."""

from ratewire.broker.base import Broker, EventHandler
from ratewire.broker.local import LocalBroker

__all__ = ["Broker", "EventHandler", "LocalBroker"]
