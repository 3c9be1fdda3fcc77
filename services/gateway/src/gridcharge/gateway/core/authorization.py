"""Authorization decisions for idTokens (1.6 idTag): local-list entries, expiry, and the answer shapes.

An entry says what a token may do: `status` (Accepted, Blocked, Expired, Invalid, or one of the other
2.0.1 AuthorizationStatus values), an optional `expiry` (an Accepted token past it is Expired) and an
optional `group` (1.6 parentIdTag / 2.0.1 groupIdToken). A token that no source knows is Invalid.

Pure: the adapters look entries up (topology-independent: a file and the store) and pass the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gridcharge.gateway.core.errors import Version

STATUSES_16 = frozenset({"Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx"})
STATUSES_201 = frozenset(
    {
        "Accepted",
        "Blocked",
        "ConcurrentTx",
        "Expired",
        "Invalid",
        "NoCredit",
        "NotAllowedTypeEVSE",
        "NotAtThisLocation",
        "NotAtThisTime",
        "Unknown",
    }
)
# 2.0.1 idToken type for which the station does no authorization (free vend): nothing to look up
NO_AUTHORIZATION = "NoAuthorization"


@dataclass(frozen=True, slots=True)
class AuthRequest:
    station_id: str
    id_token: str
    token_type: str  # 2.0.1 IdTokenEnumType; 1.6 idTags have none ("")
    version: Version


@dataclass(frozen=True, slots=True)
class TokenEntry:
    status: str = "Accepted"
    expiry: datetime | None = None
    group: str = ""

    @classmethod
    def parse(cls, raw: Any) -> TokenEntry:
        """From a list entry: a status string, or {status, expiry (ISO 8601 with zone), group}; ValueError
        names what is wrong."""
        if isinstance(raw, str):
            raw = {"status": raw}
        if not isinstance(raw, dict):
            raise ValueError("entry must be a status or a mapping {status, expiry, group}")
        unknown = set(raw) - {"status", "expiry", "group"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        status = str(raw.get("status", "Accepted"))
        if status not in STATUSES_201:
            raise ValueError(f"status {status!r} is not one of {sorted(STATUSES_201)}")
        expiry = raw.get("expiry")
        if expiry is not None and not isinstance(expiry, datetime):
            expiry = datetime.fromisoformat(str(expiry))
        if expiry is not None and expiry.tzinfo is None:
            raise ValueError("expiry needs a time zone (e.g. 2027-01-01T00:00:00Z)")
        group = str(raw.get("group") or "")
        if len(group) > 36:
            raise ValueError("group is at most 36 characters")
        return cls(status, expiry.astimezone(UTC) if expiry is not None else None, group)

    def to_json(self) -> dict[str, str]:
        out = {"status": self.status}
        if self.expiry is not None:
            out["expiry"] = self.expiry.isoformat()
        if self.group:
            out["group"] = self.group
        return out


@dataclass(frozen=True, slots=True)
class Decision:
    status: str
    expiry: datetime | None = None  # until when the station may cache the answer
    group: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"


ACCEPTED = Decision("Accepted")
INVALID = Decision("Invalid")


def decide(entry: TokenEntry | None, now: datetime) -> Decision:
    """The decision for a looked-up entry (None = unknown token -> Invalid)."""
    if entry is None:
        return INVALID
    if entry.status == "Accepted" and entry.expiry is not None and entry.expiry <= now:
        return Decision("Expired", None, entry.group)
    return Decision(entry.status, entry.expiry, entry.group)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def id_tag_info_16(d: Decision) -> dict[str, Any]:
    """1.6 IdTagInfo (statuses 1.6 lacks map to Invalid)."""
    out: dict[str, Any] = {"status": d.status if d.status in STATUSES_16 else "Invalid"}
    if d.expiry is not None:
        out["expiryDate"] = _iso(d.expiry)
    if d.group:
        out["parentIdTag"] = d.group[:20]
    return out


def id_token_info_201(d: Decision) -> dict[str, Any]:
    """2.0.1 IdTokenInfoType."""
    out: dict[str, Any] = {"status": d.status if d.status in STATUSES_201 else "Invalid"}
    if d.expiry is not None:
        out["cacheExpiryDateTime"] = _iso(d.expiry)
    if d.group:
        out["groupIdToken"] = {"idToken": d.group[:36], "type": "Central"}
    return out
