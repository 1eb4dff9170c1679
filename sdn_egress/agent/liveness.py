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
from typing import Callable, Iterable

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
        # The last dead() call's input and until when its answer holds for
        # that input (a peer that never came up turns dead at its grace's end).
        self._judged: tuple | None = None
        self._holds_until = 0.0

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
        nodes: every gateway node keeps a port to every other one); None:
        all.  A gateway node also has a port to each worker it heard BFD
        from, but a worker keeps one back only while its pods use the
        gateway, so a worker's session that never came up is idle, not a
        dead peer: it neither counts as dead nor makes this node cut off."""
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
        judged = self._judged
        if judged is not None and judged[0] is states and judged[1] is expected and now < self._holds_until:
            return judged[2]  # the same states object (nothing changed in OVSDB): the same answer
        dead = set()
        holds_until = float("inf")
        for peer, status in states.items():
            first = self._first_seen.setdefault(peer, now)
            if not status:
                continue  # no BFD on this port: nothing to judge by
            if _up(status):
                self._was_up.add(peer)
            elif peer in self._was_up:
                dead.add(peer)
            elif expected is None or peer in expected:
                if now - first >= self.grace:
                    dead.add(peer)
                else:
                    holds_until = min(holds_until, first + self.grace)
        if len(self._first_seen) != len(states):
            for gone in set(self._first_seen) - set(states):
                self._first_seen.pop(gone)
                self._was_up.discard(gone)
        out = frozenset(dead)
        self._judged, self._holds_until = (states, expected, out), holds_until
        return out

    def reset(self) -> None:
        """Forget what was seen: every peer gets a fresh grace.  Used while
        this node is cut off, so that when the link heals, sessions that are
        slower to come back are not mistaken for dead peers."""
        self._was_up.clear()
        self._first_seen.clear()
        self._judged = None


class PeerWatch:
    """The liveness step of a pass: which peers are dead, whether this node
    is cut off, and whether it is rejoining after a cut, logged when that
    changes.

    Rejoining: when a cut-off node's link heals, a standby holds its EIPs
    and the controller will list that standby first, but only once it has
    seen the takeover.  Until then the healed node would find itself first
    again and take the EIPs back (and the workers' bundles would follow it):
    a fail-back nobody asked for.  So from the cut on, the node tells its
    peers through BFD that it forwards nothing (``cpath_down``: their
    sessions to it stay up but not forwarding, which makes their bundles and
    their liveness skip it), and after the heal it stays so and holds nothing
    while any EIP it would hold is held by a live peer (``contested``), at
    most ``failback_hold`` seconds: with the controller alive that ends as
    soon as it has re-ordered; without one, the old order returns after the
    hold, all nodes switching on the same BFD signal."""

    def __init__(self, node: str, grace: float, clock=time.monotonic, failback_hold: float = 10.0):
        self.node = node
        self.clock = clock
        self.liveness = Liveness(grace, clock)
        self.failback_hold = failback_hold
        self.dead: frozenset[str] = frozenset()
        self.expected: frozenset[str] | None = None
        self.isolated = False
        self.rejoining_since: float | None = None

    @property
    def path_down(self) -> bool:
        """Should this node's BFD sessions say it forwards nothing
        (cut off, or rejoining)?"""
        return self.isolated or self.rejoining_since is not None

    def changed(self, states: dict[str, dict]) -> bool:
        """Would a pass now see other peers dead than the last one did (or
        has the rejoining hold run out)?"""
        return self.liveness.dead(states, self.expected) != self.dead or self.rejoin_due()

    def rejoin_due(self) -> bool:
        return (self.rejoining_since is not None
                and self.clock() - self.rejoining_since >= self.failback_hold)

    def judge(self, states: dict[str, dict], gateway: bool,
              expected: frozenset[str] | None = None,
              contested: Callable[[frozenset[str]], Iterable[str]] = lambda dead: ()) -> frozenset[str]:
        """The nodes the view must treat as dead: the dead peers, and this
        node itself while it is cut off or rejoining (``expected``: see
        :meth:`Liveness.judge`; ``contested(dead)``: the EIPs this node would
        hold with those peers dead that a live peer may hold now)."""
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
            self.isolated = True
            self.rejoining_since = None
            return dead | {self.node}
        if self.isolated:
            LOG.warning("BFD: a session is up again; this node is no longer cut off; it forwards "
                        "nothing while a live peer may hold its EIPs (at most %.0f s)", self.failback_hold)
            self.isolated = False
            self.rejoining_since = self.clock()
        if self.rejoining_since is None:
            return dead
        waiting = sorted(contested(dead))
        if not waiting:
            LOG.warning("BFD: rejoined; no EIP this node would hold is held elsewhere")
        elif self.rejoin_due():
            LOG.warning("BFD: rejoined: the allocation still lists this node first after %.0f s; taking back %s",
                        self.failback_hold, ", ".join(waiting))
        else:
            return dead | {self.node}
        self.rejoining_since = None
        return dead
