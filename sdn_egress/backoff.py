"""The retry delay of a loop that must live through failures (the agent's
pass, the controller's pass, the Lease reporter): none after a success, then
``first`` seconds, doubling up to ``most``."""
from __future__ import annotations


class Backoff:
    def __init__(self, most: float, first: float = 0.5):
        self.most = most
        self.first = first
        self.delay = 0.0

    def failed(self) -> float:
        """One more failure: the delay before the next try."""
        self.delay = min(max(self.delay * 2, self.first), self.most)
        return self.delay

    def succeeded(self, retry: float = 0.0) -> None:
        """A success; ``retry``: come back that soon all the same (and double
        from there should the next try fail)."""
        self.delay = retry

    def __bool__(self) -> bool:
        return bool(self.delay)
