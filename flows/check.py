"""Refuse a node view that cannot be turned into a correct flow set.

States the data plane handles by dropping (no live gateway, next hop MAC not
resolved, tunnel port not created yet) are not errors; a view that
contradicts itself or carries malformed values is, and the message names the
object and the field.
"""
from __future__ import annotations


import netaddr

from flows import fields as F
from flows.memo import Memo
from flows.view import EipRoute, NodeView, Steer, eips_of


class ViewError(ValueError):
    """The node view is malformed; the message names object and field."""


def _mac(obj: str, name: str, value) -> None:
    try:
        netaddr.EUI(value)
    except (netaddr.AddrFormatError, TypeError, ValueError):
        raise ViewError(f"{obj}: {name}: {value!r} is not a MAC address") from None


def _port(obj: str, name: str, value, required: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 0xFFFFFF00:
        raise ViewError(f"{obj}: {name}: {value!r} is not an OpenFlow port number")
    if required and value == 0:
        raise ViewError(f"{obj}: {name}: missing (0)")


def _key(obj: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not F.EIP_KEY_MIN <= value <= F.EIP_KEY_MAX:
        raise ViewError(f"{obj}: tunnel_key: {value!r} outside {F.EIP_KEY_MIN}..{F.EIP_KEY_MAX}")


def _ip(obj: str, name: str, value, cls) -> None:
    if not isinstance(value, cls):
        raise ViewError(f"{obj}: {name}: {value!r} is not a netaddr.{cls.__name__}")


# IPv6 needs 1280 on every link; a tunnel that carries less is a broken underlay.
MIN_TUNNEL_MTU = 1280
MAX_TUNNEL_MTU = 0xFFFF - 14  # check_pkt_larger counts the Ethernet header too


def steer_name(s: Steer) -> str:
    return f"Steer {s.pod} -> {s.dest} (policy {s.policy})"


def check(view: NodeView, memo: Memo | None = None) -> None:
    node = f"NodeView {view.node}"
    p = view.ports
    _port(node, "ports.egw", p.egw, True)
    _port(node, "ports.tun_flow", p.tun_flow, True)
    for name in ("int_patch", "uplink", "ex_patch"):
        _port(node, f"ports.{name}", getattr(p, name), False)
    for peer, port in p.tunnels:
        _port(node, f"ports.tunnels[{peer}]", port, True)
    _mac(node, "egw_mac", view.egw_mac)
    _mac(node, "brex_mac", view.brex_mac)
    for c in view.pod_cidrs:
        _ip(node, "pod_cidrs", c, netaddr.IPNetwork)
    if (isinstance(view.tunnel_mtu, bool) or not isinstance(view.tunnel_mtu, int)
            or not MIN_TUNNEL_MTU <= view.tunnel_mtu <= MAX_TUNNEL_MTU):
        raise ViewError(f"{node}: tunnel_mtu: {view.tunnel_mtu!r} is not an MTU in "
                        f"{MIN_TUNNEL_MTU}..{MAX_TUNNEL_MTU}")

    # The routes and held EIPs again only when they changed (the same objects pass after pass).
    routes = (_check_eips(view) if memo is None
              else memo.get("eips checked", (view.node, view.eip_routes, view.held), lambda: _check_eips(view)))
    if memo is None:
        for s in view.steers:
            _check_steer(s)
            if str(s.eip) not in routes:
                raise ViewError(f"{steer_name(s)}: eip: {s.eip} has no EipRoute in the view")
    else:
        _check_steers(view, routes, memo)
    for rr in view.return_routes:
        key, inputs = ("checked", id(rr)), (rr, view.node)
        if memo is None or memo.peek(key, inputs) is None:
            _check_return_route(view, rr)
        if memo is not None:
            memo.put(key, inputs, True)


def _check_eips(view: NodeView) -> dict[str, EipRoute]:
    """The EIP routes and held EIPs: each well formed, each EIP once, one
    tunnel key per EIP and one EIP per key.  Returns EIP -> its route."""
    keys: dict[str, int] = {}  # EIP -> tunnel key, across routes and held
    owners: dict[int, str] = {}

    def claim(obj: str, eip: str, key: int) -> None:
        _key(obj, key)
        if keys.setdefault(eip, key) != key:
            raise ViewError(f"{obj}: tunnel_key: {key}, but EIP {eip} has key {keys[eip]} elsewhere")
        if owners.setdefault(key, eip) != eip:
            raise ViewError(f"{obj}: tunnel_key: {key} is already the key of EIP {owners[key]}")

    routes: dict[str, EipRoute] = {}
    for r in view.eip_routes:
        eip = str(r.eip)  # formatted once (a route is checked every pass its EIPs move)
        obj = f"EipRoute {eip}"
        _ip(obj, "eip", r.eip, netaddr.IPAddress)
        if eip in routes:
            raise ViewError(f"{obj}: eip: listed twice")
        routes[eip] = r
        claim(obj, eip, r.tunnel_key)
        # local: this node is the first *live* gateway of the list (the view
        # builder judges liveness); it can only be so if it is in the list.
        if r.local and view.node not in r.gateways:
            raise ViewError(f"{obj}: local: True, but this node {view.node!r} is not among its "
                            f"gateways {list(r.gateways)}")

    held: set[str] = set()
    for h in view.held:
        eip = str(h.eip)
        obj = f"HeldEip {eip}"
        _ip(obj, "eip", h.eip, netaddr.IPAddress)
        if eip in held:
            raise ViewError(f"{obj}: eip: listed twice")
        held.add(eip)
        claim(obj, eip, h.tunnel_key)
        if h.next_hop_mac is not None:
            _mac(obj, "next_hop_mac", h.next_hop_mac)
    return routes


def _check_steers(view: NodeView, routes: dict, memo: Memo) -> None:
    """Each steer's own fields once (a pod's steers that are the same
    objects as last time are not checked again); that its EIP has a route,
    every time."""
    for group in view.steer_groups:
        key = ("checked", id(group[0]))
        eips = memo.peek(key, (group,))
        if eips is None:
            for s in group:
                _check_steer(s)
            eips = eips_of(group)
        memo.put(key, (group,), eips)
        for eip in eips:
            if eip not in routes:
                s = next(s for s in group if str(s.eip) == eip)
                raise ViewError(f"{steer_name(s)}: eip: {s.eip} has no EipRoute in the view")


def _check_steer(s: Steer) -> None:
    if (type(s.pod_ip) is netaddr.IPAddress and type(s.dest) is netaddr.IPNetwork
            and type(s.eip) is netaddr.IPAddress and s.pod_ip.version == s.dest.version == s.eip.version):
        return  # the usual case, without naming the steer
    obj = steer_name(s)
    _ip(obj, "pod_ip", s.pod_ip, netaddr.IPAddress)
    _ip(obj, "dest", s.dest, netaddr.IPNetwork)
    _ip(obj, "eip", s.eip, netaddr.IPAddress)
    if not s.pod_ip.version == s.dest.version == s.eip.version:
        raise ViewError(f"{obj}: pod_ip {s.pod_ip}, dest {s.dest} and eip {s.eip} "
                        "are not all of one IP family")


def _check_return_route(view: NodeView, rr) -> None:
    obj = f"ReturnRoute {rr.node} {rr.pod_cidr}"
    _ip(obj, "pod_cidr", rr.pod_cidr, netaddr.IPNetwork)
    _ip(obj, "node_ip", rr.node_ip, netaddr.IPAddress)
    if rr.local != (rr.node == view.node):
        raise ViewError(f"{obj}: local: {rr.local}, but this node is {view.node!r}")


def route_by_eip(view: NodeView) -> dict[str, EipRoute]:
    return {str(r.eip): r for r in view.eip_routes}
