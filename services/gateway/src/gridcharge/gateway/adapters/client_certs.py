"""Proxy mode, security profile 3 towards the upstream CSMS: a TLS client certificate per station.

Layout (`GRIDCHARGE_UPSTREAM_CLIENT_CERTS_DIR`): one flat directory with `<station_id>.crt` (PEM, the
station's certificate first, intermediates after it) and `<station_id>.key` (PEM, unencrypted), i.e. one
Kubernetes Secret whose keys are those file names, mounted as a volume. A file's name only says where to
look: the certificate is used for a station only if its subject CN is that station id (profile 3's
identity, 2.0.1 Part 2 A00), so a certificate copied under another station's name is refused.

Checked at start-up for every file in the directory and for every topology station (missing file, a key
that is not the certificate's, expired or not yet valid, CN not the file's station id: one line naming the
file), and again before every connection (a Secret update is picked up without a restart; a bad update is
refused and counted, the station is served locally). Never logged: key material, or the text of a key
parser's error.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID
from gridcharge.gateway.core.proxy import cert_expires_soon, client_cert_problem
from gridcharge.shared.config import ENV_PREFIX
from gridcharge.shared.errors import ConfigError

VAR = f"{ENV_PREFIX}UPSTREAM_CLIENT_CERTS_DIR"
MAX_FILE_BYTES = 256 * 1024  # a certificate chain or a key; anything bigger is not one


class ClientCertError(Exception):
    """A station's client certificate cannot be used: `path` and `problem` (safe to log)."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def cert_files(directory: Path, station_id: str) -> tuple[Path, Path]:
    """(certificate, key) of a station. Station ids have no `/` (the gateway's id rule), so they stay in
    the directory."""
    return directory / f"{station_id}.crt", directory / f"{station_id}.key"


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ClientCertError(path, "missing") from None
    except OSError as exc:
        raise ClientCertError(path, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ClientCertError(path, f"larger than {MAX_FILE_BYTES} bytes")
    return data


@dataclass(frozen=True)
class CheckedCert:
    cert: Path
    key: Path
    not_after: datetime
    stamp: tuple[int, int, int, int]  # mtime_ns and size of both files: reloaded when either changes


def _stamp(cert: Path, key: Path) -> tuple[int, int, int, int]:
    try:
        c, k = os.stat(cert), os.stat(key)
    except FileNotFoundError as exc:
        raise ClientCertError(Path(exc.filename or cert), "missing") from None
    except OSError as exc:
        raise ClientCertError(cert, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    return c.st_mtime_ns, c.st_size, k.st_mtime_ns, k.st_size


def check_station_cert(directory: Path, station_id: str, now: datetime | None = None) -> CheckedCert:
    """The station's certificate and key, checked (ClientCertError naming the file and the problem)."""
    cert_path, key_path = cert_files(directory, station_id)
    stamp = _stamp(cert_path, key_path)
    try:
        chain = x509.load_pem_x509_certificates(_read(cert_path))
    except ValueError:
        raise ClientCertError(cert_path, "not a PEM certificate") from None
    leaf = chain[0]
    try:
        key = load_pem_private_key(_read(key_path), password=None)
    except TypeError:
        raise ClientCertError(key_path, "encrypted private key (mount it unencrypted from a Secret)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ClientCertError(key_path, "not a PEM private key") from None
    if key.public_key() != leaf.public_key():
        raise ClientCertError(key_path, f"does not match the certificate {cert_path.name}")
    cns = [str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    problem = client_cert_problem(
        station_id, cns, leaf.not_valid_before_utc, leaf.not_valid_after_utc, now or datetime.now(UTC)
    )
    if problem is not None:
        raise ClientCertError(cert_path, problem)
    return CheckedCert(cert_path, key_path, leaf.not_valid_after_utc, stamp)


def _no_password() -> bytes:
    raise ValueError("encrypted key")  # never OpenSSL's interactive prompt in a container


class ClientCerts:
    """TLS client contexts per station for the upstream (certificate + key checked; the upstream's
    certificate verified against `ca_file` or the system CAs). Cached until a file changes."""

    def __init__(self, directory: Path, ca_file: Path | None) -> None:
        self.directory, self.ca_file = Path(directory), ca_file
        self._cache: dict[str, tuple[CheckedCert, ssl.SSLContext]] = {}

    def context(self, station_id: str) -> ssl.SSLContext:
        """The station's TLS context; ClientCertError when its files are missing or unusable now."""
        cert_path, key_path = cert_files(self.directory, station_id)
        hit = self._cache.get(station_id)
        now = datetime.now(UTC)
        if hit is not None and hit[0].stamp == _stamp(cert_path, key_path):
            if now >= hit[0].not_after:
                raise ClientCertError(cert_path, f"certificate expired at {hit[0].not_after.isoformat()}")
            return hit[1]
        self._cache.pop(station_id, None)
        checked = check_station_cert(self.directory, station_id, now)
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file is not None else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(checked.cert), str(checked.key), password=_no_password)
        except (ssl.SSLError, ValueError, OSError):
            raise ClientCertError(checked.key, "not loadable as a TLS client certificate and key") from None
        if len(self._cache) >= 100_000:
            self._cache.pop(next(iter(self._cache)))
        self._cache[station_id] = (checked, ctx)
        return ctx


def check_client_certs_dir(directory: Path, station_ids: list[str], now: datetime | None = None) -> list[str]:
    """Start-up check: every `<id>.crt` in the directory (and its key) and every given station's files.
    Returns the station ids whose certificates expire within 14 days (for a warning); ConfigError (one line:
    the file and the problem) on the first bad one."""
    if not directory.is_dir():
        raise ConfigError(str(directory), VAR, "not a readable directory")
    try:
        present = sorted(p.name[: -len(".crt")] for p in directory.iterdir() if p.name.endswith(".crt"))
    except OSError as exc:
        raise ConfigError(str(directory), VAR, f"cannot list: {exc.strerror or exc}") from None
    now = now or datetime.now(UTC)
    soon = []
    for sid in dict.fromkeys([*station_ids, *present]):
        try:
            checked = check_station_cert(directory, sid, now)
        except ClientCertError as err:
            raise ConfigError(str(err.path), VAR, err.problem) from None
        if cert_expires_soon(checked.not_after, now):
            soon.append(sid)
    return soon
