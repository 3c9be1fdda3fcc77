"""The start-up heap is frozen for the garbage collector, so a full collection no longer scans it with the
event loop stopped (run in a child process: freezing this test process would keep its tests' cycles)."""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = """
import gc, json
import gridcharge.shared.service as service
import gridcharge.shared.http, gridcharge.shared.bus.kafka  # a server's imports
before = len(gc.get_objects())
frozen = service.freeze_startup_heap()
print(json.dumps({"before": before, "frozen": frozen, "after": len(gc.get_objects())}))
"""


def test_the_start_up_heap_is_out_of_the_collectors_reach() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["frozen"] >= 0.9 * got["before"] > 10_000, got
    assert got["after"] < 0.05 * got["before"], got  # what a full collection still walks
