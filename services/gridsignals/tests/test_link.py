"""The VTN reachability state machine on an injected time."""

from __future__ import annotations

import pytest
from gridcharge.gridsignals.core.link import VtnLink


def test_up_unreachable_fallback_and_back() -> None:
    link = VtnLink(fallback_after_s=300, started_at=0)
    assert link.state == "connecting"
    assert link.success(10).after == "up"  # type: ignore[union-attr]
    t = link.failure(70, "connect refused")
    assert t is not None and t.after == "unreachable" and t.error == "connect refused"
    assert link.failure(200, "timeout") is None and link.state == "unreachable"
    assert link.unreachable_for_s(200) == 190
    assert link.tick(309) is None
    t = link.tick(310)
    assert t is not None and t.after == "fallback" and link.in_fallback
    assert link.failure(400, "x") is None
    t = link.success(410)
    assert t is not None and (t.before, t.after) == ("fallback", "up") and link.unreachable_for_s(410) == 0


def test_never_reached_counts_from_start() -> None:
    link = VtnLink(fallback_after_s=300, started_at=1000)
    assert link.failure(1100, "dns") is None and link.state == "connecting"
    assert link.tick(1299) is None
    assert link.failure(1300, "dns").after == "fallback"  # type: ignore[union-attr]


def test_a_long_hang_goes_straight_to_fallback() -> None:
    link = VtnLink(fallback_after_s=60, started_at=0)
    link.success(0)
    assert link.failure(100, "timeout").after == "fallback"  # type: ignore[union-attr]


def test_fallback_time_must_be_positive() -> None:
    with pytest.raises(ValueError):
        VtnLink(0, 0)
