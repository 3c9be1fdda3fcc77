"""Pure telemetry core: meter values, station events and grid-meter readings -> per-node, per-phase load.

No I/O here: adapters feed decoded messages with the current time (POSIX seconds from the injected
clock) and read back `NodeLoadView`s and closed 15-minute intervals.
"""

from gridcharge.telemetry.core.aggregate import TelemetryCore
from gridcharge.telemetry.core.config import TelemetryConfig
from gridcharge.telemetry.core.history import IntervalAccumulator
from gridcharge.telemetry.core.model import NodeLoadView, Outcome

__all__ = ["IntervalAccumulator", "NodeLoadView", "Outcome", "TelemetryConfig", "TelemetryCore"]
