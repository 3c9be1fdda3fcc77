"""Forecasting settings: the shared settings plus its own GRIDCHARGE_* keys.

Kept apart from main.py (which imports pandas/pvlib) so the start-up check of variable names can import it
cheaply.
"""

from __future__ import annotations

from pathlib import Path

from gridcharge.shared.config import Settings
from pydantic import Field


class ForecastingSettings(Settings):
    """Forecasting keys on top of the shared settings (env ``GRIDCHARGE_WEATHER_FILE`` etc.)."""

    weather_file: Path | None = None  # recorded forecast (.json/.csv) instead of the API
    weather_file_shift: bool = True  # move the recording so its first day is today (demo/sim)
    weather_refresh_s: float = Field(3600.0, gt=0)
    weather_timeout_s: float = Field(10.0, gt=0)
    pv_credit_factor: float = Field(0.5, ge=0, le=1)
