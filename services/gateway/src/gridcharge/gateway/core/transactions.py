"""2.0.1 TransactionEvent ordering: drop duplicates, release events in seqNo order.

A gap is waited for only while few events are buffered: after `max_buffer` events (or at an `Ended`
event, or on disconnect) everything buffered is released in seqNo order, so a lost message delays
telemetry by a bounded number of events instead of forever. A late event whose seqNo was skipped is
still released (data is never dropped, only duplicates are).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _TxState(Generic[T]):
    next_seq: int | None = None
    seen: set[int] = field(default_factory=set)
    buffered: dict[int, T] = field(default_factory=dict)


class TransactionSequencer(Generic[T]):
    """Per-station; keyed by transaction id."""

    def __init__(self, max_buffer: int = 8, max_transactions: int = 64) -> None:
        self.max_buffer, self.max_transactions = max_buffer, max_transactions
        self._tx: OrderedDict[str, _TxState[T]] = OrderedDict()

    def seen(self, transaction_id: str, seq_no: int) -> bool:
        """True when this (transaction, seqNo) was accepted before (a retransmission)."""
        st = self._tx.get(transaction_id)
        return st is not None and seq_no in st.seen

    def accept(self, transaction_id: str, seq_no: int, item: T, ended: bool = False) -> list[T]:
        """Items to publish now, in order (empty for a duplicate or a buffered early event)."""
        st = self._tx.get(transaction_id)
        if st is None:
            st = self._tx[transaction_id] = _TxState()
            while len(self._tx) > self.max_transactions:
                self._tx.popitem(last=False)
        if seq_no in st.seen:
            return []
        st.seen.add(seq_no)
        if len(st.seen) > 4096:  # bound memory on endless transactions
            st.seen = {s for s in st.seen if s >= seq_no - 1024}
        out: list[T] = []
        if st.next_seq is None or seq_no == st.next_seq:
            out.append(item)
            st.next_seq = seq_no + 1
            while st.next_seq in st.buffered:
                out.append(st.buffered.pop(st.next_seq))
                st.next_seq += 1
        elif seq_no < st.next_seq:
            out.append(item)  # late but unseen: release, never drop
        else:
            st.buffered[seq_no] = item
        if ended or len(st.buffered) > self.max_buffer:
            out.extend(self._drain(st))
        if ended and not st.buffered:
            # keep `seen` for retransmissions of the ended transaction, free the rest
            st.next_seq = max(st.seen) + 1
        return out

    def _drain(self, st: _TxState[T]) -> list[T]:
        keys = sorted(st.buffered)
        out = [st.buffered.pop(k) for k in keys]
        if keys:
            st.next_seq = max(keys[-1] + 1, st.next_seq or 0)
        return out

    def flush(self) -> list[T]:
        """Release everything buffered (on disconnect)."""
        out: list[T] = []
        for st in self._tx.values():
            out.extend(self._drain(st))
        return out
