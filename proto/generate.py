"""Generate Python code (+ mypy stubs) from proto/ into services/shared/src, or check it is current.

Usage: python proto/generate.py [--check]
Generated files are committed so a service container needs no protoc; `--check` (run by `make lint`
and `make test`) regenerates into a temporary directory and fails when the committed code is stale.
"""

from __future__ import annotations

import filecmp
import os
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "services" / "shared" / "src"


def _generate(out: Path) -> list[Path]:
    # protoc finds the mypy plugin (protoc-gen-mypy) on PATH: use the one beside this interpreter
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    files = sorted(PROTO_DIR.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--mypy_out={out}"]
    if protoc.main(args + [str(f) for f in files]) != 0:
        raise SystemExit("protoc failed")
    return [f.relative_to(PROTO_DIR) for f in files]


def _outputs(rel: Path) -> list[Path]:
    stem = rel.with_suffix("")
    return [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi")]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    if not check:
        rels = _generate(OUT_DIR)
        print(f"generated {len(rels)} proto files into {OUT_DIR.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rels = _generate(Path(tmp))
        stale = []
        for rel in rels:
            for out in _outputs(rel):
                committed = OUT_DIR / out
                if not committed.exists() or not filecmp.cmp(Path(tmp) / out, committed, shallow=False):
                    stale.append(str(committed.relative_to(ROOT)))
        expected = {OUT_DIR / o for rel in rels for o in _outputs(rel)}
        orphans = [p for p in OUT_DIR.rglob("*_pb2.py*") if p not in expected]
        stale += [f"{p.relative_to(ROOT)} (no .proto)" for p in orphans]
    if stale:
        print("generated contract code is stale; run `make proto`:\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    print(f"contracts current ({len(rels)} proto files)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
