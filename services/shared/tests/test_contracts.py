from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gridcharge.shared.contracts import ALL_TOPICS, decode
from gridcharge.station.v1 import station_pb2

ROOT = Path(__file__).resolve().parents[3]


def test_every_topic_is_versioned_and_unique() -> None:
    names = [t.name for t in ALL_TOPICS]
    assert len(names) == len(set(names))
    assert all(n.startswith("gridcharge.") and n.endswith(".v1") for n in names)
    assert all(".v1." in t.message.DESCRIPTOR.full_name for t in ALL_TOPICS)


def test_roundtrip() -> None:
    ev = station_pb2.StationEvent(station_id="CP1")
    ev.transaction_started.transaction_id = "42"
    back = decode(station_pb2.StationEvent, ev.SerializeToString())
    assert back.WhichOneof("payload") == "transaction_started"


def test_generated_code_is_current() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_topics_doc_is_current() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gridcharge.shared.docs", "--check", str(ROOT / "docs" / "topics.md")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
