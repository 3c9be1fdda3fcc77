"""Input checks shared by the operator APIs.

Datetimes: an API accepts only aware datetimes between 1970 and 2100 (UTC). Python parses 0001-01-01T00:00+14:00
and 9999-12-31 fine, but converting them to UTC or to a protobuf Timestamp overflows later, in a loop far from
the request: a departure of year 1 stopped plan publishing for every session, each cycle. Rejected at the API
(422) instead.
"""

from __future__ import annotations

from datetime import UTC, datetime

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def bounded_datetime(value: datetime | None, what: str = "time") -> datetime | None:
    """`value` if it is aware and within [1970, 2100) UTC, else ValueError naming `what`."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} needs a timezone (e.g. 2026-06-01T12:00:00Z)")
    try:
        utc = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f"{what} must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} UTC") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(f"{what} must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} UTC")
    return value
