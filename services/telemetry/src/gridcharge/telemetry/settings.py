"""Telemetry settings: the shared GRIDCHARGE_* settings plus GRIDCHARGE_TELEMETRY_* keys."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from gridcharge.shared.config import Settings
from gridcharge.telemetry.core import TelemetryConfig


class TelemetrySettings(Settings):
    """GRIDCHARGE_TELEMETRY_SNAPSHOT_S etc.; `telemetry_runtime=auto` uses faust when bus == kafka."""

    telemetry_snapshot_s: float = 5.0  # NodeLoad publish period (s)
    telemetry_history_s: int = 900  # NodeLoadInterval length (s)
    telemetry_stale_after_s: float = 60.0  # floor of the stale time (s); 3 × reporting interval if longer
    telemetry_runtime: Literal["auto", "faust", "bus"] = "auto"
    telemetry_group: str = "gridcharge-telemetry"  # consumer group / faust app id (topic prefix is prepended)
    telemetry_datadir: Path | None = None  # faust data dir (default: a fresh temp dir)
    telemetry_faust_web_port: int = 0  # 0 = faust's own web server off (our HTTP edge serves /metrics)
    telemetry_lease_ttl_s: float = 15.0  # faust mode: active/standby lease in the store (s)
    telemetry_nodeload_ttl_s: float = 60.0  # TTL of nodeload:<node> in the store
    telemetry_fast_delta: float = 0.05  # publish at once when a meter moves its node's load by this × limit
    telemetry_fast_above: float = 0.9  # ... or shows more than this × limit on a phase
    telemetry_fast_near_delta: float = 0.01  # ... and moved by more than this × limit
    telemetry_fast_min_interval_s: float = 0.5  # at most one fast computation per this time (s); batched
    telemetry_ev_follow_s: float = 5.0  # an accepted lower limit caps the EV's estimated draw after this (s)

    @classmethod
    def derive(cls, base: Settings, env: Mapping[str, str] | None = None) -> TelemetrySettings:
        """The host's settings plus telemetry keys from the environment."""
        env = os.environ if env is None else env
        return cls.from_env(env, **base.model_dump())

    def core_config(self) -> TelemetryConfig:
        return TelemetryConfig(
            snapshot_interval_s=self.telemetry_snapshot_s,
            history_interval_s=self.telemetry_history_s,
            stale_after_s=self.telemetry_stale_after_s,
            ev_follow_s=self.telemetry_ev_follow_s,
        )
