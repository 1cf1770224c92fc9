"""Brokers carry committed events from the relay to the hub of every instance; beside them
live what a cluster's instances share through the same backend (announcements, quota
counts)."""

from ratewire.broker.base import Broker, BrokerUnavailable, EventHandler
from ratewire.broker.local import LocalBroker

__all__ = ["Broker", "BrokerUnavailable", "EventHandler", "LocalBroker"]
