"""What the allocation says about each policy and gateway: status and conditions."""
from __future__ import annotations

from typing import Iterable, Mapping

import netaddr

from sdn_egress.allocation.ledger import Ledger, Problem
from sdn_egress.allocation.election import eligible_nodes, selected_nodes_of
from sdn_egress.allocation.types import (
    ALLOCATED,
    DELETION_BLOCKED,
    GATEWAY_NODE_SELECTED,
    IN_USE,
    IP_ALLOCATED,
    IP_NOT_ALLOCATED,
    MAX_LISTED,
    NO_GATEWAY_NODE,
    NODE_IP,
    NODES_SELECTED,
    POLICIES_USE,
    POOL_VALID,
    READY,
    UNUSED,
    VALID,
    Condition,
    EipAssignment,
    GatewayNode,
    GatewayStatus,
    PolicyStatus,
)
from sdn_egress.model import ClusterState, EgressGateway, ObjectError, ObjectRef


def object_errors(ref: ObjectRef, problems: Iterable[Problem]) -> list[ObjectError]:
    return [ObjectError(ref, pr.field, pr.message) for pr in problems]


def policy_statuses(ledger: Ledger, eips: tuple[EipAssignment, ...], node_ip_nodes: Mapping[str, str]
                    ) -> tuple[dict[str, PolicyStatus], list[ObjectError]]:
    by_ip = {a.ip: a for a in eips}
    statuses: dict[str, PolicyStatus] = {}
    errors: list[ObjectError] = []
    for p in ledger.policies:
        mine = [ledger.got[(p.key, v)] for v in (4, 6) if ledger.has(p, v)]
        probs = ledger.problems[p.key]
        gw = ledger.served.get(p.key)
        errors.extend(object_errors(p.ref, probs))
        if probs:
            ip_cond, ready, active = _refused(probs, mine, by_ip)
        elif p.use_node_ip:
            ip_cond, ready, active = _node_ip(gw, node_ip_nodes.get(p.key), mine)
        else:
            ip_cond, ready, active = _pool(gw, mine, by_ip)
        statuses[p.key] = PolicyStatus(
            eip_v4=ledger.got.get((p.key, 4)), eip_v6=ledger.got.get((p.key, 6)),
            gateway=gw.name if gw is not None else "", node=active,
            ready=ready.status == "True", conditions=(ip_cond, ready))
    return statuses, errors


def _first_active(mine: list[netaddr.IPAddress], by_ip: Mapping[netaddr.IPAddress, EipAssignment]) -> str | None:
    return next((by_ip[ip].active for ip in mine if by_ip[ip].active), None)


def _refused(probs: list[Problem], mine: list[netaddr.IPAddress],
             by_ip: Mapping[netaddr.IPAddress, EipAssignment]) -> tuple[Condition, Condition, str | None]:
    ip_cond = Condition(IP_ALLOCATED, "False", probs[0].reason, "; ".join(pr.message for pr in probs))
    ready = Condition(READY, "False", IP_NOT_ALLOCATED, "not every address family has an EIP" if mine else "no EIP")
    return ip_cond, ready, _first_active(mine, by_ip)


def _node_ip(gw: EgressGateway, active: str | None, mine: list[netaddr.IPAddress]
             ) -> tuple[Condition, Condition, str | None]:
    if active and mine:
        addresses = ", ".join(map(str, mine))
        return (Condition(IP_ALLOCATED, "True", NODE_IP, f"the address of its gateway node {active}: {addresses}"),
                Condition(READY, "True", GATEWAY_NODE_SELECTED,
                          f"SNAT to {addresses} on node {active} (no standby: another node is another address)"),
                active)
    why = (f"node {active} has no address the policy could use" if active else
           f"no ready node matches the nodeSelector of EgressGateway {gw.name} ({gw.node_selector})")
    return (Condition(IP_ALLOCATED, "False", NODE_IP, f"uses its gateway node's address; {why}"),
            Condition(READY, "False", NO_GATEWAY_NODE, why), None)


def _pool(gw: EgressGateway, mine: list[netaddr.IPAddress], by_ip: Mapping[netaddr.IPAddress, EipAssignment]
          ) -> tuple[Condition, Condition, str | None]:
    ip_cond = Condition(IP_ALLOCATED, "True", ALLOCATED,
                        f"EIP {', '.join(map(str, mine))} from EgressGateway {gw.name}")
    if any(not by_ip[ip].nodes for ip in mine):
        ready = Condition(READY, "False", NO_GATEWAY_NODE,
                          f"no ready node matches the nodeSelector of EgressGateway {gw.name} ({gw.node_selector})")
    else:
        ready = Condition(READY, "True", GATEWAY_NODE_SELECTED, "; ".join(
            f"EIP {ip} on node {by_ip[ip].nodes[0]}"
            + (f" (standby: {listing(by_ip[ip].nodes[1:])})" if len(by_ip[ip].nodes) > 1 else "")
            for ip in mine))
    return ip_cond, ready, _first_active(mine, by_ip)


def gateway_status(state: ClusterState, gw: EgressGateway, served: Mapping[str, EgressGateway],
                   eips: tuple[EipAssignment, ...], problems: list[Problem],
                   selected: Mapping[str, list[str]] | None = None) -> GatewayStatus:
    mine = [a for a in eips if a.gateway == gw.name]
    eligible = set(eligible_nodes(state, gw, selected))
    active: dict[str, list[netaddr.IPAddress]] = {}
    for a in mine:
        if a.active:
            active.setdefault(a.active, []).append(a.ip)
    nodes = tuple(
        GatewayNode(name=n, ready=n in eligible, eips=tuple(active.get(n, ())))
        for n in (selected[gw.name] if selected is not None else selected_nodes_of(state, gw)))
    users = tuple(sorted(key for key, g in served.items() if g.name == gw.name))
    used = {v: sum(1 for a in mine if a.ip.version == v and gw.in_pool(a.ip)) for v in (4, 6)}
    ready_nodes = [n.name for n in nodes if n.ready]
    if ready_nodes:
        ready = Condition(READY, "True", NODES_SELECTED, f"ready nodes: {listing(ready_nodes)}")
    else:
        ready = Condition(READY, "False", NO_GATEWAY_NODE,
                          f"no ready node matches the nodeSelector ({gw.node_selector})")
    if problems:
        pool = Condition(POOL_VALID, "False", problems[0].reason, "; ".join(p.message for p in problems))
    else:
        pool = Condition(POOL_VALID, "True", VALID, f"{gw.pool_text(4)}; {gw.pool_text(6)}")
    names = listing([str(state.policies[k].ref) for k in users])
    if gw.deleting and users:
        in_use = Condition(IN_USE, "True", DELETION_BLOCKED,
                           f"deletion waits for {names}: delete them or point them at another gateway")
    elif users:
        in_use = Condition(IN_USE, "True", POLICIES_USE, f"used by {names}")
    else:
        in_use = Condition(IN_USE, "False", UNUSED, "no policy uses this gateway")
    return GatewayStatus(nodes=nodes, ipv4_total=gw.pool_size(4), ipv4_free=gw.pool_size(4) - used[4],
                         ipv6_total=gw.pool_size(6), ipv6_free=gw.pool_size(6) - used[6], policies=users,
                         conditions=(ready, pool, in_use))


def listing(names: Iterable[str], limit: int | None = None) -> str:
    """``a, b, c``; beyond ``limit`` names (:data:`MAX_LISTED`), the first ones
    and how many more: a message names what a reader can take in, and stays
    far below what a condition may hold (1,200 standby nodes, 1,000 policies)."""
    names = list(names)
    limit = MAX_LISTED if limit is None else limit
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"

