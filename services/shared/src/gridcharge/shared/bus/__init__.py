"""Message bus: one interface, an in-process implementation and a Kafka one."""

from gridcharge.shared.bus.base import Bus, Handler, Record, Subscription

__all__ = ["Bus", "Handler", "Record", "Subscription"]
