"""Shared helpers of the benchmarks: figures are printed and written into
BENCHMARKS.md between markers named after the benchmark, so each script
owns its own section and re-running it replaces the old figures."""
from __future__ import annotations

import datetime
import os
import platform
import re
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "BENCHMARKS.md")


def summary(values: list[float]) -> dict:
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "max": max(values)}


def machine() -> str:
    return f"{platform.node()} · {os.cpu_count()} cores · Python {platform.python_version()}"


def write_section(name: str, body: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = f"{start}\n_measured {stamp} on {machine()}_\n\n{body.rstrip()}\n{end}"
    text = open(BENCHMARKS).read() if os.path.exists(BENCHMARKS) else "# Benchmarks\n"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + f"\n\n## {name}\n\n{block}\n"
    with open(BENCHMARKS, "w") as f:
        f.write(text)


def markdown_table(heads: list[str], rows, results: list) -> str:
    """One column per result (``heads``: their titles), one line per
    ``(label, cell)`` of ``rows`` (``cell(result)`` -> the text)."""
    lines = ["| | " + " | ".join(heads) + " |", "| --- " * (len(heads) + 1) + "|"]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    return "\n".join(lines)
