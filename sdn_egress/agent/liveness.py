"""Which gateway peers this node's BFD sessions see dead.

A peer counts as dead when its Geneve port's BFD session is not up and either
it was up before (a real failure) or it has never come up for ``grace``
seconds (a peer that is already dead when this agent starts).  The grace
keeps a standby from grabbing an EIP in the half second a fresh session
needs to come up.
"""
from __future__ import annotations

import logging
import time

LOG = logging.getLogger(__name__)


def _up(status: dict) -> bool:
    return status.get("state") == "up" and status.get("forwarding", "true") == "true"


class Liveness:
    def __init__(self, grace: float = 3.0, clock=time.monotonic):
        self.grace = grace
        self.clock = clock
        self.cut_off = False
        self._was_up: set[str] = set()
        self._first_seen: dict[str, float] = {}

    def judge(self, states: dict[str, dict], gateway: bool,
              expected: frozenset[str] | set[str] | None = None) -> frozenset[str]:
        """``dead(states)``, and whether this node is cut off (``cut_off``).

        A gateway node that sees *every* peer dead is far likelier cut off
        than alone alive, so it holds no EIP: it is cut off from then until
        one of its sessions is up again.  Then every peer gets a fresh grace,
        so sessions slower to come back are not taken for dead peers.  A
        worker is never cut off in this sense (it holds nothing): its peers
        are just dead.

        ``expected``: the peers whose session must come up (the gateway
        nodes: every gateway node keeps a port to every node); None: all.  A
        gateway node also has a port to every worker, but a worker keeps one
        back only while its pods use the gateway, so a worker's session that
        never came up is idle, not a dead peer: it neither counts as dead nor
        makes this node cut off."""
        dead = self.dead(states, expected)
        if self.cut_off:
            if any(_up(s) for s in states.values()):
                self.cut_off = False
                self.reset()
                dead = self.dead(states, expected)
        else:
            judged = {p for p in states if expected is None or p in expected or p in self._was_up}
            if gateway and judged and dead >= judged:
                self.cut_off = True
        return dead

    def dead(self, states: dict[str, dict], expected: frozenset[str] | set[str] | None = None) -> frozenset[str]:
        """``states``: peer -> its port's ``bfd_status`` (empty when BFD is off);
        ``expected``: see :meth:`judge`."""
        now = self.clock()
        dead = set()
        for peer, status in states.items():
            self._first_seen.setdefault(peer, now)
            if not status:
                continue  # no BFD on this port: nothing to judge by
            if _up(status):
                self._was_up.add(peer)
            elif peer in self._was_up or (now - self._first_seen[peer] >= self.grace
                                          and (expected is None or peer in expected)):
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


class PeerWatch:
    """The liveness step of a pass: which peers are dead, and whether this
    node is cut off, logged when that changes."""

    def __init__(self, node: str, grace: float, clock=time.monotonic):
        self.node = node
        self.liveness = Liveness(grace, clock)
        self.dead: frozenset[str] = frozenset()
        self.expected: frozenset[str] | None = None
        self.isolated = False

    def changed(self, states: dict[str, dict]) -> bool:
        """Would a pass now see other peers dead than the last one did?"""
        return self.liveness.dead(states, self.expected) != self.dead

    def judge(self, states: dict[str, dict], gateway: bool,
              expected: frozenset[str] | None = None) -> frozenset[str]:
        """The nodes the view must treat as dead: the dead peers, and this
        node itself while it is cut off (``expected``: see :meth:`Liveness.judge`)."""
        self.expected = expected
        dead = self.liveness.judge(states, gateway, expected)
        if dead != self.dead:
            LOG.warning("BFD: gateway peers down: %s", ", ".join(sorted(dead)) or "none")
        self.dead = dead
        if self.liveness.cut_off:
            # Every BFD session went down: far likelier that this node is cut
            # off than that all others died. Release the EIPs (stop SNAT and
            # ARP) so a healed link finds exactly one holder: the standby.
            if not self.isolated:
                LOG.warning("BFD: every peer is down; this node considers itself cut off and "
                            "holds no EIP until a session is up again")
            dead = dead | {self.node}
        elif self.isolated:
            LOG.warning("BFD: a session is up again; this node is no longer cut off")
        self.isolated = self.liveness.cut_off
        return dead
