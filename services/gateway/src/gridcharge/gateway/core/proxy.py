"""Proxy mode (gridcharge as a local controller in front of the site's upstream CSMS): the pure rules.

- Which station messages are transaction messages (queued in order while the upstream is unreachable and
  relayed once it is back; everything else is answered locally then) — `is_transaction_message`.
- Which answer the station gets: the upstream's, except a BootNotification gridcharge itself does not
  accept (its registration gates the station's messages) — `station_answer`.
- 1.6 transaction ids: a transaction started while the upstream was down got a local id from gridcharge;
  the upstream assigns its own when the queued StartTransaction reaches it — `TxIdMap` rewrites one into
  the other both ways.
- Charging profiles: gridcharge writes the station maximum (fallback at stack 0, lease at stack 1) and,
  at multi-EVSE stations, TxProfiles at stack 1, with ids in a reserved range. An upstream profile that
  would replace or override one of these is refused (`ProfilePolicy.refusal`); an upstream Clear that
  could remove one is narrowed to the upstream's own recorded profiles (`ProfilePolicy.plan_clear`).
  Everything else passes unchanged; the station combines its station maximum with Tx/TxDefault profiles
  by the minimum (OCPP 1.6 §3.13, 2.0.1 K01), so the lower limit wins without rewriting anything.
- `OfflineQueue`: the bounded queue of transaction messages; `encode_queued`/`decode_queued` its entries in
  the shared store (so a restart or another replica delivers them).
- Security profile 3 towards the upstream: `client_cert_problem` says why a station's client certificate
  must not be presented for it (another station's, expired, not yet valid).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gridcharge.gateway.core.errors import Version

STATION_MAX = frozenset({"ChargePointMaxProfile", "ChargingStationMaxProfile"})
TX_PROFILE = "TxProfile"


def is_transaction_message(version: Version, action: str, payload: dict[str, Any]) -> bool:
    """Transaction-related messages (2.0.1 block E): the ones a station itself would queue while offline."""
    if version is Version.V16:
        if action in ("StartTransaction", "StopTransaction"):
            return True
        return action == "MeterValues" and payload.get("transactionId") is not None
    return action == "TransactionEvent"


def station_answer(action: str, local: dict[str, Any], upstream: dict[str, Any]) -> dict[str, Any]:
    """What the station gets when the upstream answered: the upstream's payload, unchanged. Exception: a
    BootNotification gridcharge answers Pending/Rejected itself (cluster not ready, unknown station) keeps
    gridcharge's answer, since gridcharge refuses the station's other messages until it has accepted it."""
    if action == "BootNotification" and local.get("status") != "Accepted":
        return local
    return upstream


# ---- 1.6 transaction ids ------------------------------------------------------------------------------


@dataclass
class TxIdMap:
    """1.6 local transaction id (given to the station while the upstream was down) ⇄ the upstream's id."""

    to_upstream_ids: dict[int, int] = field(default_factory=dict)
    max_entries: int = 1000

    def add(self, local_id: int, upstream_id: int) -> int | None:
        """Record a pair; returns the local id forgotten to stay within `max_entries` (the oldest), if any."""
        evicted = None
        if local_id not in self.to_upstream_ids and len(self.to_upstream_ids) >= self.max_entries:
            evicted = next(iter(self.to_upstream_ids))
            self.to_upstream_ids.pop(evicted)
        self.to_upstream_ids[local_id] = upstream_id
        return evicted

    def for_upstream(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """A station message on its way up: its local transaction id replaced by the upstream's."""
        if action in ("StopTransaction", "MeterValues"):
            tx = payload.get("transactionId")
            if isinstance(tx, int) and tx in self.to_upstream_ids:
                return {**payload, "transactionId": self.to_upstream_ids[tx]}
        return payload

    def for_station(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """An upstream CALL on its way down: the upstream's transaction id replaced by the station's."""
        back = {u: loc for loc, u in self.to_upstream_ids.items()}
        if action == "RemoteStopTransaction":
            tx = payload.get("transactionId")
            if isinstance(tx, int) and tx in back:
                return {**payload, "transactionId": back[tx]}
        if action == "SetChargingProfile":
            prof = payload.get("csChargingProfiles")
            tx = prof.get("transactionId") if isinstance(prof, dict) else None
            if isinstance(tx, int) and tx in back:
                return {**payload, "csChargingProfiles": {**prof, "transactionId": back[tx]}}  # type: ignore[dict-item]
        return payload


# ---- charging profiles --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfileRef:
    """An upstream profile the station accepted (what a Clear by criteria may match)."""

    profile_id: int
    evse_id: int
    purpose: str
    stack_level: int


def profile_of(version: Version, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(EVSE/connector id, profile) of a SetChargingProfile request (schema-valid)."""
    if version is Version.V16:
        return int(payload["connectorId"]), payload["csChargingProfiles"]
    return int(payload["evseId"]), payload["chargingProfile"]


def ref_of(version: Version, payload: dict[str, Any]) -> ProfileRef:
    evse, prof = profile_of(version, payload)
    pid = prof["chargingProfileId"] if version is Version.V16 else prof["id"]
    return ProfileRef(int(pid), evse, str(prof["chargingProfilePurpose"]), int(prof["stackLevel"]))


@dataclass(frozen=True, slots=True)
class ClearPlan:
    """What to do with an upstream ClearChargingProfile: `relay` it unchanged, or clear exactly `ids`
    (the upstream's own matching profiles, one Clear by id each; none = answered Unknown), or `refuse` it."""

    relay: bool
    ids: tuple[int, ...] = ()
    refuse: str = ""


@dataclass(frozen=True)
class ProfilePolicy:
    """The stack levels (of the purposes gridcharge writes) and profile ids that are gridcharge's."""

    reserved_stack_levels: frozenset[int] = frozenset({0, 1})
    reserved_ids: range = range(1000, 4000)

    def _reserved(self, purpose: str, stack: int) -> bool:
        if purpose in STATION_MAX:
            # a station maximum above gridcharge's would override gridcharge's cap: reserved as well
            return stack in self.reserved_stack_levels or stack > max(self.reserved_stack_levels, default=-1)
        return purpose == TX_PROFILE and stack in self.reserved_stack_levels

    def refusal(self, version: Version, payload: dict[str, Any]) -> str | None:
        """Why an upstream SetChargingProfile must not reach the station (None = relay it unchanged)."""
        ref = ref_of(version, payload)
        if ref.profile_id in self.reserved_ids:
            return f"profile id {ref.profile_id} is reserved for the local controller"
        if self._reserved(ref.purpose, ref.stack_level):
            return f"{ref.purpose} at stack level {ref.stack_level} is reserved for the local controller"
        return None

    def plan_clear(self, version: Version, payload: dict[str, Any], recorded: Iterable[ProfileRef]) -> ClearPlan:
        """An upstream Clear: by id of an upstream profile → relayed; by a reserved id → Unknown; by
        criteria that cannot touch gridcharge's profiles → relayed; otherwise narrowed to the upstream's
        recorded profiles that match the criteria."""
        if version is Version.V16:
            pid = payload.get("id")
            evse, purpose, stack = (
                payload.get("connectorId"),
                payload.get("chargingProfilePurpose"),
                payload.get("stackLevel"),
            )
        else:
            pid = payload.get("chargingProfileId")
            crit = payload.get("chargingProfileCriteria") or {}
            evse, purpose, stack = crit.get("evseId"), crit.get("chargingProfilePurpose"), crit.get("stackLevel")
        if pid is not None:
            if int(pid) in self.reserved_ids:
                return ClearPlan(relay=False, refuse=f"profile id {pid} is reserved for the local controller")
            return ClearPlan(relay=True)
        own_purposes = STATION_MAX | {TX_PROFILE}
        purposes = own_purposes if purpose is None else own_purposes & {purpose}
        touches_own = bool(purposes) and (stack is None or any(self._reserved(p, int(stack)) for p in purposes))
        if not touches_own:
            return ClearPlan(relay=True)
        ids = tuple(
            r.profile_id
            for r in recorded
            if (evse is None or r.evse_id == int(evse))
            and (purpose is None or r.purpose == purpose)
            and (stack is None or r.stack_level == int(stack))
        )
        return ClearPlan(relay=False, ids=ids)


def refused_answer(version: Version, action: str, reason: str) -> dict[str, Any]:
    """The answer the upstream gets for a profile command gridcharge does not relay."""
    status = "Unknown" if action == "ClearChargingProfile" else "Rejected"
    if version is Version.V16:
        return {"status": status}
    return {"status": status, "statusInfo": {"reasonCode": "LocalController", "additionalInfo": reason[:512]}}


@dataclass
class ProfileRecord:
    """The upstream's profiles a station holds, by id (1.6: a new one at the same EVSE, purpose and stack
    level replaces the old one, §5.16)."""

    profiles: dict[int, ProfileRef] = field(default_factory=dict)
    max_entries: int = 256

    def installed(self, ref: ProfileRef) -> None:
        for pid, old in list(self.profiles.items()):
            if (old.evse_id, old.purpose, old.stack_level) == (ref.evse_id, ref.purpose, ref.stack_level):
                del self.profiles[pid]
        if len(self.profiles) >= self.max_entries:
            self.profiles.pop(next(iter(self.profiles)))
        self.profiles[ref.profile_id] = ref

    def cleared(self, ids: Iterable[int]) -> None:
        for pid in ids:
            self.profiles.pop(pid, None)


# ---- offline queue ------------------------------------------------------------------------------------


@dataclass(eq=False)  # by identity: two equal meter updates are still two entries
class Queued:
    """A transaction message waiting for the upstream; `local_tx_id` = the 1.6 id gridcharge gave the station;
    `seq` = its position in the shared store's queue (None: not persisted, the store was unreachable)."""

    action: str
    payload: dict[str, Any]
    local_tx_id: int | None = None
    seq: int | None = None


QUEUED_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues", "TransactionEvent"})


def encode_queued(item: Queued) -> bytes:
    """A queue entry as stored (`gw:upstream-queue:<station>`, field = seq): compact JSON."""
    return json.dumps(
        {"a": item.action, "p": item.payload, "t": item.local_tx_id}, separators=(",", ":"), ensure_ascii=False
    ).encode()


def decode_queued(seq: int, raw: bytes, max_bytes: int) -> Queued | None:
    """A stored entry back, or None when it is not one of ours (too big, not JSON, not a transaction
    message, a non-int id): the store is trusted, but an entry that cannot be delivered must not block the
    queue behind it."""
    if len(raw) > max_bytes:
        return None
    try:
        d = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(d, dict) or d.get("a") not in QUEUED_ACTIONS or not isinstance(d.get("p"), dict):
        return None
    tx = d.get("t")
    if tx is not None and (not isinstance(tx, int) or isinstance(tx, bool)):
        return None
    return Queued(str(d["a"]), d["p"], tx, seq)


def _droppable(item: Queued) -> bool:
    """Meter data may be dropped when the queue is full; transaction starts and ends never are."""
    if item.action == "MeterValues":
        return True
    return item.action == "TransactionEvent" and item.payload.get("eventType") == "Updated"


@dataclass(frozen=True, slots=True)
class Pushed:
    """What `OfflineQueue.push` did: `queued` the new item (true-ish) or dropped it, and which older item it
    `evicted` to make room (to be removed from the store too)."""

    queued: bool
    evicted: Queued | None = None

    def __bool__(self) -> bool:
        return self.queued


@dataclass
class OfflineQueue:
    """Transaction messages for the upstream, in order, at most `max_items`. When full, the oldest meter
    update goes first; when there is none, the new message is dropped. `dropped` counts both."""

    max_items: int = 1000
    items: deque[Queued] = field(default_factory=deque)
    dropped: int = 0

    def push(self, item: Queued) -> Pushed:
        """Queue `item` (falsy result when it was dropped)."""
        evicted = None
        if len(self.items) >= self.max_items:
            evicted = next((q for q in self.items if _droppable(q)), None)
            if evicted is None:
                self.dropped += 1
                return Pushed(False)
            self.items.remove(evicted)
            self.dropped += 1
        self.items.append(item)
        return Pushed(True, evicted)

    def restore(self, stored: Iterable[Queued]) -> list[Queued]:
        """Entries loaded from the store, appended in their stored order (by `seq`) under the same bound;
        returns the ones that did not fit (evicted or refused), to be removed from the store."""
        gone: list[Queued] = []
        for item in sorted(stored, key=lambda q: q.seq if q.seq is not None else -1):
            res = self.push(item)
            if res.evicted is not None:
                gone.append(res.evicted)
            if not res.queued:
                gone.append(item)
        return gone

    def __len__(self) -> int:
        return len(self.items)


# ---- security profile 3 towards the upstream ----------------------------------------------------------


def client_cert_problem(
    station_id: str, common_names: list[str], not_before: datetime, not_after: datetime, now: datetime
) -> str | None:
    """Why a client certificate must not be presented to the upstream as `station_id` (None = fine).
    OCPP security profile 3 (2.0.1 Part 2 A00, security whitepaper): the subject's CN is the station's
    identity, so a certificate whose CN is another station's is never used, whatever its file is called."""
    if common_names != [station_id]:
        shown = ", ".join(cn[:64] for cn in common_names[:3]) or "none"
        return f"certificate subject CN is {shown}, not the station id {station_id[:48]}"
    if now < not_before:
        return f"certificate not valid before {not_before.isoformat()}"
    if now >= not_after:
        return f"certificate expired at {not_after.isoformat()}"
    return None


def cert_expires_soon(not_after: datetime, now: datetime, within: timedelta = timedelta(days=14)) -> bool:
    return now < not_after <= now + within
