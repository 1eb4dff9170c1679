#!/usr/bin/env python3
"""Wall time of the whole test suite, run exactly as CI runs it (the README's
test command), with the pass/fail/skip counts pytest reported."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, write_section  # noqa: E402


def main() -> int:
    t0 = time.monotonic()
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "bootstrap.sh"), "test", "-q"],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - t0
    summary = next((line for line in reversed(proc.stdout.splitlines())
                    if re.search(r"\d+ (passed|failed)", line)),
                   "no pytest summary")
    line = f"| whole suite (`bash scripts/bootstrap.sh test`) | {wall:.0f} s | {summary.strip('= ')} |"
    print(line)
    write_section("test-suite", "| what | wall time | pytest |\n| --- | --- | --- |\n" + line +
                  "\n\nOn the 2-core machine CI uses; includes the e2e tests on the netns lab.")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
