#!/usr/bin/env python3
"""Issue 11's fuzz, longer than the suite's: cases tried per input category
and failures per kind (crash, hang, accepted-invalid, refused-valid,
interference), into BENCHMARKS.md.  The harness is tests/unit/fuzzkit.py,
the one tests/unit/test_fuzz.py runs bounded.

Also measured, not a failure category: how many of the known-invalid specs
the CRD alone (schema and CEL) lets in, i.e. what only the controller and
``validate`` refuse (metadata and apiVersion the API server checks itself).

    python bench/fuzz.py [--scale N]   (N x the default number of cases)
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "unit"))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's sdn_egress, not an installed one
from common import write_section  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fuzzkit as fk  # noqa: E402
import sdn_egress  # noqa: E402

CASES = {"valid objects": 400, "invalid fields": 400, "hostile values": 1500, "hostile files (validate)": 300,
         "hostile files + restart (source, controller)": 300}


def run(name: str, strategy, check, n: int, tally, crd_gap) -> None:
    @settings(max_examples=n, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(case):
        tally[name]["cases"] += 1
        for kind, detail in fk.guarded(check, *case):
            tally[name][kind] += 1
            if tally[name][kind] <= 3:
                print(f"  {name}: {kind}: {detail[:300]}", file=sys.stderr)
        # metadata and apiVersion the API server checks itself, beyond the CRD's schema
        if name == "invalid fields" and case[1].startswith("spec."):
            crd_gap["cases"] += 1
            if not fk._schema_and_cel(case[0]):
                crd_gap["let in"] += 1
                crd_gap["fields"].add(f"{case[1]}={fk._at(case[0], case[1])!r}"[:80])

    one()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    tally: dict = collections.defaultdict(collections.Counter)
    crd_gap = {"cases": 0, "let in": 0, "fields": set()}
    plan = [
        ("valid objects", st.one_of(fk.gateways(), fk.policies()).map(lambda d: (d,)), fk.check_valid),
        ("invalid fields", fk.invalid_objects(), fk.check_invalid),
        ("hostile values", st.one_of(fk.hostile_objects(), fk.json_values).map(lambda d: (d,)), fk.check_hostile),
        ("hostile files (validate)", fk.hostile_texts().map(lambda f: ([f], None)), fk.check_validate),
        ("hostile files + restart (source, controller)", fk.interference_cases(), fk.check_interference),
    ]
    print(f"sdn_egress from {os.path.dirname(sdn_egress.__file__)}", file=sys.stderr)
    started = time.monotonic()
    for name, strategy, check in plan:
        t0 = time.monotonic()
        run(name, strategy, check, max(1, int(CASES[name] * args.scale)), tally, crd_gap)
        print(f"{name}: {tally[name]['cases']} cases in {time.monotonic() - t0:.1f} s, failures: "
              + ", ".join(f"{k} {tally[name][k]}" for k in fk.CATEGORIES))
    wall = time.monotonic() - started
    rows = ["| inputs | cases | " + " | ".join(fk.CATEGORIES) + " |",
            "| --- | --- | " + " | ".join("---" for _ in fk.CATEGORIES) + " |"]
    for name, _, _ in plan:
        rows.append(f"| {name} | {tally[name]['cases']} | " + " | ".join(str(tally[name][k]) for k in fk.CATEGORIES)
                    + " |")
    total = sum(tally[n][k] for n, _, _ in plan for k in fk.CATEGORIES)
    gap = (f"Known-invalid specs the CRD alone (schema + CEL) lets in, refused only by the controller and "
           f"`validate`: {crd_gap['let in']} of {crd_gap['cases']}"
           + (f" ({', '.join(sorted(crd_gap['fields'])[:12])})" if crd_gap["fields"] else "") + ".")
    body = "\n".join(rows) + (
        f"\n\nFailures in all: **{total}** ({wall:.0f} s). Each case runs under a {fk.CASE_SECONDS:.0f} s alarm "
        "(a hang is a case that outlives it). Inputs: objects from a grammar of valid ones; one known-invalid "
        "field (the refusal must name it); random values at random places (the parser never crashes, and what it "
        "accepts the CRD accepts); mangled YAML, alias bombs, deep nesting, 12,000 documents, random bytes "
        "through `validate`; and a hostile file (those, a duplicate, a claim on the explicit EIP, a second "
        "cluster default) beside a valid set, with the controller restarted in between (the valid objects' "
        "parsed version, EIP and gateway must not move). Harness: `tests/unit/fuzzkit.py`.\n\n" + gap)
    print(body)
    write_section("fuzz", body)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
