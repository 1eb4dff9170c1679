"""br-int on every node: steer selected pods' traffic to its EIP's gateway,
and hand replies for this node's pods back to the host.

classify (from egw0) -> eip_out -> Geneve to the active gateway (tun_id = the
EIP's key), or snat when this node is the gateway, or drop when no gateway is
alive.  classify (tunnel, tun_id = REPLY) -> to_host -> egw0.
"""
from __future__ import annotations

from flows import cookie as C
from flows import family
from flows import fields as F
from flows.check import route_by_eip
from flows.memo import Memo
from flows.records import Bundle, Drop, Flow, Goto, Load, Output, SetField, canonical_entry
from flows.tables import flow
from flows.view import GW_MAC, EipRoute, NodeView, Ports, Steer, eips_of

BR = "br-int"

PRIO_STEER = 1000  # + the destination's prefix length: the longest prefix wins
# A Steer's rank and kind (flows.view.Steer) on top: each rank a band of
# PRIO_RANK, an exclusion PRIO_EXCLUDE above the steers of its rank.
PRIO_EXCLUDE = 129
PRIO_RANK = 2 * PRIO_EXCLUDE
PRIO_TUNNEL = 100
PRIO_UNSTEERED = 10
PRIO_EIP = 100
PRIO_TO_HOST = 100


def tunnel_ports(ports: Ports) -> list[tuple[str, int]]:
    """(peer, port) of every Geneve port, the flow-based one as peer "flow":
    a packet from a peer arrives on that peer's port when there is one, else
    on gnv-flow."""
    seen, out = set(), []
    for peer, port in sorted(ports.tunnels) + [("flow", ports.tun_flow)]:
        if port not in seen:
            seen.add(port)
            out.append((peer, port))
    return out


def steer_priority(s: Steer) -> int:
    return PRIO_STEER + s.rank * PRIO_RANK + (PRIO_EXCLUDE if s.exclude else 0) + s.dest.prefixlen


def steers(view: NodeView, memo: Memo | None = None) -> list[Flow]:
    """One flow per steer, and the catch-all drop."""
    return [f for part in steer_parts(view, memo) for f in part]


def steer_parts(view: NodeView, memo: Memo | None = None) -> list:
    """:func:`steers` in parts: each pod's flows, then the catch-all drop.
    With ``memo``, a pod's flows are built again only when its steers (the
    same objects), egw0's port or the tunnel key of one of its EIPs
    changed, and they are a frozenset, the same one pass after pass
    (``flows.build`` gathers it without hashing its flows again)."""
    keys = {eip: r.tunnel_key for eip, r in route_by_eip(view).items()}
    out: list = []
    for group in view.steer_groups:
        if memo is None:
            out.append(_steer_flows(group, view.ports.egw, keys))
            continue
        key, inputs = ("steers", id(group[0])), (group, view.ports.egw)
        hit = memo.peek(key, inputs)
        if hit is None or any(keys.get(eip) != k for eip, k in hit[0]):
            made = frozenset(_steer_flows(group, view.ports.egw, keys))
            eips = eips_of(s for s in group if not s.exclude)
            hit = (tuple((eip, keys[eip]) for eip in sorted(eips)), made)
        memo.put(key, inputs, hit)
        out.append(hit[1])
    # Whatever the host sends into egw0 that no steer claims dies here: never
    # let a selected pod's packet out with the wrong source.
    out.append([flow(BR, "classify", PRIO_UNSTEERED, {"in_port": view.ports.egw}, (Drop(),),
                     C.encode(C.Feature.UNSTEERED))])
    return out


def _steer_flows(group, egw: int, keys: dict[str, int]) -> list[Flow]:
    """The flows of one pod's steers.  They differ from one another only by
    their destination and priority: per (address, policy, EIP, kind) the
    first is built and judged the full way (:func:`flows.tables.flow`), the
    others share its source entry, actions and cookie and take their own
    destination entry into the same place of its match."""
    out = []
    shared: dict[tuple, tuple] = {}
    for s in group:
        part = (s.pod_ip.value, s.pod_ip.version, s.policy, s.eip.value, s.exclude)  # (check: one family)
        like = shared.get(part)
        dst = canonical_entry(like[1], s.dest) if like is not None else None
        if dst is None:  # the first of its kind, or a /0 (no destination field): the full way
            f = _steer_flow(s, egw, keys)
            if part not in shared and s.dest.prefixlen:
                fam = family.of(s.pod_ip)
                shared[part] = (f, fam.dst, [e[0] for e in f.match].index(fam.dst))
            out.append(f)
            continue
        first, _, where = like
        out.append(Flow.of_canonical(BR, "classify", steer_priority(s),
                                     first.match[:where] + (dst,) + first.match[where + 1:],
                                     first.actions, first.cookie))
    return out


def _steer_flow(s: Steer, egw: int, keys: dict[str, int]) -> Flow:
    fam = family.of(s.pod_ip)
    if s.exclude:  # the host does not steer it; should it come, it dies (never leaks)
        actions, feature = (Drop(),), C.Feature.UNSTEERED
    else:
        actions, feature = (Load(F.REG_EIP.field, keys[str(s.eip)]), Goto("eip_out")), C.Feature.STEER
    return flow(BR, "classify", steer_priority(s),
                {"in_port": egw, "eth_type": fam.eth_type, fam.src: s.pod_ip, fam.dst: s.dest},
                actions, C.encode(feature, C.steer_object(s.policy, s.pod)))


def to_gateways(route: EipRoute, ports: Ports) -> tuple | None:
    """The actions that carry an EIP's traffic to its gateway; None when
    there is no way there.  With standbys, ``bundle(active_backup)`` over the
    gateways' tunnel ports in list order: the switch sends to the first one
    whose BFD session is up, and to none while all are down (never a leak)."""
    if route.local:
        return (Goto("snat"),)
    by_peer = dict(ports.tunnels)
    tunnels = [p for p in (by_peer.get(g) for g in route.gateways) if p is not None]
    if not tunnels:
        return None
    out = Output(tunnels[0]) if len(tunnels) == 1 else Bundle(tuple(tunnels))
    return (SetField("tunnel_id", route.tunnel_key), out)


def eip_out(view: NodeView, memo: Memo | None = None) -> list[Flow]:
    """An EIP's way to its gateways.  With ``memo``, built again only when
    its route or the tunnel ports changed."""
    if memo is None:
        return [_eip_out(r, view.ports) for r in view.eip_routes]
    return [memo.get(("eip_out", str(r.eip)), (r, view.ports.tunnels),
                     lambda r=r: _eip_out(r, view.ports)) for r in view.eip_routes]


def _eip_out(r: EipRoute, ports: Ports) -> Flow:
    obj = C.object_id(C.eip_key(r.eip))
    actions = to_gateways(r, ports)
    feature = C.Feature.EIP_OUT
    if actions is None:
        actions, feature = (Drop(),), C.Feature.NO_GATEWAY
    return flow(BR, "eip_out", PRIO_EIP, {F.REG_EIP.field: r.tunnel_key}, actions, C.encode(feature, obj))


def reply_senders(view: NodeView) -> frozenset[str]:
    """The nodes that send this node replies: the gateways of its EIP routes
    (traffic is tunnelled to no other node)."""
    return frozenset(g for r in view.eip_routes for g in r.gateways) - {view.node}


def reply_ports(view: NodeView, senders: frozenset[str] | None = None) -> list[tuple[str, int]]:
    """(peer, port) of the Geneve ports a reply can arrive on: those of
    ``senders`` (default: :func:`reply_senders`), and gnv-flow for a gateway
    without a port of its own.  A gateway node has a port to every node that
    sends to it, but only a handful of them are gateways of its own pods'
    EIPs: O(gateways), not O(nodes)."""
    senders = reply_senders(view) if senders is None else senders
    return [(peer, port) for peer, port in tunnel_ports(view.ports)
            if peer == "flow" or peer in senders]


def replies_in(view: NodeView, memo: Memo | None = None) -> list[Flow]:
    """Replies tunnelled back by a gateway (tun_id = REPLY) -> to_host."""
    def make(peer: str, port: int) -> Flow:
        return flow(BR, "classify", PRIO_TUNNEL, {"in_port": port, "tunnel_id": F.TUNNEL_KEY_REPLY},
                    (Goto("to_host"),), C.encode(C.Feature.TO_HOST, C.object_id(C.tunnel_key(peer))))
    if memo is None:
        return [make(peer, port) for peer, port in reply_ports(view)]
    # The same ports and senders as the last pass (an EIP route that comes or
    # goes rarely brings a gateway node of its own): not even the ports looked
    # at again (a gateway node has thousands).
    senders = reply_senders(view)
    return memo.get("replies_in", (view.node, view.ports.tunnels, view.ports.tun_flow, senders),
                    lambda: [make(peer, port) for peer, port in reply_ports(view, senders)])


def to_host(view: NodeView) -> list[Flow]:
    out = []
    for cidr in view.pod_cidrs:
        fam = family.of(cidr)
        out.append(flow(
            BR, "to_host", PRIO_TO_HOST + cidr.prefixlen, {"eth_type": fam.eth_type, fam.dst: cidr},
            (SetField("eth_src", GW_MAC), SetField("eth_dst", view.egw_mac), Output(view.ports.egw)),
            C.encode(C.Feature.TO_HOST, C.object_id(C.cidr_key(cidr)))))
    return out


def flow_parts(view: NodeView, memo: Memo | None = None) -> list:
    """br-int's worker flows, in parts (see :func:`steer_parts`)."""
    return steer_parts(view, memo) + [eip_out(view, memo), replies_in(view, memo), to_host(view)]


def flows(view: NodeView, memo: Memo | None = None) -> list[Flow]:
    return [f for part in flow_parts(view, memo) for f in part]
