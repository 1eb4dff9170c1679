"""Gateway election: which nodes hold each EIP (active first, then standbys),
the node of each useNodeIP policy, and the EIPs' Geneve tunnel keys."""
from __future__ import annotations

from collections import Counter
from typing import Mapping

import netaddr

from sdn_egress.allocation.types import TUNNEL_KEY_MAX, TUNNEL_KEY_MIN, Allocation, EipAssignment
from sdn_egress.model import ClusterState, EgressGateway, EgressPolicy


def node_ip_assignments(state: ClusterState, node_ip_nodes: Mapping[str, str],
                        served: Mapping[str, EgressGateway], taken: Mapping[netaddr.IPAddress, str],
                        ) -> dict[str, dict[netaddr.IPAddress, EipAssignment]]:
    """node -> {its address: the assignment of the useNodeIP policies it
    serves}, per family the node has an address of (tunnel keys later).  An
    address some policy holds from a pool (a pool that overlaps node
    addresses) is not used twice."""
    by_node: dict[str, list[str]] = {}
    for key, node in sorted(node_ip_nodes.items()):
        by_node.setdefault(node, []).append(key)
    out: dict[str, dict[netaddr.IPAddress, EipAssignment]] = {}
    for node, keys in sorted(by_node.items()):
        for v in (4, 6):
            ip = state.nodes[node].address(v)
            if ip is None or ip in taken:
                continue
            out.setdefault(node, {})[ip] = EipAssignment(
                ip=ip, gateway=served[keys[0]].name, policies=tuple(keys), tunnel_key=0, nodes=(node,),
                node_ip=True)
    return out


def node_ip_nodes(state: ClusterState, policies: list[EgressPolicy], served: Mapping[str, EgressGateway],
                  previous: Allocation, eips: list[EipAssignment],
                  selected: Mapping[str, list[str]] | None = None) -> dict[str, str]:
    """The gateway node of each useNodeIP policy: the one it had while it
    qualifies, else the eligible node with the fewest active EIPs."""
    load = Counter(a.active for a in eips if a.active)
    out = {}
    by_gateway: dict[str, list[str]] = {}
    for p in policies:
        gw = served[p.key]
        if gw.name not in by_gateway:
            by_gateway[gw.name] = eligible_nodes(state, gw, selected)
        eligible = by_gateway[gw.name]
        old = previous.policies.get(p.key)
        if old is not None and old.node in eligible:
            out[p.key] = old.node
        elif eligible:
            out[p.key] = min(eligible, key=lambda n: (load[n], n))
        else:
            continue
        load[out[p.key]] += 1
    return out


def tunnel_keys(ips: list[netaddr.IPAddress], previous: Allocation) -> dict[netaddr.IPAddress, int]:
    if len(ips) > TUNNEL_KEY_MAX - TUNNEL_KEY_MIN + 1:
        raise ValueError(f"{len(ips)} EIPs do not fit in {TUNNEL_KEY_MAX} tunnel keys")
    before = {a.ip: a.tunnel_key for a in previous.eips}
    keys: dict[netaddr.IPAddress, int] = {}
    used: set[int] = set()
    for ip in ips:
        k = before.get(ip)
        if k is not None and TUNNEL_KEY_MIN <= k <= TUNNEL_KEY_MAX and k not in used:
            keys[ip] = k
            used.add(k)
    candidate = TUNNEL_KEY_MIN
    for ip in ips:
        if ip in keys:
            continue
        while candidate in used:
            candidate += 1
        keys[ip] = candidate
        used.add(candidate)
    return keys


def selected_nodes(state: ClusterState) -> dict[str, list[str]]:
    """Each gateway's nodes, ready or not: those its nodeSelector matches, by
    name.  One evaluation of each selector over the nodes for a whole
    allocation (election, useNodeIP nodes and status all read it)."""
    nodes = [(n.name, dict(n.labels)) for n in sorted(state.nodes.values(), key=lambda n: n.name)]
    return {name: [n for n, labels in nodes if gw.node_selector.matches(labels)]
            for name, gw in state.gateways.items()}


def eligible_nodes(state: ClusterState, gw: EgressGateway | None,
                   selected: Mapping[str, list[str]] | None = None) -> list[str]:
    """Nodes that may hold a gateway's EIPs: ready, with an address, matching
    its nodeSelector; by name.  ``selected``: :func:`selected_nodes` of this
    state, when the caller has it."""
    if gw is None:
        return []
    names = selected[gw.name] if selected is not None else selected_nodes_of(state, gw)
    return [n for n in names if state.nodes[n].ready and state.nodes[n].addresses]


def selected_nodes_of(state: ClusterState, gw: EgressGateway) -> list[str]:
    return sorted(n.name for n in state.nodes.values() if gw.node_selector.matches(n.labels))


def elect(state: ClusterState, gateway_of: Mapping[netaddr.IPAddress, str],
           previous: Allocation, held: Mapping[str, str] | None = None,
           selected: Mapping[str, list[str]] | None = None,
           ) -> dict[netaddr.IPAddress, tuple[str, ...]]:
    ips = sorted(gateway_of, key=lambda ip: (ip.version, ip.value))
    eligible = {name: eligible_nodes(state, state.gateways.get(name), selected)
                for name in set(gateway_of.values())}
    before = {a.ip: a for a in previous.eips if a.ip in gateway_of and a.gateway == gateway_of[a.ip]}
    active: dict[netaddr.IPAddress, str] = {}
    load: Counter[str] = Counter()

    def pick(ip, node):
        active[ip] = node
        load[node] += 1

    for ip in ips:  # the node whose data plane holds the EIP (a standby that took over)
        node = (held or {}).get(str(ip))
        if node and node in eligible[gateway_of[ip]]:
            pick(ip, node)
    for ip in ips:  # the active stays where it is
        old = before.get(ip)
        if ip not in active and old and old.nodes and old.nodes[0] in eligible[gateway_of[ip]]:
            pick(ip, old.nodes[0])
    for ip in ips:  # else the standby the data plane has already failed over to
        old = before.get(ip)
        if ip not in active and old:
            standby = next((n for n in old.nodes[1:] if n in eligible[gateway_of[ip]]), None)
            if standby:
                pick(ip, standby)
    for ip in ips:  # else the least loaded node, ties by name
        if ip not in active and eligible[gateway_of[ip]]:
            pick(ip, min(eligible[gateway_of[ip]], key=lambda n: (load[n], n)))

    nodes = {}
    for ip in ips:
        if ip not in active:
            nodes[ip] = ()
            continue
        candidates = [n for n in eligible[gateway_of[ip]] if n != active[ip]]
        old = before.get(ip)
        kept = [n for n in (old.nodes if old else ()) if n in candidates]
        new = sorted((n for n in candidates if n not in kept), key=lambda n: (load[n], n))
        nodes[ip] = (active[ip], *kept, *new)
    return nodes

