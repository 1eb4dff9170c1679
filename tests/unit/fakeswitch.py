"""An in-memory OpenFlow switch for unit tests: it holds ``flows.records.Flow``
records and pushes packets (dicts of header fields) through them.

Semantics follow Open vSwitch where the pipeline depends on them: highest
priority wins (two matching flows of equal priority are an error here, as the
outcome is undefined on a real switch); an absent flow drops; ``goto`` only
goes forward; ``output`` to the packet's own in_port is dropped (IN_PORT is
the way back); registers, tunnel metadata and conntrack state are zero when a
packet enters a bridge and are reset across patch ports; ``ct`` runs an
emulated connection tracker (zones, commit, SNAT, de-NAT of replies,
+new/+est/+rpl/+trk, ct_mark set by ``exec``) and continues the packet in
``table=`` while the original goes on with the next action.

A :class:`Fabric` wires nodes together: br-int <-> br-ex patch ports and
Geneve tunnels (a tunnel port's peer by name, gnv-flow by ``tun_ipv4_dst``;
the receiver sees the packet on its port for the sender if it has one, else on
its gnv-flow, with ``tunnel_id`` and ``tun_ipv4_src/dst`` set).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import netaddr

from flows import fields as F
from flows.records import (CT, Bundle, CheckLarger, Controller, Drop, Flow, Goto, InPort, Load, Move, Normal, Output, SetField,
                           Unknown)
from flows.tables import bridge as bridge_tables
from flows.view import DEFAULT_TUNNEL_MTU, Ports

ZERO_FIELDS = ("tunnel_id", "ct_state", "ct_zone", "ct_mark") + tuple(f"reg{i}" for i in range(16))
TUNNEL_FIELDS = ("tunnel_id", "tun_ipv4_src", "tun_ipv4_dst", "tun_ipv6_src", "tun_ipv6_dst")
METADATA_FIELDS = ZERO_FIELDS + TUNNEL_FIELDS


def as_int(name: str, value) -> int:
    kind = F.FIELDS[name].kind if name in F.FIELDS else F.INT
    if kind == F.MAC:
        return int(netaddr.EUI(value))
    if kind in (F.IPV4, F.IPV6):
        return int(netaddr.IPAddress(value))
    return int(value)


def matches(flow: Flow, pkt: dict) -> bool:
    for entry in flow.match:
        name, value = entry[0], entry[1]
        if name in pkt:
            have = as_int(name, pkt[name])
        elif name in ZERO_FIELDS:
            have = 0
        else:
            return False
        mask = as_int(name, entry[2]) if len(entry) == 3 else (1 << F.FIELDS[name].bits) - 1
        if have & mask != as_int(name, value) & mask:
            return False
    return True


@dataclass
class Emitted:
    """A packet leaving a bridge: ``port`` is a port number or "NORMAL"."""
    port: int | str
    packet: dict


# -- conntrack ------------------------------------------------------------------

L4 = {6: ("tcp_src", "tcp_dst"), 17: ("udp_src", "udp_dst"), 1: ("icmp_id", "icmp_id"),
      58: ("icmp_id", "icmp_id")}


def _addr_fields(pkt: dict) -> tuple[str, str]:
    return ("ipv4_src", "ipv4_dst") if pkt.get("eth_type") == F.ETH_IP else ("ipv6_src", "ipv6_dst")


def five_tuple(pkt: dict) -> tuple:
    src, dst = _addr_fields(pkt)
    proto = pkt["ip_proto"]
    sp, dp = L4[proto]
    return (proto, str(pkt[src]), str(pkt[dst]), pkt.get(sp, 0), pkt.get(dp, 0))


def _rewrite(pkt: dict, tup: tuple) -> None:
    src, dst = _addr_fields(pkt)
    proto, s, d, sp, dp = tup
    pkt[src], pkt[dst] = s, d
    fs, fd = L4[proto]
    if fs != fd:
        pkt[fs], pkt[fd] = sp, dp
    else:
        pkt[fs] = sp


def _reverse(tup: tuple) -> tuple:
    proto, s, d, sp, dp = tup
    return (proto, d, s, dp, sp)


@dataclass
class Conn:
    zone: int
    orig: tuple  # as the first packet arrived
    reply: tuple  # as replies arrive (after NAT: to the NAT address)
    nat: bool
    mark: int = 0
    replied: bool = False


class Conntrack:
    """One datapath's connection tracker (shared by its bridges)."""

    def __init__(self):
        self.conns: list[Conn] = []
        self._ports = itertools.count(40000)

    def _find(self, zone: int, tup: tuple) -> tuple[Conn | None, str]:
        for c in self.conns:
            if c.zone != zone:
                continue
            if c.orig == tup:
                return c, "orig"
            if c.reply == tup:
                return c, "reply"
        return None, ""

    def execute(self, pkt: dict, ct: CT) -> dict:
        out = dict(pkt)
        conn, direction = self._find(ct.zone, five_tuple(pkt))
        nat_state = 0
        if conn is None:
            state = F.CT_TRK | F.CT_NEW
            if ct.commit:
                orig = five_tuple(pkt)
                translated = orig
                if ct.nat is not None and ct.nat.kind == "src":
                    translated = (orig[0], ct.nat.addr, orig[2], orig[3], orig[4])
                    if ct.nat.ports:  # as OVS: keep the port when in range, else the first free one
                        lo, hi = ct.nat.ports
                        port = orig[3] if lo <= orig[3] <= hi else lo
                        translated = translated[:3] + (port,) + translated[4:]
                        while self._find(ct.zone, _reverse(translated))[0] is not None:
                            port += 1
                            if port > hi:
                                raise RuntimeError("fake conntrack: NAT port range exhausted")
                            translated = translated[:3] + (port,) + translated[4:]
                    while self._find(ct.zone, _reverse(translated))[0] is not None:
                        translated = translated[:3] + (next(self._ports),) + translated[4:]
                    nat_state = F.CT_SNAT
                elif ct.nat is not None and ct.nat.kind == "dst":
                    translated = (orig[0], orig[1], ct.nat.addr, orig[3], orig[4])
                    nat_state = F.CT_DNAT
                conn = Conn(ct.zone, orig, _reverse(translated), nat=translated != orig)
                self.conns.append(conn)
                if ct.nat is not None:
                    _rewrite(out, translated)
        elif direction == "orig":
            state = F.CT_TRK | (F.CT_EST if conn.replied else F.CT_NEW)
            if ct.nat is not None and conn.nat:
                _rewrite(out, _reverse(conn.reply))
        else:
            conn.replied = True
            state = F.CT_TRK | F.CT_EST | F.CT_RPL
            if ct.nat is not None and conn.nat:
                _rewrite(out, _reverse(conn.orig))
        if ct.commit and conn is not None:
            for a in ct.actions:
                if a.field != "ct_mark":
                    raise NotImplementedError(f"fake conntrack: exec {a!r}")
                conn.mark = a.value
        out.update(ct_state=state | nat_state, ct_zone=ct.zone, ct_mark=conn.mark if conn else 0)
        return out


# -- one bridge ---------------------------------------------------------------------

class FakeBridge:
    def __init__(self, name: str, conntrack: Conntrack | None = None):
        self.name = name
        self.tables = bridge_tables(name)
        self.conntrack = conntrack or Conntrack()
        self.flows: dict[tuple, Flow] = {}
        self.dead_ports: set[int] = set()  # ports whose liveness (BFD) is down

    # flow-mods
    def add(self, flow: Flow) -> None:
        if flow.bridge != self.name:
            raise ValueError(f"{self.name}: flow for {flow.bridge}")
        self.tables.id(flow.table)
        if any(isinstance(a, Unknown) for a in flow.actions):
            raise ValueError(f"{self.name}: cannot install {flow}")
        self.flows[flow.key] = flow  # an add with the same key replaces

    def delete_strict(self, flow: Flow) -> None:
        self.flows.pop(flow.key, None)

    def apply(self, flows) -> None:
        for f in flows:
            self.add(f)

    def sync(self, desired) -> tuple[int, int]:
        """Make the bridge hold exactly ``desired`` (delete the rest): what the
        agent's diff does.  Returns (adds, deletes)."""
        want = {f.key: f for f in desired}
        deletes = [f for k, f in self.flows.items() if k not in want]
        adds = [f for k, f in want.items() if self.flows.get(k) != f]
        for f in deletes:
            self.delete_strict(f)
        self.apply(adds)
        return len(adds), len(deletes)

    def contents(self) -> frozenset[Flow]:
        return frozenset(self.flows.values())

    # packets
    def lookup(self, table: str, pkt: dict) -> Flow | None:
        best = [f for f in self.flows.values() if f.table == table and matches(f, pkt)]
        if not best:
            return None
        top = max(f.priority for f in best)
        winners = [f for f in best if f.priority == top]
        if len(winners) > 1:
            raise AssertionError(f"{self.name}/{table}: {len(winners)} flows of priority {top} "
                                 f"match {pkt}: {winners}")
        return winners[0]

    def process(self, packet: dict) -> list[Emitted]:
        """Run a packet (with ``in_port``) through the bridge from table 0."""
        pkt = {k: v for k, v in packet.items()}
        if "in_port" not in pkt:
            raise ValueError("packet without in_port")
        out: list[Emitted] = []
        self._run(pkt, self.tables.tables[0].name, out, trace=[])
        return out

    def _run(self, pkt: dict, table: str, out: list, trace: list) -> None:
        if len(trace) > 32:
            raise AssertionError(f"{self.name}: pipeline loops: {trace}")
        flow = self.lookup(table, pkt)
        trace = trace + [table]
        if flow is None:
            return
        for a in flow.actions:
            if isinstance(a, Output):
                if a.port != pkt["in_port"]:
                    out.append(Emitted(a.port, dict(pkt)))
            elif isinstance(a, Bundle):
                live = [p for p in a.ports if p not in self.dead_ports]
                if live and live[0] != pkt["in_port"]:
                    out.append(Emitted(live[0], dict(pkt)))
            elif isinstance(a, InPort):
                out.append(Emitted(pkt["in_port"], dict(pkt)))
            elif isinstance(a, Controller):
                out.append(Emitted("CONTROLLER", dict(pkt)))
            elif isinstance(a, CheckLarger):
                larger = int(frame_len(pkt) > a.length)
                pkt[a.field] = (pkt.get(a.field, 0) & ~(1 << a.bit)) | (larger << a.bit)
            elif isinstance(a, Normal):
                out.append(Emitted("NORMAL", dict(pkt)))
            elif isinstance(a, (SetField, Load)):
                pkt[a.field] = a.value
            elif isinstance(a, Move):
                if a.src not in pkt:
                    raise AssertionError(f"{self.name}/{table}: move from absent {a.src}")
                pkt[a.dst] = pkt[a.src]
            elif isinstance(a, CT):
                after = self.conntrack.execute(pkt, a)
                if a.table is not None:
                    self._check_forward(table, a.table)
                    self._run(after, a.table, out, trace)
            elif isinstance(a, Goto):
                self._check_forward(table, a.table)
                self._run(pkt, a.table, out, trace)
            elif isinstance(a, Drop):
                pass
            else:
                raise AssertionError(f"{self.name}/{table}: cannot execute {a!r}")

    def _check_forward(self, here: str, there: str) -> None:
        if self.tables.id(there) <= self.tables.id(here):
            raise AssertionError(f"{self.name}: {here} -> {there} goes backwards")


# -- nodes and the fabric between them ---------------------------------------------------

@dataclass
class Exit:
    """Where a packet left the fabric: ``node``, ``bridge``, ``port`` (a
    port number, "NORMAL"), ``where`` ("egw", "uplink", "NORMAL", "in_port",
    "dropped: ..."), and the packet, with every hop it took."""
    node: str
    bridge: str
    port: int | str
    where: str
    packet: dict
    hops: list = field(default_factory=list)


class FakeNode:
    def __init__(self, name: str, ip, ports: Ports, tunnel_mtu: int = DEFAULT_TUNNEL_MTU):
        self.name = name
        self.ip = netaddr.IPAddress(ip)
        self.ports = ports
        self.tunnel_mtu = tunnel_mtu  # its tunnels drop larger IP packets, as a real underlay does
        self.conntrack = Conntrack()
        self.bridges = {b: FakeBridge(b, self.conntrack) for b in ("br-int", "br-ex")}

    def sync(self, desired: dict) -> None:
        for b, fs in desired.items():
            self.bridges[b].sync(fs)


@dataclass
class Hop:
    """A packet leaving one bridge port on its way (``Fabric.emitted``)."""
    node: str
    bridge: str
    port: int | str
    packet: dict


class Fabric:
    def __init__(self, nodes):
        self.nodes = {n.name: n for n in nodes}
        self.emitted: list[Hop] = []  # every bridge output of the last send()

    def node_by_ip(self, ip) -> FakeNode | None:
        for n in self.nodes.values():
            if n.ip == netaddr.IPAddress(ip):
                return n
        return None

    def send(self, node: str, bridge: str, packet: dict) -> list[Exit]:
        """Inject ``packet`` (with in_port) and follow it across patches and
        tunnels until it leaves the fabric."""
        exits: list[Exit] = []
        self.emitted = []
        queue = [(self.nodes[node], bridge, dict(packet), [])]
        while queue:
            n, br, pkt, hops = queue.pop(0)
            if len(hops) > 16:
                raise AssertionError(f"packet loops: {hops}")
            hops = hops + [(n.name, br, pkt["in_port"])]
            for e in n.bridges[br].process(pkt):
                self.emitted.append(Hop(n.name, br, e.port, e.packet))
                queue.extend(self._follow(n, br, e, hops, exits))
        return exits

    def hops(self, node: str, bridge: str) -> list[Hop]:
        return [h for h in self.emitted if h.node == node and h.bridge == bridge]

    def _follow(self, n: FakeNode, br: str, e: Emitted, hops, exits):
        p = n.ports
        pkt = e.packet

        def leave(where: str):
            exits.append(Exit(n.name, br, e.port, where, pkt, hops))
            return []

        def fresh(in_port: int, keep_tunnel: dict | None = None) -> dict:
            q = {k: v for k, v in pkt.items() if k not in METADATA_FIELDS}
            q.update(keep_tunnel or {})
            q["in_port"] = in_port
            return q

        if e.port == "NORMAL":
            return leave("NORMAL")
        if e.port == "CONTROLLER":
            return leave("controller")
        if e.port == pkt["in_port"]:
            return leave("in_port")
        if br == "br-ex":
            if e.port == p.uplink:
                return leave("uplink")
            if p.ex_patch and e.port == p.ex_patch:
                return [(n, "br-int", fresh(p.int_patch), hops)]
            return leave(f"dropped: br-ex port {e.port} is not wired")
        if e.port == p.egw:
            return leave("egw")
        if p.int_patch and e.port == p.int_patch:
            return [(n, "br-ex", fresh(p.ex_patch), hops)]
        peers = {port: peer for peer, port in p.tunnels}
        if e.port in peers:
            remote = self.nodes.get(peers[e.port])
        elif e.port == p.tun_flow:
            if "tun_ipv4_dst" not in pkt:
                return leave("dropped: gnv-flow without tun_dst")
            remote = self.node_by_ip(pkt["tun_ipv4_dst"])
        else:
            return leave(f"dropped: br-int port {e.port} is not wired")
        if remote is None:
            return leave("dropped: tunnel to nowhere")
        if frame_len(pkt) - F.ETH_HLEN > n.tunnel_mtu:
            return leave("dropped: too big for the tunnel")
        rx = remote.ports.tunnel(n.name) or remote.ports.tun_flow
        tun = {"tunnel_id": pkt.get("tunnel_id", 0), "tun_ipv4_src": str(n.ip),
               "tun_ipv4_dst": str(remote.ip)}
        return [(remote, "br-int", fresh(rx, tun), hops)]


# -- packets ------------------------------------------------------------------------

DEFAULT_FRAME_LEN = 98  # a small packet, unless a test says how long its frame is


def frame_len(pkt: dict) -> int:
    """The frame's length in bytes, Ethernet header included (``frame_len``)."""
    return pkt.get("frame_len", DEFAULT_FRAME_LEN)


def ip_packet(in_port: int, src, dst, *, proto: int = 6, sport: int = 40001, dport: int = 80,
              eth_src: str = "02:00:00:00:aa:01", eth_dst: str = "02:00:00:00:aa:02",
              frame_len: int = DEFAULT_FRAME_LEN) -> dict:
    """A TCP (6), UDP (17) or ICMP echo (1/58: ``sport`` is the echo id) packet."""
    v6 = netaddr.IPAddress(src).version == 6
    pkt = {"in_port": in_port, "eth_src": eth_src, "eth_dst": eth_dst,
           "eth_type": F.ETH_IPV6 if v6 else F.ETH_IP, "ip_proto": proto,
           ("ipv6_src" if v6 else "ipv4_src"): str(src), ("ipv6_dst" if v6 else "ipv4_dst"): str(dst),
           "frame_len": frame_len}
    fs, fd = L4[proto]
    pkt[fs] = sport
    if fd != fs:
        pkt[fd] = dport
    return pkt


def reply_to(pkt: dict, in_port: int, eth_src: str, eth_dst: str,
             frame_len: int = DEFAULT_FRAME_LEN) -> dict:
    """The reply to ``pkt`` as its destination would send it."""
    src, dst = _addr_fields(pkt)
    out = {"in_port": in_port, "eth_src": eth_src, "eth_dst": eth_dst,
           "eth_type": pkt["eth_type"], "ip_proto": pkt["ip_proto"], src: pkt[dst], dst: pkt[src],
           "frame_len": frame_len}
    fs, fd = L4[pkt["ip_proto"]]
    out[fs] = pkt[fd]
    if fd != fs:
        out[fd] = pkt[fs]
    return out


def arp_request(in_port: int, sha: str, spa, tpa) -> dict:
    return {"in_port": in_port, "eth_src": sha, "eth_dst": "ff:ff:ff:ff:ff:ff",
            "eth_type": F.ETH_ARP, "arp_op": 1, "arp_sha": sha, "arp_spa": str(spa),
            "arp_tha": "00:00:00:00:00:00", "arp_tpa": str(tpa)}
