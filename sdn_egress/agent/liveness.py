"""Which gateway peers this node's BFD sessions see dead.

A peer counts as dead when its Geneve port's BFD session is not up and either
it was up before (a real failure) or it has never come up for ``grace``
seconds (a peer that is already dead when this agent starts).  The grace
keeps a standby from grabbing an EIP in the half second a fresh session
needs to come up.
"""
from __future__ import annotations

import time


class Liveness:
    def __init__(self, grace: float = 3.0, clock=time.monotonic):
        self.grace = grace
        self.clock = clock
        self._was_up: set[str] = set()
        self._first_seen: dict[str, float] = {}

    def dead(self, states: dict[str, dict]) -> frozenset[str]:
        """``states``: peer -> its port's ``bfd_status`` (empty when BFD is off)."""
        now = self.clock()
        dead = set()
        for peer, status in states.items():
            self._first_seen.setdefault(peer, now)
            if not status:
                continue  # no BFD on this port: nothing to judge by
            up = status.get("state") == "up" and status.get("forwarding", "true") == "true"
            if up:
                self._was_up.add(peer)
            elif peer in self._was_up or now - self._first_seen[peer] >= self.grace:
                dead.add(peer)
        for gone in set(self._first_seen) - set(states):
            self._first_seen.pop(gone)
            self._was_up.discard(gone)
        return frozenset(dead)

    def reset(self) -> None:
        """Forget what was seen: every peer gets a fresh grace.  Used while
        this node is cut off, so that when the link heals, sessions that are
        slower to come back are not mistaken for dead peers."""
        self._was_up.clear()
        self._first_seen.clear()
