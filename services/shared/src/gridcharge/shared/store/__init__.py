"""Shared live state: one interface, an in-memory store and a Redis one."""

from gridcharge.shared.store.base import Store

__all__ = ["Store"]
