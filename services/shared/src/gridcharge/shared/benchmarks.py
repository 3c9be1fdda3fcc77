"""Recording benchmark figures in docs/benchmarks.md: each `gridcharge bench X --record` run replaces
its own marked block inside its section, so the file keeps hand-written context around the figures.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS_MD = Path("docs/benchmarks.md")


def record(section: str, name: str, command: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Put `body` (markdown) as the latest `command` figures into `## section`, replacing the previous run."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{start}\nLast `{command}` run ({stamp}):\n\n{body.rstrip()}\n{end}"
    heading = f"## {section}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    elif heading not in text:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    else:
        head, tail = text.split(heading, 1)
        nxt = re.search(r"\n## ", tail)
        cut = nxt.start() if nxt else len(tail)
        text = head + heading + tail[:cut].rstrip("\n") + f"\n\n{block}\n" + tail[cut:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
