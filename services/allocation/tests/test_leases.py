"""Lease epochs and the per-station write budget (pure)."""

from __future__ import annotations

import pytest
from gridcharge.allocation.core.leases import LeasePolicy, WriteLog, WritePolicy

P = LeasePolicy(epoch_s=1200, renew_lead_s=240, clock_skew_s=30)


def test_leases_end_on_common_boundaries_lowered_ones_later() -> None:
    assert P.lease_end(899, lowered=False) == 1200
    assert P.lease_end(899, lowered=True) == 1200 + 90  # 3 × skew: after every raised one, by any clock
    assert P.lease_end(901, lowered=False) == 2400  # inside the renewal window: the next epoch
    assert P.is_lowered_end(1290) and not P.is_lowered_end(1200)


def test_renewals_are_due_in_the_window_lowered_first() -> None:
    assert not P.renewal_due(1200, 959, lowered=False) and P.renewal_due(1200, 960, lowered=False)
    assert P.renewal_due(1290, 900, lowered=True) and not P.renewal_due(1290, 899, lowered=True)
    assert P.max_lease_s == 1200 + 240 + 60 + 90


def test_inconsistent_timing_is_refused() -> None:
    with pytest.raises(ValueError):
        LeasePolicy(epoch_s=300, renew_lead_s=240, clock_skew_s=30)


def test_write_budget_raises_wait_lowerings_do_not() -> None:
    w = WriteLog(WritePolicy(min_interval_s=60, max_per_hour=6, raise_hold_s=120))
    assert w.why_not_raise("s", 0) == ""
    w.record("s", 0, "safety")  # a fallback: nothing waits for it
    assert w.why_not_raise("s", 1) == ""
    w.record("s", 0, "lowering")
    assert w.why_not_raise("s", 90) == "hold" and w.why_not_change("s", 90) == ""
    assert w.why_not_raise("s", 121) == ""
    w.record("s", 130)
    assert w.why_not_change("s", 150) == "interval"
    for t in (200, 300, 400, 500, 600):
        w.record("s", t)
    assert w.last_hour("s", 700) == 8 and w.why_not_change("s", 700) == "budget"
    assert w.why_not_change("s", 3601 + 130) == ""  # the oldest ones left the hour
    assert w.per_hour(700, ["s", "t"]) == [8, 0]
