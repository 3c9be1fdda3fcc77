"""Grid-signals settings: the shared settings plus the VEN's GRIDCHARGE_OPENADR_* keys (docs/grid-interfaces.md).

Kept apart from main.py so the start-up check of variable names can import it cheaply.
"""

from __future__ import annotations

import math
from pathlib import Path

from gridcharge.gridsignals.core.oadr import P3
from gridcharge.shared.config import Settings
from pydantic import Field, SecretStr, field_validator


def parse_pairs(text: str) -> dict[str, str]:
    """``"a=b,c=d"`` → {a: b, c: d}; spaces around names are ignored; a pair without ``=`` or a repeated name
    is an error (a silent overwrite would limit the wrong node)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"expected NAME=VALUE pairs separated by commas, got {part.strip()[:40]!r}")
        if key in out:
            raise ValueError(f"{key[:40]!r} given twice")
        out[key] = value
    return out


def parse_fallback_w(text: str) -> dict[str, P3]:
    """``"node=W"`` (the same W on each phase) or ``"node=W1/W2/W3"`` → {node: (L1, L2, L3) W}."""
    out: dict[str, P3] = {}
    for node_id, raw in parse_pairs(text).items():
        parts = raw.split("/")
        if len(parts) not in (1, 3):
            raise ValueError(f"fallback of {node_id!r}: give W or W1/W2/W3")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"fallback of {node_id!r} is not a number of W: {raw[:20]!r}") from None
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"fallback of {node_id!r} must be a finite W ≥ 0")
        out[node_id] = (values[0], values[0], values[0]) if len(values) == 1 else (values[0], values[1], values[2])
    return out


class GridSignalsSettings(Settings):
    """OpenADR VEN keys (env ``GRIDCHARGE_OPENADR_VTN_URL`` etc.); the service runs only with a VTN URL."""

    openadr_vtn_url: str = ""  # base URL of the VTN's OpenADR 3 REST API; empty = VEN off
    openadr_token_url: str = ""  # OAuth2 token endpoint; empty = ask the VTN (GET /auth/server)
    openadr_client_id: str = ""  # OAuth2 client-credentials of this VEN
    openadr_client_secret: SecretStr = SecretStr("")
    openadr_client_secret_file: Path | None = None  # or the secret in a (mounted) file; wins over the variable
    openadr_ven_name: str = Field("gridcharge", min_length=1, max_length=128)  # clientName of reports
    openadr_programs: str = ""  # program names to follow, comma-separated; empty = all visible
    openadr_node_map: str = ""  # "target=node,program=node,*=node" (docs/grid-interfaces.md)
    openadr_fallback_w: str = ""  # "node=W" or "node=W1/W2/W3" per phase when the VTN is gone
    openadr_poll_s: float = Field(60.0, ge=1, le=3600)  # how often events are fetched
    openadr_fallback_after_s: float = Field(900.0, ge=10, le=7 * 86400)  # unreachable this long → fallback
    openadr_report_s: float = Field(900.0, ge=0, le=86400)  # usage report period; 0 = no reports
    openadr_timeout_s: float = Field(10.0, gt=0, le=120)  # per HTTP request to the VTN
    openadr_max_response_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)

    @field_validator("openadr_vtn_url", "openadr_token_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("openadr_node_map")
    @classmethod
    def _node_map(cls, v: str) -> str:
        parse_pairs(v)
        return v

    @field_validator("openadr_fallback_w")
    @classmethod
    def _fallback(cls, v: str) -> str:
        parse_fallback_w(v)
        return v

    def client_secret(self) -> str:
        """The OAuth2 client secret: from the file if one is configured (read at start), else the variable."""
        if self.openadr_client_secret_file is not None:
            return self.openadr_client_secret_file.read_text(encoding="utf-8").strip()
        return self.openadr_client_secret.get_secret_value()
