"""Per-station passwords for security profiles 1 and 2, stored only as salted hashes.

File format (YAML or JSON): `{station_id: "pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>"}`; make an
entry with `python -m gridcharge.gateway.adapters.credentials STATION_ID` (reads the password from stdin).
Passwords are never logged; comparisons are constant-time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import sys
from pathlib import Path

import yaml

ITERATIONS = 200_000


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, iterations, salt, digest = encoded.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(got, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


class Credentials:
    """Station id → password hash; a verified password is remembered (as a keyed hash) so reconnect
    storms do not cost a full key derivation each."""

    def __init__(self, hashes: dict[str, str]) -> None:
        self.hashes = hashes
        self._key = os.urandom(32)
        self._verified: dict[str, bytes] = {}

    @classmethod
    def load(cls, path: Path | None) -> Credentials:
        if path is None:
            return cls({})
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping station_id -> password hash")
        return cls({str(k): str(v) for k, v in data.items()})

    def __contains__(self, station_id: str) -> bool:
        return station_id in self.hashes

    async def check(self, station_id: str, password: str) -> bool:
        encoded = self.hashes.get(station_id)
        if encoded is None:
            return False
        mark = hmac.new(self._key, station_id.encode() + b"\0" + password.encode(), "sha256").digest()
        if hmac.compare_digest(self._verified.get(station_id, b""), mark):
            return True
        ok = await asyncio.to_thread(verify_password, password, encoded)
        if ok:
            self._verified[station_id] = mark
        return ok


if __name__ == "__main__":
    print(f'{sys.argv[1]}: "{hash_password(sys.stdin.readline().rstrip(chr(10)))}"')
