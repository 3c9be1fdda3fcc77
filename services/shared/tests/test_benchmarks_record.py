from __future__ import annotations

from pathlib import Path

from gridcharge.shared.benchmarks import record


def test_record_replaces_only_its_own_block(tmp_path: Path) -> None:
    md = tmp_path / "b.md"
    md.write_text("# Benchmarks\n\n## Allocation\n\nContext.\n\n## Gateway\n\nOther.\n")
    record("Allocation", "alloc", "gridcharge bench allocator", "| a |\n", md)
    record("Allocation", "alloc", "gridcharge bench allocator", "| b |\n", md)
    text = md.read_text()
    assert "| a |" not in text and text.count("| b |") == 1
    assert text.index("Context.") < text.index("| b |") < text.index("## Gateway")
    record("New", "new", "cmd", "x", md)
    assert md.read_text().rstrip().endswith("<!-- new:end -->")
