"""The checkout is self-contained: nothing it ships points at data outside the repository (#12.8)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {
    ".git",
    ".venv",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    "reports",
    "build",
    "dist",
    "node_modules",
}
TEXT_SUFFIXES = {".py", ".md", ".sh", ".toml", ".yaml", ".yml", ".json", ".txt", ".cfg", ".ini", ".proto", ".tpl"}
TEXT_NAMES = {"Makefile", "Dockerfile"}
# `shared/` beside the checkout (../shared, /work/shared) is a dev-machine convenience, not part of the product.
OUTSIDE = re.compile(r"(?<![\w/.-])(\.\./shared\b|/work/shared\b|shared/data/)")


def _text_files() -> list[Path]:
    out = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if any(part in SKIP_DIRS for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            out.append(path)
    return out


def test_no_file_refers_to_data_outside_the_checkout() -> None:
    hits = []
    for path in _text_files():
        if path == Path(__file__).resolve():
            continue
        for no, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO)}:{no}: {line.strip()[:120]}")
    assert hits == [], "\n".join(hits)


def test_the_pattern_catches_what_it_must() -> None:
    for line in ("ACN = Path('shared/data/acn/sessions.csv')", "see ../shared/data", "/work/shared/data/x.csv"):
        assert OUTSIDE.search(line), line
    assert not OUTSIDE.search("services/shared/src/gridcharge/shared/config.py")
    assert not OUTSIDE.search("gridcharge/shared/data.py")
