"""The agent's reconcile loop, independent of os-ken's event plumbing.

One pass: snapshot the state source and the allocation -> make sure the tunnel
ports exist -> read port numbers and MACs from OVSDB -> build the node view ->
``flows.build`` -> diff against what each connected bridge holds -> one atomic
bundle per bridge -> policy-routing rules.  A pass that fails changes nothing
it did not finish and is retried; the switch keeps the last good flows.
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import time
from dataclasses import dataclass, field

import netaddr

import flows
from flows.records import Flow
from flows.tables import table_id, table_names
from flows.view import NODE_IP_PORTS, NodeView, Ports
from sdn_egress.agent import announce, pmtu
from sdn_egress.agent.liveness import Liveness
from sdn_egress.agent.routing import (NEVER_HELD, Hold, HostRouting, address_mtu, local_addresses,
                                      resolve_next_hop_mac)
from sdn_egress.agent.switch import Switch, SwitchError
from sdn_egress.fileio import write_json_atomic
from sdn_egress.allocation import Allocation, AllocationStore
from sdn_egress.model import ClusterState
from sdn_egress.source import StateSource
from sdn_egress.view import NodeFacts, build_view, tunnel_peers, underlay_address

LOG = logging.getLogger(__name__)

BRIDGES = ("br-int", "br-ex")
RETRY_UNRESOLVED = 0.5  # seconds until a pass retries an unresolved next hop


class NotReady(RuntimeError):
    """No cluster state yet (the API server has not answered a first list)."""


@dataclass
class AgentConfig:
    node: str
    ovs_db: str
    status_dir: str | None = None
    egw: str = "egw0"
    resync_interval: float = 10.0  # full dump-and-diff, repairs drift
    poll_interval: float = 0.05  # how often BFD state and the sources are looked at
    bfd: dict | None = None  # Interface.bfd of the tunnels to gateways; None: no BFD
    bfd_grace: float = 10.0  # a peer never seen up counts as dead only after this
    tunnel_mtu: int | None = None  # None: derived from the underlay's MTU (pmtu.tunnel_mtu)
    # The new-pod hold (docs/pod-lifecycle.md): external traffic of a local pod
    # address not classified yet is dropped for at most this many seconds
    # (counted from when its route appeared); 0 or None: no hold.
    new_pod_hold: float | None = 5.0
    hold_poll: float = 0.25  # how often the pod routes are looked at for the hold's bound


def diff(desired: set[Flow], actual: set[Flow]) -> tuple[list[Flow], list[Flow]]:
    """(adds, deletes) turning ``actual`` into ``desired``.  A flow whose
    identity (table, priority, match) is kept but whose actions or cookie
    changed is re-added (an add replaces in place, no gap); identities that
    are no longer desired are deleted."""
    want = {f.key: f for f in desired}
    have = {f.key: f for f in actual}
    adds = [f for k, f in want.items() if have.get(k) != f]
    deletes = [f for k, f in have.items() if k not in want]
    return sorted(adds, key=_order), sorted(deletes, key=_order)


def _order(f: Flow):
    return (f.bridge, f.table, -f.priority, str(f.match))


@dataclass
class _BridgeState:
    switch: Switch
    installed: set[Flow] | None = None  # None: unknown, dump before diffing
    last_dump: float = 0.0


@dataclass
class PassResult:
    view: NodeView | None = None
    changes: dict[str, tuple[int, int]] = field(default_factory=dict)
    error: str | None = None


class AgentCore:
    def __init__(self, config: AgentConfig, source: StateSource, store: AllocationStore,
                 routing: HostRouting | None = None, metrics=None, reporter=None):
        """``store``: the controller's allocation (a status directory, or the
        Kubernetes ConfigMap's reader).  ``reporter``: told this agent's
        status after every pass (Kubernetes: its Lease); in standalone mode
        the status goes to ``STATUS/nodes/NODE.json``."""
        self.config = config
        self.reporter = reporter
        self.metrics = metrics
        self.source = source
        self.store = store
        self.routing = routing or HostRouting(config.egw)
        self._bridges: dict[str, _BridgeState] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ovs = None
        self._dpids: dict[int, str] = {}
        self._peers: dict[str, str] | None = None
        self._next_hops: dict[str, str] = {}
        self._alloc_mtime = None
        self._logged_errors: tuple = ()
        self._unresolved: list[str] = []
        self.liveness = Liveness(config.bfd_grace)
        self._dead: frozenset[str] = frozenset()
        self._held: set[str] = set()
        self._isolated = False
        self._ports_reserved = False
        self._recorded: dict | None = None
        self._tunnel_mtu: tuple[int, str] | None = None  # (MTU, how it was found)
        self.oversized = {"icmp": 0, "fragmented": 0, "dropped": 0}  # packet-ins of uplink_mtu
        self.last_good: tuple[ClusterState, Allocation] | None = None
        self._local_pods: dict[str, str] = {}
        self._hold: Hold | None = None
        self._next_hold_check = 0.0
        self.last_result = PassResult()
        self.passes = 0

    # -- OVSDB -------------------------------------------------------------------
    @property
    def ovs(self):
        if self._ovs is None:
            from ovs_setup import ovsdb
            self._ovs = ovsdb.connect(self.config.ovs_db)
        return self._ovs

    def bridge_of(self, dpid: int) -> str | None:
        if dpid not in self._dpids:
            from ovs_setup import ovsdb
            for br in BRIDGES:
                try:
                    self._dpids[ovsdb.bridge_dpid(self.ovs, br)] = br
                except Exception:  # noqa: BLE001 - bridge absent on this node
                    continue
        return self._dpids.get(dpid)

    # -- switch connections (called from os-ken's thread) --------------------
    def switch_up(self, switch: Switch) -> None:
        with self._lock:
            self._bridges[switch.bridge] = _BridgeState(switch)
        if self.metrics:
            self.metrics.switch_connected.labels(switch.bridge).set(1)
        LOG.info("switch %s (dpid %016x) connected", switch.bridge, switch.dpid)
        self._wake.set()

    def switch_down(self, bridge: str) -> None:
        with self._lock:
            self._bridges.pop(bridge, None)
        if self.metrics:
            self.metrics.switch_connected.labels(bridge).set(0)
        LOG.warning("switch %s disconnected; its flows stay as they are (fail_mode=secure)", bridge)

    def switch(self, bridge: str) -> Switch | None:
        with self._lock:
            st = self._bridges.get(bridge)
            return st.switch if st else None

    # -- the loop ------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        next_full = 0.0
        backoff = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            full = now >= next_full
            started = time.monotonic()
            try:
                self.reconcile(full=full)
                if self.metrics:
                    self.metrics.reconcile_seconds.observe(time.monotonic() - started)
                # An unresolved next hop is retried soon, not at the next
                # full resync: nothing else would wake the loop for it.
                backoff = RETRY_UNRESOLVED if self._unresolved else 0.0
            except NotReady as exc:
                LOG.warning("%s", exc)
                self.last_result = PassResult(error=str(exc))
                backoff = min(max(backoff * 2, 0.5), 5.0)
                self._write_status()
            except Exception as exc:  # noqa: BLE001 - the loop must live
                LOG.exception("reconcile failed: %s", exc)
                if self.metrics:
                    self.metrics.reconcile_errors.inc()
                self.last_result = PassResult(error=str(exc))
                backoff = min(max(backoff * 2, 0.5), 5.0)
                self._write_status()
            if full:
                next_full = now + self.config.resync_interval
            # Wait for a change of the source, of the allocation, or a switch event.
            deadline = time.monotonic() + max(backoff, self.config.poll_interval)
            while not self._stop.is_set():
                if self._wake.is_set():
                    self._wake.clear()
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if not backoff and (self._liveness_changed() or self.source.wait_for_change(0)
                                        or self._alloc_changed() or self._hold_due()):
                        break
                    if time.monotonic() >= next_full or backoff:
                        break
                    deadline = time.monotonic() + self.config.poll_interval
                    continue
                self._wake.wait(min(remaining, self.config.poll_interval))

    def _alloc_changed(self) -> bool:
        if hasattr(self.store, "changed"):
            return self.store.changed()  # the ConfigMap's informer tells
        path = getattr(self.store, "path", None)
        if path is None:
            return False
        try:
            st = os.stat(os.path.join(path, "allocation.json"))
            mtime = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            mtime = None
        if mtime != self._alloc_mtime:
            self._alloc_mtime = mtime
            return True
        return False

    def _bfd_states(self) -> dict[str, dict]:
        """peer -> bfd_status of its tunnel port (OVSDB, from the IDL's cache)."""
        if not self.config.bfd or not self._peers:
            return {}
        from ovs_setup import ovsdb
        status = ovsdb.bfd_status(self.ovs, "br-int")
        names = ovsdb.tunnel_port_names(self._peers)
        return {peer: status.get(names[peer], {}) for peer in self._peers}

    def _liveness_changed(self) -> bool:
        try:
            return self.liveness.dead(self._bfd_states()) != self._dead
        except Exception:  # noqa: BLE001 - judged again at the pass
            return False

    def snapshot(self) -> tuple[ClusterState, Allocation]:
        for what in (self.source, self.store):
            if not getattr(what, "synced", True):
                raise NotReady(f"waiting for the first answer of the API server ({type(what).__name__}); "
                               "the switches keep the flows they have, plus the tables' miss flows")
        self._alloc_changed()
        alloc = self.store.load() or Allocation()
        if hasattr(self.source, "remember"):  # the controller's incumbency, not this agent's memory
            self.source.remember(alloc.accepted)
        state = self.source.snapshot()
        if state.errors != self._logged_errors:
            for err in set(state.errors) - set(self._logged_errors):
                LOG.warning("invalid object ignored: %s", err)
            self._logged_errors = state.errors
        if self.config.node not in state.nodes:
            raise RuntimeError(f"Node {self.config.node} is not in the cluster state "
                               "(missing or invalid Node object); keeping the last good state")
        self.last_good = (state, alloc)
        return state, alloc

    def reconcile(self, full: bool = False) -> PassResult:
        with self._lock:
            bridges = dict(self._bridges)
        try:
            state, alloc = self.snapshot()
        except NotReady:
            self._bootstrap(bridges)
            raise
        self._sync_tunnels(state, alloc)
        gateway = any(self.config.node in a.nodes for a in alloc.eips)
        dead = self.liveness.judge(self._bfd_states(), gateway)
        if dead != self._dead:
            LOG.warning("BFD: gateway peers down: %s", ", ".join(sorted(dead)) or "none")
        self._dead = dead
        if self.metrics:
            self.metrics.bfd_peers_down.set(len(dead))
        if self.liveness.cut_off:
            # Every BFD session went down: far likelier that this node is cut
            # off than that all others died. Release the EIPs (stop SNAT and
            # ARP) so a healed link finds exactly one holder: the standby.
            if not self._isolated:
                LOG.warning("BFD: every peer is down; this node considers itself cut off and "
                            "holds no EIP until a session is up again")
            dead = dead | {self.config.node}
        elif self._isolated:
            LOG.warning("BFD: a session is up again; this node is no longer cut off")
        self._isolated = self.liveness.cut_off
        facts = self._facts(state, alloc, refresh=full, dead=dead)
        view = build_view(self.config.node, state, alloc, facts, dead=dead)
        desired = flows.build(view)
        result = PassResult(view=view)
        if self.config.status_dir and desired != self._recorded:
            from sdn_egress.debug.records import record_desired
            record_desired(self.config.status_dir, self.config.node, desired, view)
            self._recorded = desired
        for bridge, st in bridges.items():
            result.changes[bridge] = self._sync_bridge(st, desired.get(bridge, frozenset()), full)
        self._local_pods = local_addresses(state.pods.values(), self.config.node)  # both families
        self._hold = self._hold_of(state, view)
        self.routing.sync(view.steers, view.tunnel_mtu, local_pods=self._local_pods, hold=self._hold,
                          pod_cidrs=view.pod_cidrs)
        if any(h.node_ip for h in view.held) and not self._ports_reserved:
            self.routing.reserve_ports(*NODE_IP_PORTS)
            self._ports_reserved = True
        self._announce_new(view, bridges)
        self.passes += 1
        self.last_result = result
        self._write_status()
        return result

    def _hold_of(self, state: ClusterState, view: NodeView) -> Hold | None:
        if not self.config.new_pod_hold or not view.pod_cidrs:
            return None
        return Hold(pod_cidrs=tuple(view.pod_cidrs),
                    exempt=tuple(netaddr.cidr_merge(list(state.cluster_cidrs(4)) + list(state.cluster_cidrs(6))
                                                    + list(NEVER_HELD))),
                    bound=self.config.new_pod_hold)

    def _hold_due(self) -> bool:
        """A held pod address has reached the hold's bound (looked at every
        ``hold_poll`` seconds)."""
        if self._hold is None:
            return False
        now = time.monotonic()
        if now < self._next_hold_check:
            return False
        self._next_hold_check = now + self.config.hold_poll
        try:
            return self.routing.hold_due(self._hold, self._local_pods)
        except Exception:  # noqa: BLE001 - judged again at the pass
            return False

    def _bootstrap(self, bridges: dict[str, _BridgeState]) -> None:
        """Before any state: add the miss flow of every table that lacks it,
        delete nothing.  br-ex's NORMAL miss gives the node its own traffic
        back (after a fresh start of OVS the uplink bridge, fail_mode=secure,
        holds nothing: not even the way to the API server); br-int's drops
        keep what the host steers into it from leaving with the node IP."""
        base = flows.base.flows()
        for bridge, st in bridges.items():
            if st.installed is None:
                st.installed = st.switch.dump_flows(table_names(bridge))
            missing = [f for f in base if f.bridge == bridge and f not in st.installed]
            if missing:
                st.switch.apply(missing, [])
                st.installed |= set(missing)
                LOG.warning("%s: no cluster state yet; added the %d table-miss flows it lacked "
                            "(the node's own traffic passes, nothing is steered)", bridge, len(missing))

    def _sync_bridge(self, st: _BridgeState, desired: frozenset[Flow], full: bool) -> tuple[int, int]:
        names = table_names(st.switch.bridge)
        if st.installed is None or full:
            st.installed = st.switch.dump_flows(names)
            st.last_dump = time.monotonic()
        adds, deletes = diff(set(desired), st.installed)
        if adds or deletes:
            try:
                st.switch.apply(adds, deletes)
            except SwitchError:
                st.installed = None  # unknown now: dump again next pass
                if self.metrics:
                    self.metrics.flow_mod_errors.labels(st.switch.bridge).inc()
                raise
            if self.metrics:
                self.metrics.flow_mods.labels(st.switch.bridge, "add").inc(len(adds))
                self.metrics.flow_mods.labels(st.switch.bridge, "delete").inc(len(deletes))
            LOG.info("%s: %d flows added or replaced, %d removed (%d in all)",
                     st.switch.bridge, len(adds), len(deletes), len(desired))
        st.installed = set(desired)
        if self.metrics:
            self.metrics.flows.labels(st.switch.bridge).set(len(desired))
        return len(adds), len(deletes)

    def _sync_tunnels(self, state: ClusterState, alloc: Allocation) -> None:
        peers = tunnel_peers(self.config.node, state, alloc)
        if peers == self._peers:
            return
        from ovs_setup import ovsdb
        ovsdb.sync_tunnels(self.ovs, "br-int", peers, bfd=self.config.bfd)
        LOG.info("tunnels: Geneve ports to %s", ", ".join(f"{n} ({ip})" for n, ip in sorted(peers.items()))
                 or "no gateway peers")
        self._peers = peers

    def _announce_new(self, view: NodeView, bridges: dict) -> None:
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

    def _facts(self, state: ClusterState, alloc: Allocation, refresh: bool,
               dead: frozenset[str] = frozenset()) -> NodeFacts:
        from ovs_setup import ovsdb
        ports_int = ovsdb.ofports(self.ovs, "br-int")
        try:
            ports_ex = ovsdb.ofports(self.ovs, "br-ex")
        except Exception:  # noqa: BLE001 - br-ex only where there is an uplink
            ports_ex = {}
        tunnels = tuple(sorted((name[len("gnv-"):], port) for name, port in ports_int.items()
                               if name.startswith("gnv-") and name != "gnv-flow"))
        tunnels = tuple((self._peer_of_port(name), port) for name, port in tunnels)
        uplink = next((p for n, p in ports_ex.items() if n not in ("br-ex", "patch-ex-int")), 0)
        ports = Ports(egw=ports_int[self.config.egw], tun_flow=ports_int["gnv-flow"],
                      tunnels=tunnels, int_patch=ports_int.get("patch-int-ex", 0),
                      uplink=uplink, ex_patch=ports_ex.get("patch-ex-int", 0))
        egw_mac = ovsdb.iface_mac(self.ovs, self.config.egw)
        brex_mac = ovsdb.iface_mac(self.ovs, "br-ex") if ports_ex else egw_mac
        held = [a for a in alloc.eips
                if [n for n in a.nodes if n not in dead][:1] == [self.config.node]]
        hops, unresolved = {}, []
        for a in held:
            key = str(a.ip)
            mac = None if refresh else self._next_hops.get(key)
            if mac is None:
                mac = resolve_next_hop_mac(self._probe_destination(state, a), family=a.ip.version)
                if mac is None:
                    LOG.warning("EIP %s: next hop MAC not resolved yet; its traffic is dropped", key)
                    unresolved.append(key)
            if mac:
                hops[key] = mac
        self._next_hops = hops
        self._unresolved = unresolved
        if refresh or self._tunnel_mtu is None:
            self._tunnel_mtu = self._find_tunnel_mtu(state, ports_ex, uplink)
        return NodeFacts(ports=ports, egw_mac=egw_mac, brex_mac=brex_mac,
                         next_hop_macs=tuple(sorted(hops.items())), tunnel_mtu=self._tunnel_mtu[0])

    def _find_tunnel_mtu(self, state: ClusterState, ports_ex: dict, uplink: int) -> tuple[int, str]:
        """The tunnel MTU: the agent's --tunnel-mtu, else the underlay's MTU
        (the smaller of the uplink's and that of the interface holding the
        node's address, which native tunnelling sends from) minus the Geneve
        overhead of the node address's family."""
        if self.config.tunnel_mtu:
            return self.config.tunnel_mtu, "--tunnel-mtu"
        node_ip = underlay_address(state.nodes[self.config.node])  # IPv6 on an IPv6-only cluster
        found = []
        if node_ip is not None:
            mtu = address_mtu(str(node_ip))
            if mtu:
                found.append((mtu, f"the interface of {node_ip}"))
        name = next((n for n, p in ports_ex.items() if p == uplink), None) if uplink else None
        if name:
            from ovs_setup import ovsdb
            mtu = ovsdb.iface_mtu(self.ovs, name)
            if mtu:
                found.append((mtu, f"uplink {name}"))
        family = node_ip.version if node_ip is not None else 4
        if not found:
            LOG.warning("tunnel MTU: cannot read the underlay's MTU; assuming 1500")
            found = [(1500, "assumed")]
        underlay, where = min(found)
        mtu = pmtu.tunnel_mtu(underlay, family)
        if self._tunnel_mtu is None or self._tunnel_mtu[0] != mtu:
            LOG.info("tunnel MTU %d: underlay MTU %d (%s) minus %d bytes of IPv%d Geneve", mtu, underlay,
                     where, pmtu.GENEVE_OVERHEAD[family], family)
        return mtu, f"underlay {underlay} ({where}) - {pmtu.GENEVE_OVERHEAD[family]} (IPv{family} Geneve)"

    # -- packet-ins (called from os-ken's thread) ------------------------------------
    def packet_in(self, switch: Switch, cookie: int, data: bytes) -> None:
        """A packet ``uplink_mtu`` sent up: too big for the tunnel.  Answer the
        sender (ICMP frag-needed / packet too big) or send it back in
        fragments that fit; see :mod:`sdn_egress.agent.pmtu`."""
        from flows import cookie as C
        view = self.last_result.view
        if C.decode(cookie).feature == C.Feature.ND and view is not None and switch.bridge == "br-ex":
            announce.on_solicitation(switch, view, data)  # an IPv6 EIP's neighbour solicitation
            return
        if C.decode(cookie).feature != C.Feature.MTU or view is None or switch.bridge != "br-int":
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

    def _peer_of_port(self, suffix: str) -> str:
        # sync_tunnels names ports gnv-<peer> (hashed when that cannot be); map back.
        from ovs_setup import ovsdb
        for peer, name in ovsdb.tunnel_port_names(self._peers or {}).items():
            if name == f"gnv-{suffix}":
                return peer
        return suffix

    @staticmethod
    def _probe_destination(state: ClusterState, assignment) -> str | None:
        """An address the EIP's traffic goes to, to find its next hop: the
        first policy destination; None (the default route) when the policies
        steer everything outside the cluster."""
        for key in assignment.policies:
            policy = state.policies.get(key)
            nets = [d for d in policy.dest_subnets if d.version == assignment.ip.version] if policy else []
            if nets:  # of the EIP's family: an IPv6 EIP's next hop is an IPv6 neighbour
                net = nets[0]
                return str(net[1] if net.size > 2 else net[0])
        return None

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
        with self._lock:
            connected = sorted(self._bridges)
            counts = {b: len(st.installed) for b, st in self._bridges.items() if st.installed is not None}
        view = self.last_result.view
        return {
            "node": self.config.node,
            "pid": os.getpid(),
            "time": time.time(),
            "switches": {b: {"connected": b in connected, "flows": counts.get(b)} for b in BRIDGES},
            "passes": self.passes,
            "error": self.last_result.error,
            "steers": len(view.steers) if view else 0,
            "held_eips": [str(h.eip) for h in view.held] if view else [],
            "dead_peers": sorted(self._dead),
            "isolated": self._isolated,
            "tunnels": dict(sorted((self._peers or {}).items())),
            "tunnel_mtu": view.tunnel_mtu if view else None,
            "tunnel_mtu_source": self._tunnel_mtu[1] if self._tunnel_mtu else None,
            "mss": view.tunnel_mtu - 40 if view else None,
            # IPv6 steered (its route into egw0 carries max(tunnel MTU, 1280)): its MSS clamp
            "mss_v6": (max(view.tunnel_mtu, 1280) - 60
                       if view and any(s.pod_ip.version == 6 for s in view.steers) else None),
            "oversized": dict(self.oversized),
            "bfd": self._bfd_report(),
            "new_pod_hold": ({"bound": self._hold.bound, **getattr(self.routing, "hold_state", {})}
                             if self._hold else None),
        }

    def _bfd_report(self) -> dict[str, str]:
        """tunnel port -> BFD state for ``sdn-egress status`` (which cannot
        reach another node's OVSDB on a real cluster)."""
        from ovs_setup import ovsdb
        try:
            states = self._bfd_states()
        except Exception:  # noqa: BLE001 - OVSDB away: nothing to report
            return {}
        return {ovsdb.tunnel_port_name(peer): st.get("state", "?") + (
                    "" if st.get("forwarding") == "true" else " (not forwarding)")
                for peer, st in sorted(states.items()) if st}

    def _write_status(self) -> None:
        if self.reporter is not None:
            self.reporter.report(self.status())
        if not self.config.status_dir:
            return
        write_json_atomic(os.path.join(self.config.status_dir, "nodes", f"{self.config.node}.json"), self.status())
