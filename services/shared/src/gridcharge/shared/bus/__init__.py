"""Message bus: one interface, an in-process implementation and a Kafka one."""

from gridcharge.shared.bus.base import Bus, Handler, Outgoing, PublishError, Record, Subscription

__all__ = ["Bus", "Handler", "Outgoing", "PublishError", "Record", "Subscription"]
