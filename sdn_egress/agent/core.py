"""The agent's reconcile loop, independent of os-ken's event plumbing.

One pass: snapshot the state source and the allocation -> make sure the tunnel
ports exist -> judge the peers' liveness from BFD -> read port numbers and
MACs from OVSDB -> build the node view -> ``flows.build`` -> diff against what
each connected bridge holds -> one atomic bundle per bridge -> policy-routing
rules -> gratuitous ARPs for EIPs just taken over -> status.  A pass that
fails changes nothing it did not finish and is retried; the switch keeps the
last good flows.

Each step is an object of its own, and the core reaches the node only through
small interfaces, so the unit tests run it against fakes:
:class:`~sdn_egress.agent.nodedb.NodeDb` (the node's OVSDB),
:class:`~sdn_egress.agent.switch.SwitchPort` (a connected bridge),
:class:`~sdn_egress.agent.hoststep.HostRoutes` (the kernel's routing), the
state source, the :class:`~sdn_egress.allocation.AllocationReader` and
the :class:`~sdn_egress.reports.StatusWriter` s.
"""
from __future__ import annotations

import gc
import logging
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import flows
from flows.tables import table_id
from flows.view import NodeView
from sdn_egress.agent import announce, pmtu

from sdn_egress.agent.bridges import BridgeState, Bridges
from sdn_egress.agent.facts import NodeReader
from sdn_egress.agent.hoststep import HostRoutes, HostStep
from sdn_egress.agent.liveness import PeerWatch
from sdn_egress.agent.nodedb import NodeDb, OvsdbNode
from sdn_egress.agent.switch import SwitchPort
from sdn_egress.allocation import Allocation, AllocationReader
from sdn_egress.backoff import Backoff
from sdn_egress.model import ClusterState
from sdn_egress.reports import StatusWriter
from sdn_egress.source import StateSource
from sdn_egress.view import build_view, contested_eips, gateway_nodes

LOG = logging.getLogger(__name__)

BRIDGES = ("br-int", "br-ex")
RETRY_UNRESOLVED = 0.5  # seconds until a pass retries an unresolved next hop
HEAP_RESET_INTERVAL = 3600.0  # seconds between full collections of the frozen heap (settle_heap)
# Allocations between two collections of the youngest generation (Python's default: 700).  Each
# collection walks every young container, and a pass makes a few that hold every node (the
# snapshot's): at the default an event's pass of a few ms met two or three collections.
YOUNG_GC_THRESHOLD = 10_000


class NotReady(RuntimeError):
    """No cluster state yet (the API server has not answered a first list)."""


@dataclass
class AgentConfig:
    node: str
    ovs_db: str
    status_dir: str | None = None  # where the desired flows are recorded for the debug commands
    egw: str = "egw0"
    resync_interval: float = 10.0  # full dump-and-diff, repairs drift
    poll_interval: float = 0.05  # how often BFD state and the sources are looked at
    bfd: dict | None = None  # Interface.bfd of the tunnels to gateways; None: no BFD
    bfd_grace: float = 10.0  # a peer never seen up counts as dead only after this
    failback_hold: float = 10.0  # after a cut heals: at most this long holding nothing (liveness.PeerWatch)
    tunnel_mtu: int | None = None  # None: derived from the underlay's MTU (pmtu.tunnel_mtu)
    # The new-pod hold (docs/pod-lifecycle.md): external traffic of a local pod
    # address not classified yet is dropped for at most this many seconds
    # (counted from when its route appeared); 0 or None: no hold.
    new_pod_hold: float | None = 5.0
    hold_poll: float = 0.25  # how often the pod routes are looked at for the hold's bound


@dataclass
class PassResult:
    view: NodeView | None = None
    changes: dict[str, tuple[int, int]] = field(default_factory=dict)
    error: str | None = None


class AgentCore:
    def __init__(self, config: AgentConfig, source: StateSource, store: AllocationReader,
                 routing: HostRoutes | None = None, metrics=None, writers: Sequence[StatusWriter] = (),
                 db: NodeDb | None = None, node: NodeReader | None = None):
        """``store``: the controller's allocation.  ``writers``: told this
        agent's status after every pass (standalone: ``STATUS/nodes/NODE.json``;
        Kubernetes: its Lease).  ``db``: the node's OVSDB (default: the one
        at ``config.ovs_db``); ``node``: what reads the node's facts through it
        (default: with the host's next hops and MTUs)."""
        if routing is None:
            from sdn_egress.agent.routing import HostRouting
            routing = HostRouting(config.egw)
        self.config = config
        self.metrics = metrics
        self.source = source
        self.store = store
        self.writers = tuple(writers)
        self.db = db or OvsdbNode(config.ovs_db)
        self.node = node or NodeReader(config.node, self.db, egw=config.egw, bfd=config.bfd,
                                       tunnel_mtu=config.tunnel_mtu)
        self.bridges = Bridges(metrics)
        self.peers = PeerWatch(config.node, config.bfd_grace, failback_hold=config.failback_hold)
        self.host = HostStep(config.node, routing, config.new_pod_hold, config.hold_poll)
        self._wake = threading.Event()
        for what in (source, store):  # a change wakes the loop at once (else: its next poll)
            if callable(getattr(what, "on_change", None)):
                what.on_change(self._wake.set)
        self._stop = threading.Event()
        self._stopped = threading.Event()  # run() has returned
        self._dpids: dict[int, str] = {}
        self._logged_errors: tuple = ()
        self._held: set[str] = set()
        self._recorded: dict | None = None
        self.oversized = {"icmp": 0, "fragmented": 0, "dropped": 0}  # packet-ins of uplink_mtu
        self.last_result = PassResult()
        self.passes = 0
        # What the last pass computed per object (steers, return routes, their
        # flows), so a pass redoes only what changed; a full pass starts afresh.
        self._view_memo = flows.Memo()
        self._flow_memo = flows.Memo()
        self._v6_of: tuple = (None, False)  # (the last view, whether it steers IPv6)
        self._heap_reset_due = 0.0  # when settle_heap collects the whole heap again

    # -- switch connections (called from os-ken's thread) --------------------
    def bridge_of(self, dpid: int) -> str | None:
        if dpid not in self._dpids:
            for br in BRIDGES:
                try:
                    self._dpids[self.db.bridge_dpid(br)] = br
                except Exception:  # noqa: BLE001 - bridge absent on this node
                    continue
        return self._dpids.get(dpid)

    def switch_up(self, switch: SwitchPort) -> None:
        self.bridges.up(switch)
        LOG.info("switch %s (dpid %016x) connected", switch.bridge, switch.dpid)
        self._wake.set()

    def switch_down(self, bridge: str) -> None:
        self.bridges.down(bridge)
        LOG.warning("switch %s disconnected; its flows stay as they are (fail_mode=secure)", bridge)

    def switch(self, bridge: str) -> SwitchPort | None:
        return self.bridges.switch(bridge)

    # -- the loop ------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        next_full = 0.0
        backoff = Backoff(most=5.0)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                full = now >= next_full
                self.run_pass(full, backoff)
                if full:
                    next_full = now + self.config.resync_interval
                    if self.last_result.error is None:
                        self.settle_heap(now)
                self._wait(next_full, backoff)
        finally:
            self._stopped.set()

    def settle_heap(self, now: float) -> None:
        """After a full pass: collect what is garbage and freeze the rest
        (``gc.freeze``), so that the collector no longer scans the
        long-lived state (informer caches, cluster state, memos): a pass
        after an event then never meets a full collection of it (0.2 s at
        5,000 nodes), only one of what came since the last full pass.  Each
        call collects the young generations; what was frozen (or grew old
        since) and became cyclic garbage is reclaimed by a whole collection
        every :data:`HEAP_RESET_INTERVAL` (the first call makes one).  The
        youngest generation is collected every :data:`YOUNG_GC_THRESHOLD`
        allocations, not Python's 700."""
        if gc.get_threshold()[0] < YOUNG_GC_THRESHOLD:
            gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
        if now >= self._heap_reset_due:
            gc.unfreeze()
            self._heap_reset_due = now + HEAP_RESET_INTERVAL
            gc.collect()
        else:
            gc.collect(1)  # the young generations: what the pass made and dropped
        gc.freeze()

    def wait_stopped(self, timeout: float) -> bool:
        """After :meth:`stop`: wait for the pass under way to end."""
        return self._stopped.wait(timeout)

    def run_pass(self, full: bool, backoff: Backoff) -> None:
        """One pass that never raises: a failure is logged, reported and
        makes ``backoff`` longer."""
        started = time.monotonic()
        try:
            self.reconcile(full=full)
            if self.metrics:
                self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            # An unresolved next hop is retried soon, not at the next
            # full resync: nothing else would wake the loop for it.
            backoff.succeeded(retry=RETRY_UNRESOLVED if self.node.unresolved else 0.0)
        except NotReady as exc:
            LOG.warning("%s", exc)
            self._failed(exc, backoff)
        except Exception as exc:  # noqa: BLE001 - the loop must live
            LOG.exception("reconcile failed: %s", exc)
            if self.metrics:
                self.metrics.reconcile_errors.inc()
            self._failed(exc, backoff)

    def _failed(self, exc: Exception, backoff: Backoff) -> None:
        self.last_result = PassResult(error=str(exc))
        backoff.failed()
        self._write_status()

    def _wait(self, next_full: float, backoff: Backoff) -> None:
        """Until a change of the source, of the allocation, of BFD, the hold's
        bound, a switch event, the next full pass or the end of ``backoff``."""
        deadline = time.monotonic() + max(backoff.delay, self.config.poll_interval)
        while not self._stop.is_set():
            if self._wake.is_set():
                self._wake.clear()
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if not backoff and self._something_changed():
                    return
                if time.monotonic() >= next_full or backoff:
                    return
                deadline = time.monotonic() + self.config.poll_interval
                continue
            self._wake.wait(min(remaining, self.config.poll_interval))

    def _something_changed(self) -> bool:
        return (self._liveness_changed() or self.source.wait_for_change(0) or self.store.changed()
                or self.host.hold_due())

    def _liveness_changed(self) -> bool:
        try:
            return self.peers.changed(self.node.bfd_states())
        except Exception:  # noqa: BLE001 - judged again at the pass
            return False

    # -- one pass ------------------------------------------------------------------
    def snapshot(self) -> tuple[ClusterState, Allocation]:
        for what in (self.source, self.store):
            if not what.synced:
                raise NotReady(f"waiting for the first answer of the API server ({type(what).__name__}); "
                               "the switches keep the flows they have, plus the tables' miss flows")
        self.store.changed()  # what is read now is seen
        alloc = self.store.load() or Allocation()
        self.source.remember(alloc.accepted)  # the controller's incumbency, not this agent's memory
        state = self.source.snapshot()
        if state.errors != self._logged_errors:
            for err in set(state.errors) - set(self._logged_errors):
                LOG.warning("invalid object ignored: %s", err)
            self._logged_errors = state.errors
        if self.config.node not in state.nodes:
            raise RuntimeError(f"Node {self.config.node} is not in the cluster state "
                               "(missing or invalid Node object); keeping the last good state")
        return state, alloc

    def reconcile(self, full: bool = False) -> PassResult:
        bridges = self.bridges.connected()
        try:
            state, alloc = self.snapshot()
        except NotReady:
            self.bridges.bootstrap(bridges)
            raise
        self.node.sync_tunnels(state, alloc)
        gateways = gateway_nodes(alloc.eips)
        gateway = self.config.node in gateways
        dead = self.peers.judge(self.node.bfd_states(), gateway, expected=gateways,
                                contested=lambda d: contested_eips(self.config.node, alloc, d))
        self.node.set_path_down(self.peers.path_down)
        if self.metrics:
            self.metrics.bfd_peers_down.set(len(self.peers.dead))
        facts = self.node.facts(state, alloc, refresh=full, dead=dead)
        if full:
            self._view_memo.clear()
            self._flow_memo.clear()
        view = build_view(self.config.node, state, alloc, facts, dead=dead, memo=self._view_memo)
        desired = flows.build(view, self._flow_memo)
        self._record(desired, view)
        result = PassResult(view=view, changes=self.bridges.sync(bridges, desired, full))
        self.host.sync(state, view)
        self._announce_new(view, bridges)
        self.passes += 1
        self.last_result = result
        self._write_status()
        return result

    def _record(self, desired: dict, view: NodeView) -> None:
        """The desired flows, for the debug commands (when there is a status directory)."""
        if self.config.status_dir and desired != self._recorded:
            from sdn_egress.reports.flowrecords import record_desired
            record_desired(self.config.status_dir, self.config.node, desired, view)
            self._recorded = desired

    def _announce_new(self, view: NodeView, bridges: dict[str, BridgeState]) -> None:
        """Gratuitous ARPs for EIPs this node has just started to hold, so the
        router and hosts on the uplink move to this node's MAC at once."""
        # A node's own address (useNodeIP) is the host's to answer: no announcement.
        held = {str(h.eip) for h in view.held if not h.node_ip}
        new = held - self._held
        st = bridges.get("br-ex")
        if new and st is not None and view.ports.uplink:
            for eip in sorted(new):
                LOG.warning("EIP %s: now held by this node; announcing it (%s)", eip,
                            "neighbour advertisements" if ":" in eip else "gratuitous ARP")
                if self.metrics:
                    self.metrics.failovers.labels(eip).inc()
                announce.announce(st.switch, eip, view.brex_mac, view.ports.uplink)
            self._held = held
        elif not new:
            self._held = held

    # -- packet-ins (called from os-ken's thread) ------------------------------------
    def packet_in(self, switch: SwitchPort, cookie: int, data: bytes, tunnel_src: str | None = None) -> None:
        """A packet a flow sent up, by the flow's cookie: an IPv6 EIP's
        neighbour solicitation (answered), a BFD packet on gnv-flow
        (``tunnel_src``: its tunnel's source; the next pass makes a port to
        that node), or a packet ``uplink_mtu`` found too big for the tunnel:
        answer the sender (ICMP frag-needed / packet too big) or send it back
        in fragments that fit; see :mod:`sdn_egress.agent.pmtu`."""
        from flows import cookie as C
        view = self.last_result.view
        feature = C.decode(cookie).feature
        if feature == C.Feature.ND and view is not None and switch.bridge == "br-ex":
            announce.on_solicitation(switch, view, data)  # an IPv6 EIP's neighbour solicitation
            return
        if feature == C.Feature.SENDER and switch.bridge == "br-int":
            if self.node.heard(tunnel_src):
                self._wake.set()
            return
        if feature != C.Feature.MTU or view is None or switch.bridge != "br-int":
            return
        if not view.ports.int_patch:
            return
        held = frozenset(str(h.eip) for h in view.held)
        try:
            ans = pmtu.answer(data, view.tunnel_mtu, held)
        except (ValueError, IndexError, struct.error) as exc:
            ans = pmtu.Answer(dropped=f"cannot parse: {exc}")
        if ans.dropped:
            self.oversized["dropped"] += 1
            LOG.debug("oversized packet dropped: %s", ans.dropped)
            return
        for frame in ans.to_sender:
            switch.packet_out(frame, view.ports.int_patch)
        if ans.to_sender:
            self.oversized["icmp"] += 1
        if ans.fragments:
            self.oversized["fragmented"] += 1
            table = table_id("br-int", "uplink_mtu")
            for frame in ans.fragments:
                switch.packet_out_to_table(frame, table)

    def egress_by_policy(self) -> dict[str, tuple[int, int]]:
        """policy -> (packets, bytes) its selected pods sent, summed over the
        STEER flows' statistics on br-int (read from the switch now)."""
        from flows import cookie as C
        switch = self.switch("br-int")
        view = self.last_result.view
        if switch is None or view is None:
            return {}
        names = {C.stable_hash(s.policy, 24): s.policy for s in view.steers}
        out: dict[str, tuple[int, int]] = {}
        for stat in switch.flow_stats():
            ck = C.decode(stat.cookie)
            if ck.feature == C.Feature.STEER and ck.policy_hash in names:
                p, b = out.get(names[ck.policy_hash], (0, 0))
                out[names[ck.policy_hash]] = (p + stat.packet_count, b + stat.byte_count)
        return out

    # -- status for operators --------------------------------------------------------
    def status(self) -> dict:
        counts = self.bridges.counts()
        view = self.last_result.view
        mtu = self.node.tunnel_mtu
        return {
            "node": self.config.node,
            "pid": os.getpid(),
            "time": time.time(),
            "switches": {b: {"connected": b in counts, "flows": counts.get(b)} for b in BRIDGES},
            "passes": self.passes,
            "error": self.last_result.error,
            "steers": len(view.steers) if view else 0,
            "held_eips": [str(h.eip) for h in view.held] if view else [],
            "dead_peers": sorted(self.peers.dead),
            "isolated": self.peers.isolated,
            "rejoining": self.peers.rejoining_since is not None,
            "tunnels": dict(sorted((self.node.peers or {}).items())),
            "tunnel_mtu": view.tunnel_mtu if view else None,
            "tunnel_mtu_source": mtu[1] if mtu else None,
            "mss": view.tunnel_mtu - 40 if view else None,
            # IPv6 steered (its route into egw0 carries max(tunnel MTU, 1280)): its MSS clamp
            "mss_v6": (max(view.tunnel_mtu, 1280) - 60 if view and self._steers_v6(view) else None),
            "oversized": dict(self.oversized),
            "bfd": self.node.bfd_report(),
            "new_pod_hold": self.host.status(),
        }

    def _steers_v6(self, view: NodeView) -> bool:
        """Whether the view steers IPv6 (looked at once per view, not at every
        status): a steer's EIP is of its family and has a route in the view,
        so the routes tell it without a look at every steer."""
        if self._v6_of[0] is not view:
            self._v6_of = (view, any(r.eip.version == 6 for r in view.eip_routes))
        return self._v6_of[1]

    def _write_status(self) -> None:
        status = self.status()
        for writer in self.writers:
            writer.report(status)
