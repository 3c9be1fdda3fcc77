"""Print docs/topics.md from the topic registry, or check it (`--check PATH`)."""

from __future__ import annotations

import sys

from gridcharge.shared.contracts import topics_markdown

HEADER = """# Topics

Generated from `gridcharge.shared.contracts` (`make docs-topics`); `make lint` fails when this file is stale.
Station-scoped topics are keyed by station id, node/site-scoped ones by node id, so per-key order holds.
Latest-value topics are compacted. Producers are idempotent with `acks=all`. Every consumer dead-letters
records it cannot process to `gridcharge.deadletter.v1` instead of crash-looping.

"""


def render() -> str:
    return HEADER + topics_markdown()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        path = argv[1]
        with open(path, encoding="utf-8") as f:
            if f.read() != render():
                print(f"{path} is stale: run `make docs-topics`", file=sys.stderr)
                return 1
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
