"""The one way the tests wait for something to happen."""
from __future__ import annotations

import contextlib
import threading
import time


def wait_for(predicate, what: str, timeout: float = 20.0, interval: float = 0.1,
             condition: threading.Condition | None = None):
    """Poll until ``predicate()`` is truthy and return that; the assertion is
    on the outcome, the timeout only bounds how long a broken system is waited
    for.  An exception from ``predicate`` counts as not yet (the last one is
    reported).  With ``condition`` (a server's lock), ``predicate`` runs with
    it held and is checked again as soon as it is notified (on every write),
    else every ``interval``."""
    deadline = time.monotonic() + timeout
    last = None
    with condition if condition is not None else contextlib.nullcontext():
        while True:
            try:
                last = predicate()
            except Exception as exc:  # noqa: BLE001 - keep polling, report the last
                last = exc
            if last and not isinstance(last, Exception):
                return last
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out waiting for {what}; last result: {last!r}")
            if condition is not None:
                condition.wait(interval)
            else:
                time.sleep(interval)
