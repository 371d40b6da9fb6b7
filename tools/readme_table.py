"""Benchmark tables in README.md live between <!-- bench:NAME --> and <!-- /bench:NAME -->;
each benchmark's --readme replaces its own with this one helper."""

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def replace_table(name: str, text: str) -> None:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    s = README.read_text()
    a, b = s.index(start) + len(start), s.index(end)
    README.write_text(s[:a] + "\n" + text.rstrip("\n") + "\n\n" + s[b:])
