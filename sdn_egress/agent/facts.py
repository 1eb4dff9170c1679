"""The node's own facts for a pass: the Geneve ports to the peers it needs,
port numbers and MACs from OVSDB, BFD states, the next hop of each EIP it
holds and the tunnel MTU.  Everything it reads goes through a
:class:`~sdn_egress.agent.nodedb.NodeDb` and two host look-ups, so the unit
tests give it a node of their own."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import netaddr

from flows.memo import Memo
from flows.view import Ports
from ovs_setup.ovsdb import FLOW_PORT, TUNNEL_PREFIX, tunnel_port_names
from sdn_egress.agent import pmtu
from sdn_egress.agent.nodedb import NodeDb
from sdn_egress.agent.routing import address_mtu, resolve_next_hop_mac
from sdn_egress.allocation import Allocation
from sdn_egress.model import ClusterState
from sdn_egress.view import NodeFacts, gateway_nodes, tunnel_peers, underlay_address

LOG = logging.getLogger(__name__)

# A gateway node's port to a node it heard BFD from goes when that session has
# not been up for this long (the node dropped its port, or is gone): seconds.
SENDER_IDLE = 60.0
# At most this many addresses of no node are remembered as warned about (a
# host sending Geneve to a gateway may make up any number of them).
UNKNOWN_WARNED_MAX = 1024


class NodeReader:
    """``next_hop_mac(destination)``: the MAC of the uplink's next hop towards
    an address (None: not resolved); ``address_mtu(ip)``: the MTU of the
    interface holding an address.  Both default to the host's."""

    def __init__(self, node: str, db: NodeDb, *, egw: str = "egw0", bfd: dict | None = None,
                 tunnel_mtu: int | None = None,
                 next_hop_mac: Callable[..., str | None] = resolve_next_hop_mac,
                 address_mtu: Callable[[str], int | None] = address_mtu,
                 clock: Callable[[], float] = time.monotonic):
        self.node = node
        self.db = db
        self.egw = egw
        self.bfd = bfd
        self.configured_mtu = tunnel_mtu
        self.next_hop_mac = next_hop_mac
        self.address_mtu = address_mtu
        self.peers: dict[str, str] | None = None  # peer -> underlay address, as last synced
        self.path_down = False  # the tunnels' BFD says this node forwards nothing (cpath_down)
        self.port_names: dict[str, str] = {}  # peer -> its tunnel port
        self._peer_of_port: dict[str, str] = {}  # the reverse, built once per change of peers
        self._bfd_states: tuple | None = None  # (the read, the peers, what bfd_states made of them)
        self._next_hops: dict[str, str] = {}
        self._held_eips: tuple = (None, None, [])  # (the EIP assignments, the dead, those this node holds)
        self._gateways_memo = Memo()  # each local pod's gateway nodes, while it and its policies stay
        self.unresolved: list[str] = []
        self.tunnel_mtu: tuple[int, str] | None = None  # (MTU, how it was found)
        self.clock = clock
        # A gateway node's senders: node -> when its BFD was last heard or up.
        self.senders: dict[str, float] = {}
        self._heard: set[str] = set()  # tunnel sources of BFD on gnv-flow (from os-ken's thread)
        self._heard_lock = threading.Lock()
        self._unknown_warned: set[str] = set()  # addresses of no node, warned about once
        self._senders_judged: tuple = (None, 0.0)  # (the BFD states, until when no sender idles out)

    # -- tunnels and BFD -------------------------------------------------------------
    def heard(self, address: str) -> bool:
        """A BFD packet came from ``address`` (its tunnel's source) on
        gnv-flow: that node has a port to this one, this one none back yet.
        Called from os-ken's thread; the next pass makes the port (True: an
        address not heard since the last pass)."""
        try:
            address = str(netaddr.IPAddress(address))
        except (netaddr.AddrFormatError, TypeError, ValueError):
            LOG.warning("BFD on gnv-flow without a usable tunnel source (%r): ignored", address)
            return False
        with self._heard_lock:
            new = address not in self._heard
            self._heard.add(address)
        return new

    def sync_tunnels(self, state: ClusterState, alloc: Allocation) -> None:
        gateways = gateway_nodes(alloc.eips)
        keep = self.peers
        if keep is None:  # a (re)start: the ports already there stay, see _ports_at_start
            keep = self._ports_at_start(state, gateways)
        self._track_senders(state, gateways)
        peers = tunnel_peers(self.node, state, alloc, keep=keep, memo=self._gateways_memo,
                             senders=self.senders)
        if peers == self.peers:
            return
        self.db.sync_tunnels("br-int", peers, self._bfd())
        LOG.info("tunnels: Geneve ports to %s", ", ".join(f"{n} ({ip})" for n, ip in sorted(peers.items()))
                 or "no gateway peers")
        self.peers = peers
        self.port_names = tunnel_port_names(peers)
        self._peer_of_port = {name: peer for peer, name in self.port_names.items()}

    def _ports_at_start(self, state: ClusterState, gateways: frozenset[str]) -> list[str]:
        """The peers of the tunnel ports already on br-int that stay: those to
        gateway nodes, and on a gateway node those to any node, as senders
        (they go if their session stays down, see :data:`SENDER_IDLE`)."""
        names = set(self.db.ofports("br-int"))
        candidates = state.nodes if self.node in gateways else gateways
        kept = [p for p, name in tunnel_port_names(candidates).items() if name in names]
        if self.node in gateways:
            now = self.clock()
            self.senders = {p: now for p in kept if p not in gateways and p != self.node}
        return kept

    def _track_senders(self, state: ClusterState, gateways: frozenset[str]) -> None:
        """On a gateway node: the nodes whose BFD came since the last pass
        become senders; a sender whose session has not been up for
        :data:`SENDER_IDLE` is one no more.  Elsewhere: none."""
        with self._heard_lock:
            heard, self._heard = self._heard, set()
        if self.node not in gateways:
            self.senders.clear()
            return
        now = self.clock()
        if heard:  # address -> node: one look at every node, only when something came
            found = {str(ip): name for name, node in state.nodes.items()
                     if (ip := underlay_address(node)) is not None and str(ip) in heard}
            for address in sorted(heard - found.keys() - self._unknown_warned):
                LOG.warning("BFD from %s on gnv-flow: no node of the cluster has that address; no port "
                            "made (said once per address)", address)
                if len(self._unknown_warned) < UNKNOWN_WARNED_MAX:
                    self._unknown_warned.add(address)
            for address, name in sorted(found.items()):
                if name == self.node:
                    continue
                if name not in self.senders:
                    LOG.info("tunnels: BFD from %s (%s), which has no port here: it sends to this "
                             "gateway node, a port to it", name, address)
                self.senders[name] = now
        states = self.bfd_states() if self.senders else {}
        if not heard and states is self._senders_judged[0] and now < self._senders_judged[1]:
            return  # nothing heard, no session changed, none idles out yet
        for name, since in list(self.senders.items()):
            if name not in state.nodes or name in gateways:
                del self.senders[name]  # gone, or a gateway node: a peer in its own right
            elif states.get(name, {}).get("state") == "up":
                self.senders[name] = now
            elif now - since > SENDER_IDLE:
                LOG.info("tunnels: no BFD session with %s for %.0f s: its port goes", name, now - since)
                del self.senders[name]
        self._senders_judged = (states, min(self.senders.values(), default=now) + SENDER_IDLE)

    def _bfd(self) -> dict | None:
        if self.bfd is None or not self.path_down:
            return self.bfd
        return {**self.bfd, "cpath_down": "true"}

    def set_path_down(self, down: bool) -> None:
        """Tell the peers through BFD that this node forwards nothing
        (``bfd:cpath_down``: their sessions to it stay up, not forwarding),
        or that it forwards again."""
        if down == self.path_down or not self.bfd:
            return
        self.path_down = down
        if self.peers is not None:
            self.db.sync_tunnels("br-int", self.peers, self._bfd())
        LOG.warning("BFD: telling the peers this node %s", "forwards nothing (cpath_down)" if down
                    else "forwards again")

    def bfd_states(self) -> dict[str, dict]:
        """peer -> bfd_status of its tunnel port (OVSDB, from the IDL's cache)."""
        if not self.bfd or not self.peers:
            return {}
        status = self.db.bfd_status("br-int")
        last = self._bfd_states
        if last is not None and last[0] is status and last[1] is self.peers:
            return last[2]  # OVSDB unchanged (the reader hands out the same read): the same object
        states = {peer: status.get(self.port_names[peer], {}) for peer in self.peers}
        self._bfd_states = (status, self.peers, states)
        return states

    def bfd_report(self) -> dict[str, str]:
        """tunnel port -> BFD state for ``sdn-egress status`` (which cannot
        reach another node's OVSDB on a real cluster)."""
        try:
            states = self.bfd_states()
        except Exception:  # noqa: BLE001 - OVSDB away: nothing to report
            return {}
        return {self.port_names[peer]: st.get("state", "?") + (
                    "" if st.get("forwarding") == "true" else " (not forwarding)")
                for peer, st in sorted(states.items()) if st}

    # -- the facts of a pass ---------------------------------------------------------
    def facts(self, state: ClusterState, alloc: Allocation, refresh: bool,
              dead: frozenset[str] = frozenset()) -> NodeFacts:
        """``refresh``: look the next hops and the tunnel MTU up again (a full
        pass), not only those not known yet."""
        ports, ports_ex = self._ports()
        egw_mac = self.db.iface_mac(self.egw)
        brex_mac = self.db.iface_mac("br-ex") if ports_ex else egw_mac
        hops = self._resolve_next_hops(state, alloc, refresh, dead)
        if refresh or self.tunnel_mtu is None:
            self.tunnel_mtu = self._find_tunnel_mtu(state, ports_ex, ports.uplink)
        return NodeFacts(ports=ports, egw_mac=egw_mac, brex_mac=brex_mac,
                         next_hop_macs=tuple(sorted(hops.items())), tunnel_mtu=self.tunnel_mtu[0])

    def _ports(self) -> tuple[Ports, dict[str, int]]:
        ports_int = self.db.ofports("br-int")
        try:
            ports_ex = self.db.ofports("br-ex")
        except Exception:  # noqa: BLE001 - br-ex only where there is an uplink
            ports_ex = {}
        # sync_tunnels names ports gnv-<peer> (hashed when that cannot be); map back.
        tunnels = tuple(sorted((name[len(TUNNEL_PREFIX):], port) for name, port in ports_int.items()
                               if name.startswith(TUNNEL_PREFIX) and name != FLOW_PORT))
        tunnels = tuple((self._peer_of_port.get(TUNNEL_PREFIX + suffix, suffix), port)
                        for suffix, port in tunnels)
        uplink = next((p for n, p in ports_ex.items() if n not in ("br-ex", "patch-ex-int")), 0)
        ports = Ports(egw=ports_int[self.egw], tun_flow=ports_int[FLOW_PORT], tunnels=tunnels,
                      int_patch=ports_int.get("patch-int-ex", 0), uplink=uplink,
                      ex_patch=ports_ex.get("patch-ex-int", 0))
        return ports, ports_ex

    def _resolve_next_hops(self, state: ClusterState, alloc: Allocation, refresh: bool,
                           dead: frozenset[str]) -> dict[str, str]:
        """EIP -> next hop MAC for the EIPs this node holds (the first of its
        gateways not dead); those not resolved go to ``unresolved``."""
        last = self._held_eips
        if last[0] is alloc.eips and last[1] == dead:
            held = last[2]
        else:  # found again only for another allocation or another dead set
            held = [a for a in alloc.eips if [n for n in a.nodes if n not in dead][:1] == [self.node]]
            self._held_eips = (alloc.eips, dead, held)
        hops, unresolved = {}, []
        for a in held:
            key = str(a.ip)
            mac = None if refresh else self._next_hops.get(key)
            if mac is None:
                mac = self.next_hop_mac(probe_destination(state, a), family=a.ip.version)
                if mac is None:
                    LOG.warning("EIP %s: next hop MAC not resolved yet; its traffic is dropped", key)
                    unresolved.append(key)
            if mac:
                hops[key] = mac
        self._next_hops = hops
        self.unresolved = unresolved
        return hops

    def _find_tunnel_mtu(self, state: ClusterState, ports_ex: dict, uplink: int) -> tuple[int, str]:
        """The tunnel MTU: the agent's --tunnel-mtu, else the underlay's MTU
        (the smaller of the uplink's and that of the interface holding the
        node's address, which native tunnelling sends from) minus the Geneve
        overhead of the node address's family."""
        if self.configured_mtu:
            return self.configured_mtu, "--tunnel-mtu"
        node_ip = underlay_address(state.nodes[self.node])  # IPv6 on an IPv6-only cluster
        found = []
        if node_ip is not None:
            mtu = self.address_mtu(str(node_ip))
            if mtu:
                found.append((mtu, f"the interface of {node_ip}"))
        name = next((n for n, p in ports_ex.items() if p == uplink), None) if uplink else None
        if name:
            mtu = self.db.iface_mtu(name)
            if mtu:
                found.append((mtu, f"uplink {name}"))
        family = node_ip.version if node_ip is not None else 4
        if not found:
            LOG.warning("tunnel MTU: cannot read the underlay's MTU; assuming 1500")
            found = [(1500, "assumed")]
        underlay, where = min(found)
        mtu = pmtu.tunnel_mtu(underlay, family)
        if self.tunnel_mtu is None or self.tunnel_mtu[0] != mtu:
            LOG.info("tunnel MTU %d: underlay MTU %d (%s) minus %d bytes of IPv%d Geneve", mtu, underlay,
                     where, pmtu.GENEVE_OVERHEAD[family], family)
        return mtu, f"underlay {underlay} ({where}) - {pmtu.GENEVE_OVERHEAD[family]} (IPv{family} Geneve)"


def probe_destination(state: ClusterState, assignment) -> str | None:
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
