"""The flows of one build, per view object, for the next build of the same
node: ``flows.build(view, memo)`` is exactly ``flows.build(view)``, but the
flows of an object whose inputs did not change are not built (nor checked)
again.

An entry is keyed by the id of the view object it was built from and holds
that object among its inputs: while the entry lives the object does, so its
id names no other object; inputs are compared object by object (identity
first), so an entry is reused only for equal inputs.  The agent's view
builder hands out the same objects while nothing they depend on changed.
Each build keeps only the entries it used, so the memo never outgrows one
node's view.
"""
from __future__ import annotations

from typing import Any, Callable


class Memo:
    def __init__(self) -> None:
        self._last: dict = {}
        self._now: dict = {}

    def get(self, key: Any, inputs: tuple, make: Callable[[], Any]) -> Any:
        """``make()``'s value, or the one it gave for equal ``inputs`` last time."""
        hit = self._now.get(key) or self._last.get(key)
        if hit is not None and hit[0] == inputs:
            value = hit[1]
        else:
            value = make()
        self._now[key] = (inputs, value)
        return value

    def peek(self, key: Any, inputs: tuple) -> Any:
        """The value kept for ``key`` when it was made from equal ``inputs``, else None."""
        hit = self._now.get(key) or self._last.get(key)
        return hit[1] if hit is not None and hit[0] == inputs else None

    def put(self, key: Any, inputs: tuple, value: Any) -> None:
        self._now[key] = (inputs, value)

    def turn(self) -> None:
        """End of a build: what it did not use is dropped at the next turn."""
        self._last, self._now = self._now, {}

    def clear(self) -> None:
        self._last, self._now = {}, {}
