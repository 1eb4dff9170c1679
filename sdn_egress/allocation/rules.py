"""The allocation rules, one function per numbered rule of the package
docstring (:mod:`sdn_egress.allocation`), in the order :func:`allocate`
applies them, all over one :class:`~.ledger.Ledger`."""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping

from sdn_egress.allocation import election, status
from sdn_egress.allocation.ledger import Ledger, Problem
from sdn_egress.allocation.pools import families, free_index, index_after
from sdn_egress.allocation.types import (
    EIP_IN_USE,
    GATEWAY_DELETING,
    GATEWAY_NOT_FOUND,
    IN_USE_ADDRESS_REMOVED,
    NAMESPACE_NOT_ALLOWED,
    NO_POOL,
    NOT_IN_POOL,
    NOT_PAIRED,
    POOL_EXHAUSTED,
    Allocation,
    EipAssignment,
)
from sdn_egress.model import ALLOCATOR_RR, DEFAULT_GATEWAY_LABEL, ClusterState, EgressGateway, EgressPolicy

GATEWAY_FIELD = "spec.egressGatewayName"


def allocate(state: ClusterState, previous: Allocation | None = None,
             held: Mapping[str, str] | None = None) -> Allocation:
    """``held``: EIP -> the node whose data plane reports holding it (agents'
    reports); that node becomes the EIP's active gateway, so the control plane
    records a failover the data plane already made instead of undoing it."""
    ledger = Ledger.start(state, previous or Allocation())
    rule_0_gateway(ledger)
    rule_1_sticky(ledger)
    rule_2_explicit(ledger)
    rule_3_pool(ledger)
    gateway_of = {ip: ledger.served[key].name for ip, key in ledger.taken.items()}
    nodes = election.elect(state, gateway_of, ledger.previous, held, ledger.selected)
    pool_eips = [EipAssignment(ip=ip, gateway=gateway_of[ip], policies=(key,), tunnel_key=0, nodes=nodes[ip])
                 for ip, key in ledger.taken.items()]
    node_ip_nodes, node_ip_eips = rule_4_node_ip(ledger, pool_eips)
    everything = {a.ip: a for a in [*pool_eips, *node_ip_eips]}
    ips = sorted(everything, key=lambda ip: (ip.version, ip.value))
    keys = election.tunnel_keys(ips, ledger.previous)
    eips = tuple(dataclasses.replace(everything[ip], tunnel_key=keys[ip]) for ip in ips)
    statuses, errors = status.policy_statuses(ledger, eips, node_ip_nodes)
    gateway_statuses = {name: status.gateway_status(state, gw, ledger.served, eips,
                                                    ledger.gateway_problems.get(name, []), ledger.selected)
                        for name, gw in sorted(state.gateways.items())}
    for name, probs in sorted(ledger.gateway_problems.items()):
        errors.extend(status.object_errors(state.gateways[name].ref, probs))
    return Allocation(eips=eips, policies=statuses, errors=tuple(state.errors) + tuple(errors),
                      gateways=gateway_statuses, rr_last=dict(sorted(ledger.rr_last.items())),
                      accepted=dict(sorted(state.accepted.items())))


# -- 0. which gateway ---------------------------------------------------------------------------------

def rule_0_gateway(ledger: Ledger) -> None:
    """The gateway serving each policy (:func:`resolve`); refused ones are not served."""
    for p in ledger.policies:
        gw, problem = resolve(ledger.state, p, ledger.previous)
        if problem is not None:
            ledger.problems[p.key].append(problem)
        else:
            ledger.served[p.key] = gw


def resolve(state: ClusterState, p: EgressPolicy, previous: Allocation
            ) -> tuple[EgressGateway | None, Problem | None]:
    """The gateway that serves a policy: the one it names; else the one it was
    served by (a default, once applied, sticks); else its default.  A gateway
    being deleted serves only the policies it already served."""
    old = previous.policies.get(p.key)
    if p.gateway:
        name = p.gateway
        if name not in state.gateways:
            return None, Problem(GATEWAY_NOT_FOUND, GATEWAY_FIELD, f"no EgressGateway named {quote_name(name)}")
    elif old is not None and old.gateway in state.gateways:
        name = old.gateway
    else:
        name, why = default_gateway(state, p)
        if not name:
            return None, Problem(GATEWAY_NOT_FOUND, GATEWAY_FIELD, why)
    gw = state.gateways[name]
    if not p.cluster and not gw.serves_namespace(state.namespace_labels(p.namespace)):
        return None, Problem(NAMESPACE_NOT_ALLOWED, GATEWAY_FIELD, namespace_refusal(gw, p.namespace))
    if gw.deleting and (old is None or old.gateway != name):
        return None, Problem(GATEWAY_DELETING, GATEWAY_FIELD,
                             f"EgressGateway {name} is being deleted: it takes no new policies")
    return gw, None


def default_gateway(state: ClusterState, p: EgressPolicy) -> tuple[str, str]:
    """(gateway name, "") for a policy that names no gateway: its namespace's
    default (the label), else the cluster default; ("", why not) when there is none."""
    if not p.cluster:
        ns = state.namespaces.get(p.namespace)
        label = dict(ns.labels).get(DEFAULT_GATEWAY_LABEL) if ns is not None else None
        if label:
            if label in state.gateways:
                return label, ""
            return "", (f"namespace {p.namespace} names EgressGateway {quote_name(label)} as its default "
                        f"(label {DEFAULT_GATEWAY_LABEL}), and there is none")
    default = next((g.name for g in sorted(state.gateways.values(), key=lambda g: g.name)
                    if g.cluster_default), None)
    if default:
        return default, ""
    hint = "" if p.cluster else f"label namespace {p.namespace} with {DEFAULT_GATEWAY_LABEL}=NAME, or "
    return "", (f"names no EgressGateway and there is no default gateway: name one, {hint}set "
                "clusterDefault: true on one EgressGateway")


def quote_name(name: str) -> str:
    return json.dumps(name)


def namespace_refusal(gw: EgressGateway, namespace: str) -> str:
    return (f"EgressGateway {gw.name} does not serve namespace {namespace}: its namespaceSelector "
            f"({gw.namespace_selector}) does not match the namespace's labels; ask the gateway's owner, or "
            "name a gateway that serves this namespace")


# -- 1. sticky ----------------------------------------------------------------------------------------

def rule_1_sticky(ledger: Ledger) -> None:
    """What a policy had stays its own while it still qualifies.  An address
    that left the pool while in use stays with its holder."""
    for p, gw in ledger.pool_served():
        old = ledger.previous.policies.get(p.key)
        if old is None or old.gateway != gw.name:
            continue
        for v in families(p, gw):
            ip = old.eip(v)
            if ip is None or ip.version != v or ip in ledger.taken or p.explicit_eip(v) not in (None, ip):
                continue
            if not gw.in_pool(ip):
                ledger.gateway_problems.setdefault(gw.name, []).append(Problem(
                    IN_USE_ADDRESS_REMOVED, f"spec.ippools.ipv{v}",
                    f"{ip} left the pool while {p.ref} uses it: an address in use stays until its "
                    "policy releases it"))
            ledger.take(p, v, ip)


# -- 2. explicit --------------------------------------------------------------------------------------

def rule_2_explicit(ledger: Ledger) -> None:
    """``spec.egressIP`` when it is in the pool and free; in a dual-stack
    gateway with the address it pairs with, and never half a pair."""
    for p, gw in ledger.pool_served():
        _explicit(ledger, p, gw)
        if gw.dual_stack and not ledger.problems[p.key]:
            _explicit_pair(ledger, p, gw)
    for p, gw in ledger.pool_served():  # never half a pair
        if gw.dual_stack and ledger.problems[p.key]:
            for v in (4, 6):
                if p.explicit_eip(v) is not None:
                    ledger.release(p, v)


def _explicit(ledger: Ledger, p: EgressPolicy, gw: EgressGateway) -> None:
    for v in (4, 6):
        ip = p.explicit_eip(v)
        if ip is None or ledger.has(p, v):
            continue
        field_ = f"spec.egressIP.ipv{v}"
        if not gw.in_pool(ip):
            ledger.refuse(p, NOT_IN_POOL, field_,
                          f'"{ip}" is not in the pool of EgressGateway {gw.name} ({gw.pool_text(v)})')
        elif ip in ledger.taken:
            ledger.refuse(p, EIP_IN_USE, field_, f'"{ip}" is already the egress IP of {ledger.holder(ip)}')
        else:
            ledger.take(p, v, ip)


def _explicit_pair(ledger: Ledger, p: EgressPolicy, gw: EgressGateway) -> None:
    if p.eip_v4 and p.eip_v6 and gw.pair_of(p.eip_v4) != p.eip_v6:
        ledger.refuse(p, NOT_PAIRED, "spec.egressIP.ipv6", (
            f'"{p.eip_v6}" does not pair with {p.eip_v4} in EgressGateway {gw.name}: {p.eip_v4} pairs '
            f"with {gw.pair_of(p.eip_v4)}"))
        return
    mine = [v for v in (4, 6) if p.explicit_eip(v) is not None]
    if len(mine) == 1 and not ledger.has(p, 10 - mine[0]):
        v = mine[0]
        pair = gw.pair_of(p.explicit_eip(v))
        if pair in ledger.taken:
            ledger.refuse(p, EIP_IN_USE, f"spec.egressIP.ipv{v}", (
                f'"{p.explicit_eip(v)}" pairs with {pair}, which is already the egress IP of '
                f"{ledger.holder(pair)}"))
        else:
            ledger.take(p, 10 - v, pair)


# -- 3. pool ------------------------------------------------------------------------------------------

def rule_3_pool(ledger: Ledger) -> None:
    """Every other policy, per family: the lowest free address ("default")
    or the next free one after the last handed out ("rr"); in a dual-stack
    gateway a free pair.  None left: PoolExhausted, never a stolen one."""
    for p, gw in ledger.pool_served():
        wanted = families(p, gw)
        if not wanted:
            ledger.refuse(p, NO_POOL, GATEWAY_FIELD, f"EgressGateway {gw.name} has no addresses in its pool")
        elif gw.dual_stack:
            _pool_pair(ledger, p, gw)
        else:
            for v in wanted:
                if p.explicit_eip(v) is None and not ledger.has(p, v):
                    _pool_single(ledger, p, gw, v)


def _next_index(ledger: Ledger, p: EgressPolicy, gw: EgressGateway, versions: tuple[int, ...]) -> int | None:
    if p.allocator == ALLOCATOR_RR:
        start = index_after(gw, versions[0], ledger.rr_last.get((gw.name, versions[0])))
        return free_index(gw, versions, ledger.taken, start)
    return ledger.cursor.lowest(gw, versions, ledger.taken)


def _pool_single(ledger: Ledger, p: EgressPolicy, gw: EgressGateway, v: int) -> None:
    index = _next_index(ledger, p, gw, (v,))
    if index is None:
        ledger.refuse(p, POOL_EXHAUSTED, GATEWAY_FIELD, f"no free IPv{v} address left in the pool of "
                      f"EgressGateway {gw.name} ({gw.pool_text(v)})")
        return
    ip = gw.address_at(v, index)
    ledger.take(p, v, ip)
    ledger.rr_last[(gw.name, v)] = ip


def _pool_pair(ledger: Ledger, p: EgressPolicy, gw: EgressGateway) -> None:
    if ledger.problems[p.key] or all(ledger.has(p, v) for v in (4, 6)):
        return
    have = [v for v in (4, 6) if ledger.has(p, v)]
    if have:  # the gateway became dual-stack: the other half is the pair
        _other_half(ledger, p, gw, have[0])
        return
    index = _next_index(ledger, p, gw, (4, 6))
    if index is None:
        ledger.refuse(p, POOL_EXHAUSTED, GATEWAY_FIELD, f"no free IPv4/IPv6 pair left in the pool of "
                      f"EgressGateway {gw.name} ({gw.pool_text(4)}; {gw.pool_text(6)})")
        return
    for v in (4, 6):
        ledger.take(p, v, gw.address_at(v, index))
        ledger.rr_last[(gw.name, v)] = gw.address_at(v, index)


def _other_half(ledger: Ledger, p: EgressPolicy, gw: EgressGateway, v: int) -> None:
    mine = ledger.got[(p.key, v)]
    pair = gw.pair_of(mine)
    if pair is None or pair in ledger.taken:
        why = f"is already the egress IP of {ledger.holder(pair)}" if pair is not None else "is not in the pool"
        ledger.refuse(p, POOL_EXHAUSTED, GATEWAY_FIELD, f"the IPv{10 - v} address that pairs with {mine} {why}")
    else:
        ledger.take(p, 10 - v, pair)


# -- 4. node IP ---------------------------------------------------------------------------------------

def rule_4_node_ip(ledger: Ledger, pool_eips: list[EipAssignment]
                   ) -> tuple[dict[str, str], list[EipAssignment]]:
    """useNodeIP policies: the address of one gateway node (the one they had
    while it qualifies, else the least loaded).  Returns policy key -> node
    and the node addresses' assignments (tunnel keys later)."""
    users = [p for p in ledger.policies if p.use_node_ip and p.key in ledger.served]
    node_of = election.node_ip_nodes(ledger.state, users, ledger.served, ledger.previous, pool_eips,
                                     ledger.selected)
    by_node = election.node_ip_assignments(ledger.state, node_of, ledger.served, ledger.taken)
    for key, node in node_of.items():
        for ip in by_node.get(node, {}):
            ledger.got[(key, ip.version)] = ip
    return node_of, [a for by_ip in by_node.values() for a in by_ip.values()]

