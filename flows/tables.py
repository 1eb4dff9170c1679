"""The pipeline declared as data, and the one door through which the
pipeline's flows are built.

Each bridge has an ordered list of tables; a table's OpenFlow id is its
position in that list, never written down anywhere else.  :func:`flow`
refuses a flow for an undeclared table, a match field the table does not
declare, a ``goto``/``ct(table=)`` to a table not declared as a next table,
and a match missing the eth_type its fields need: mistakes fail when flows
are built, not when a switch rejects them or, worse, silently misroutes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from flows import fields as F
from flows.records import CT, Drop, Flow, Goto, MatchSpec, Normal

DROP, NORMAL = "drop", "normal"


@dataclass(frozen=True)
class Table:
    name: str
    purpose: str
    match: frozenset[str]
    next: tuple[str, ...] = ()  # tables reachable by goto or ct(table=)
    miss: str = DROP  # what the priority-0 flow does: DROP or NORMAL


@dataclass(frozen=True)
class BridgeTables:
    bridge: str
    tables: tuple[Table, ...]

    def __post_init__(self):
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.bridge}: duplicate table names in {names}")
        for i, t in enumerate(self.tables):
            if _UNDECLARED.fullmatch(t.name):
                raise ValueError(f"{self.bridge}: table name {t.name!r} is reserved")
            if t.miss not in (DROP, NORMAL):
                raise ValueError(f"{self.bridge}/{t.name}: miss must be drop or normal")
            unknown = [f for f in t.match if f not in F.FIELDS]
            if unknown:
                raise ValueError(f"{self.bridge}/{t.name}: unknown match fields {unknown}")
            for n in t.next:
                if n not in names:
                    raise ValueError(f"{self.bridge}/{t.name}: next table {n!r} is not declared")
                if names.index(n) <= i:
                    raise ValueError(f"{self.bridge}/{t.name}: next table {n!r} must come later "
                                     "(OpenFlow only goes forward)")
        object.__setattr__(self, "_by_name", {t.name: t for t in self.tables})

    def id(self, name: str) -> int:
        for i, t in enumerate(self.tables):
            if t.name == name:
                return i
        m = _UNDECLARED.fullmatch(name)
        if m:
            return int(m.group(1))
        raise ValueError(f"{self.bridge}: undeclared table {name!r} "
                         f"(declared: {', '.join(t.name for t in self.tables)})")

    def table(self, name: str) -> Table:
        t = self._by_name.get(name)
        if t is not None:
            return t
        raise ValueError(f"{self.bridge}: undeclared table {name!r} "
                         f"(declared: {', '.join(t.name for t in self.tables)})")

    def name(self, table_id: int) -> str:
        if 0 <= table_id < len(self.tables):
            return self.tables[table_id].name
        return f"table{table_id}"


# A table id a switch reports that the pipeline does not declare (stale flows).
_UNDECLARED = re.compile(r"table(\d+)")

_IP = {"eth_type", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst"}

BR_INT = BridgeTables("br-int", (
    Table("classify", "what is this packet: a selected pod's (from egw0), a reply or an EIP's "
          "traffic arriving by tunnel, or a reply from the uplink (via the patch); on a gateway "
          "node, a worker's BFD on gnv-flow goes to the agent (it has no port to that worker yet)",
          frozenset({"in_port", "tunnel_id", "ip_proto", "udp_dst"} | _IP),
          ("eip_out", "snat", "from_uplink", "to_host")),
    Table("eip_out", "send an EIP's traffic to its active gateway: Geneve with the EIP's key, "
          "or to snat when this node is the gateway; drop when no gateway is alive",
          frozenset({F.REG_EIP.field}), ("snat",)),
    Table("snat", "gateway: commit the connection in the SNAT zone, source -> EIP",
          frozenset({F.REG_EIP.field, "eth_type"}), ("snat_out",)),
    Table("snat_out", "gateway: rewrite MACs for the uplink next hop, out through the patch",
          frozenset({F.REG_EIP.field, "eth_type"})),
    Table("from_uplink", "gateway: traffic to a held EIP from the uplink: measure it against "
          "the tunnel MTU", frozenset(_IP), ("uplink_mtu",)),
    Table("uplink_mtu", "gateway: too big for the tunnel: to the agent (ICMP frag-needed or "
          "fragments); the rest is de-NATed in the SNAT zone",
          frozenset({F.REG_FLAGS.field, "eth_type"}), ("reply_route",)),
    Table("reply_route", "gateway: an established reply, by pod CIDR, to its node's tunnel or "
          "to this host; new inbound connections to an EIP die here",
          frozenset({"ct_state"} | _IP), ("to_host",)),
    Table("to_host", "replies for this node's pods: hand to the host stack on egw0",
          frozenset(_IP)),
))

BR_EX = BridgeTables("br-ex", (
    Table("classify", "uplink: answer ARP for held EIPs (neighbour solicitations: to the agent), "
          "pass EIP traffic to br-int, SNATed frames from br-int to the uplink; everything else is "
          "the node's own: NORMAL",
          frozenset({"in_port", "arp_op", "arp_tpa", "ip_proto", "tcp_dst", "udp_dst", "icmpv6_type",
                     "ipv6_nd_target"} | _IP), miss=NORMAL),
))

PIPELINE: dict[str, BridgeTables] = {b.bridge: b for b in (BR_INT, BR_EX)}


def bridge(name: str) -> BridgeTables:
    try:
        return PIPELINE[name]
    except KeyError:
        raise ValueError(f"unknown bridge {name!r} (known: {', '.join(PIPELINE)})") from None


def table_names(bridge_name: str) -> dict[int, str]:
    """OpenFlow table id -> name, for one bridge."""
    return {i: t.name for i, t in enumerate(bridge(bridge_name).tables)}


def table_id(bridge_name: str, name: str) -> int:
    return bridge(bridge_name).id(name)


def _targets(actions: Iterable) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, Goto):
            out.append(a.table)
        elif isinstance(a, CT) and a.table is not None:
            out.append(a.table)
    return out


def flow(bridge_name: str, table: str, priority: int, match: MatchSpec, actions,
         cookie: int) -> Flow:
    """A pipeline flow, checked against the declared tables."""
    t = bridge(bridge_name).table(table)
    f = Flow(bridge_name, table, priority, match, tuple(actions), cookie)
    # The rules below depend on the flow's shape only: each shape is judged once.
    names = [e[0] for e in f.match]
    shape = (bridge_name, table, *names, f.match[names.index("eth_type")][1] if "eth_type" in names else None,
             *[a.table for a in f.actions if isinstance(a, (Goto, CT))])  # the one int or None: eth_type
    if shape not in _JUDGED:
        _judge(t, f, shape)
        _JUDGED.add(shape)
    return f


_JUDGED: set[tuple] = set()  # flow shapes (bridge, table, fields, eth_type, next tables) found right


def _judge(t: Table, f: Flow, shape: tuple) -> None:
    bridge_name, table = shape[:2]
    names = [e[0] for e in f.match]
    eth_type = next((e[1] for e in f.match if e[0] == "eth_type"), None)
    targets = _targets(f.actions)
    where = f"{bridge_name}/{table}"
    for name in names:
        if name not in t.match:
            raise ValueError(f"{where}: field {name} is not declared for this table "
                             f"(declared: {', '.join(sorted(t.match))})")
    for name in names:
        need = F.FIELDS[name].prereq
        if need is not None and eth_type != need:
            raise ValueError(f"{where}: field {name} needs eth_type={need:#06x} in the match")
    for target in targets:
        if target not in t.next:
            raise ValueError(f"{where}: may not continue in {target!r} "
                             f"(allowed: {', '.join(t.next) or 'none'})")


def miss_flows(bridge_name: str, cookie_of) -> list[Flow]:
    """The priority-0 flow of every table: its declared miss action, with a
    cookie (``cookie_of(bridge, table)``) that says it is the table's miss."""
    out = []
    for t in bridge(bridge_name).tables:
        action = Drop() if t.miss == DROP else Normal()
        out.append(flow(bridge_name, t.name, 0, {}, (action,), cookie_of(bridge_name, t.name)))
    return out
