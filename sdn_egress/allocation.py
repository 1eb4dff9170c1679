"""EIP allocation and gateway election: ClusterState (+ the previous result) -> Allocation.

The rules, in the order they are applied (:func:`allocate`; docs/policies.md):

0. **Which gateway**: the one the policy names; else the one that served it
   before (a default, once applied, sticks); else its namespace's default
   (label ``sdn-egress.io/default-gateway``), else the gateway with
   ``clusterDefault: true``.  A gateway being deleted serves only the
   policies it served already (``GatewayDeleting`` for newcomers).
1. **Sticky**: a policy keeps the EIP it had while it exists, is served by the
   same gateway and (when it names an EIP explicitly) still names that one.
   An address in use that left the pool stays with its holder (an error on
   the gateway says so) until the holder releases it.
2. **Explicit**: ``spec.egressIP`` is honoured when it lies in the gateway's
   pool and no policy holds it (``EIPInUse`` otherwise, the holder named).  In
   a dual-stack gateway the other family's address is its pair.
3. **Pool**: every other policy gets, per family, the lowest free address
   (``allocatorPolicy: default``) or the first free one after the last handed
   out (``rr``); in a dual-stack gateway, a free pair.  None left ->
   ``PoolExhausted``, no EIP, never a stolen one.  EIPs are unique across
   all gateways.
4. **Node IP** (``useNodeIP``): no pool address; the policy leaves with the
   address of one gateway node: the one it had while that node qualifies,
   else the eligible node with the fewest active EIPs.  Its traffic is
   SNATed there to that address (ports 61440-65535: see flows/view.py);
   there is no standby (another node is another address): when the node
   goes, the policy moves to another node and its address with it.

Each EIP gets a Geneve tunnel key (1..2**24-1): the one it had, else the lowest
free.  Its gateway nodes are the ready nodes (with an address) matching the
gateway's nodeSelector, active first: the previous active while it still
qualifies, else the previous first standby that still qualifies (the node the
data plane fails over to), else the node holding the fewest EIPs as active
(ties by name).  Standbys keep their previous order; new ones follow, fewest
EIPs first.  Every gateway gets a status (nodes, address usage, users,
conditions).  The same inputs always give the same output.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import netaddr

from sdn_egress.fileio import write_atomic
from sdn_egress.model import (
    ALLOCATOR_RR,
    Accepted,
    DEFAULT_GATEWAY_LABEL,
    ClusterState,
    EgressGateway,
    EgressPolicy,
    ObjectError,
    ObjectRef,
)

TUNNEL_KEY_MIN = 1
TUNNEL_KEY_MAX = 2**24 - 1
MAX_LISTED = 20  # names one message lists before "and N more"

# Condition types and reasons, as they appear in status.
IP_ALLOCATED = "IPAllocated"
READY = "Ready"
ALLOCATED = "Allocated"
POOL_EXHAUSTED = "PoolExhausted"
GATEWAY_NOT_FOUND = "GatewayNotFound"
NOT_IN_POOL = "NotInPool"
EIP_IN_USE = "EIPInUse"
NO_POOL = "NoPool"
GATEWAY_NODE_SELECTED = "GatewayNodeSelected"
NO_GATEWAY_NODE = "NoGatewayNode"
IP_NOT_ALLOCATED = "IPNotAllocated"
GATEWAY_DELETING = "GatewayDeleting"
NOT_PAIRED = "NotPaired"
NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
NODE_IP = "NodeIP"
# Gateway conditions.
NODES_SELECTED = "NodesSelected"
POOL_VALID = "PoolValid"
VALID = "Valid"
IN_USE_ADDRESS_REMOVED = "InUseAddressRemoved"
IN_USE = "InUse"
POLICIES_USE = "PoliciesUse"
DELETION_BLOCKED = "DeletionBlocked"
UNUSED = "Unused"


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" or "False", as Kubernetes writes conditions
    reason: str
    message: str = ""


@dataclass(frozen=True)
class PolicyStatus:
    eip_v4: netaddr.IPAddress | None = None
    eip_v6: netaddr.IPAddress | None = None
    gateway: str = ""
    node: str | None = None  # the active gateway node of the policy's EIP (IPv4 first)
    ready: bool = False
    conditions: tuple[Condition, ...] = ()

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def eip(self, version: int) -> netaddr.IPAddress | None:
        return self.eip_v4 if version == 4 else self.eip_v6


@dataclass(frozen=True)
class EipAssignment:
    ip: netaddr.IPAddress
    gateway: str
    policies: tuple[str, ...]  # namespace/name of the policies using this EIP
    tunnel_key: int
    nodes: tuple[str, ...] = ()  # active first, then standbys; empty: no gateway node
    node_ip: bool = False  # ``ip`` is the address of nodes[0] (useNodeIP), not a pool EIP

    @property
    def active(self) -> str | None:
        return self.nodes[0] if self.nodes else None


@dataclass(frozen=True)
class GatewayNode:
    """One node a gateway's nodeSelector matches."""

    name: str
    ready: bool  # may hold EIPs: Ready, with an address
    eips: tuple[netaddr.IPAddress, ...] = ()  # the EIPs it is the active gateway of


@dataclass(frozen=True)
class GatewayStatus:
    nodes: tuple[GatewayNode, ...] = ()
    ipv4_total: int = 0
    ipv4_free: int = 0
    ipv6_total: int = 0
    ipv6_free: int = 0
    policies: tuple[str, ...] = ()  # keys of the policies it serves (its users: they block its deletion)
    conditions: tuple[Condition, ...] = ()

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


def _conditions_dict(conditions: Iterable[Condition]) -> list[dict]:
    return [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message} for c in conditions]


@dataclass(frozen=True)
class Allocation:
    eips: tuple[EipAssignment, ...] = ()  # sorted by address family, then address
    policies: Mapping[str, PolicyStatus] = field(default_factory=dict)  # key namespace/name
    # Every refusal: the state source's (first) and the allocation's own.
    errors: tuple[ObjectError, ...] = ()
    gateways: Mapping[str, GatewayStatus] = field(default_factory=dict)
    # Per gateway and family ("edge", 4): the last address handed out from the
    # pool, where round-robin allocation goes on from.
    rr_last: Mapping[tuple[str, int], netaddr.IPAddress] = field(default_factory=dict)
    # str(ObjectRef) -> what decided incumbency (the state's ``accepted``): a
    # restarted controller hands it to its source, so a restart changes nothing.
    accepted: Mapping[str, Accepted] = field(default_factory=dict)

    def eip(self, ip: netaddr.IPAddress | str) -> EipAssignment | None:
        ip = netaddr.IPAddress(str(ip))
        return next((a for a in self.eips if a.ip == ip), None)

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        rr: dict[str, dict[str, str]] = {}
        for (gw, version), ip in sorted(self.rr_last.items()):
            rr.setdefault(gw, {})[f"ipv{version}"] = str(ip)
        return {
            "eips": [
                {"ip": str(a.ip), "gateway": a.gateway, "policies": list(a.policies),
                 "tunnel_key": a.tunnel_key, "nodes": list(a.nodes), **({"node_ip": True} if a.node_ip else {})}
                for a in self.eips
            ],
            "policies": {
                key: {
                    "eip_v4": _str_or_none(s.eip_v4), "eip_v6": _str_or_none(s.eip_v6),
                    "gateway": s.gateway, "node": s.node, "ready": s.ready,
                    "conditions": _conditions_dict(s.conditions),
                }
                for key, s in sorted(self.policies.items())
            },
            "gateways": {
                name: {
                    "nodes": [{"name": n.name, "ready": n.ready, "eips": [str(ip) for ip in n.eips]}
                              for n in g.nodes],
                    "ipUsage": {"ipv4Total": g.ipv4_total, "ipv4Free": g.ipv4_free,
                                "ipv6Total": g.ipv6_total, "ipv6Free": g.ipv6_free},
                    "policies": list(g.policies),
                    "conditions": _conditions_dict(g.conditions),
                }
                for name, g in sorted(self.gateways.items())
            },
            "rr_last": rr,
            "errors": [e.to_dict() for e in self.errors],
            "accepted": {
                ref: {k: v for k, v in (("source", a.source), ("gateway", a.gateway),
                                        ("eip_v4", _str_or_none(a.eip_v4)), ("eip_v6", _str_or_none(a.eip_v6)),
                                        ("clusterDefault", a.cluster_default)) if v}
                for ref, a in sorted(self.accepted.items())
            },
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> "Allocation":
        r = _Reader()
        top = r.mapping(data, "", ("eips", "policies", "gateways", "rr_last", "errors", "accepted"))
        eips = []
        for i, a in enumerate(r.seq(top.get("eips"), "eips")):
            p = f"eips[{i}]"
            a = r.mapping(a, p, ("ip", "gateway", "policies", "tunnel_key", "nodes", "node_ip"))
            if not isinstance(a.get("node_ip", False), bool):
                r.fail(f"{p}.node_ip", "must be a boolean")
            key = a.get("tunnel_key")
            if isinstance(key, bool) or not isinstance(key, int) or not TUNNEL_KEY_MIN <= key <= TUNNEL_KEY_MAX:
                r.fail(f"{p}.tunnel_key", f"must be an integer in {TUNNEL_KEY_MIN}..{TUNNEL_KEY_MAX}")
            eips.append(EipAssignment(
                ip=r.ip(a.get("ip"), f"{p}.ip"), gateway=r.text(a.get("gateway"), f"{p}.gateway"),
                policies=r.strings(a.get("policies"), f"{p}.policies"), tunnel_key=key,
                nodes=r.strings(a.get("nodes"), f"{p}.nodes"), node_ip=a.get("node_ip", False)))
        policies = {}
        raw = top.get("policies") or {}
        if not isinstance(raw, dict):
            r.fail("policies", "must be a mapping")
        for key, s in raw.items():
            p = f"policies[{key}]"
            s = r.mapping(s, p, ("eip_v4", "eip_v6", "gateway", "node", "ready", "conditions"))
            if not isinstance(s.get("ready", False), bool):
                r.fail(f"{p}.ready", "must be a boolean")
            node = s.get("node")
            policies[key] = PolicyStatus(
                eip_v4=None if s.get("eip_v4") is None else r.ip(s["eip_v4"], f"{p}.eip_v4", 4),
                eip_v6=None if s.get("eip_v6") is None else r.ip(s["eip_v6"], f"{p}.eip_v6", 6),
                gateway=r.text(s.get("gateway", ""), f"{p}.gateway"),
                node=None if node is None else r.text(node, f"{p}.node"),
                ready=s.get("ready", False), conditions=r.conditions(s.get("conditions"), f"{p}.conditions"))
        gateways = {}
        raw = top.get("gateways") or {}
        if not isinstance(raw, dict):
            r.fail("gateways", "must be a mapping")
        for name, g in raw.items():
            p = f"gateways[{name}]"
            g = r.mapping(g, p, ("nodes", "ipUsage", "policies", "conditions"))
            nodes = []
            for j, n in enumerate(r.seq(g.get("nodes"), f"{p}.nodes")):
                np_ = f"{p}.nodes[{j}]"
                n = r.mapping(n, np_, ("name", "ready", "eips"))
                if not isinstance(n.get("ready", False), bool):
                    r.fail(f"{np_}.ready", "must be a boolean")
                nodes.append(GatewayNode(
                    name=r.text(n.get("name"), f"{np_}.name"), ready=n.get("ready", False),
                    eips=tuple(r.ip(ip, f"{np_}.eips[{k}]") for k, ip in enumerate(r.seq(n.get("eips"),
                                                                                         f"{np_}.eips")))))
            usage = r.mapping(g.get("ipUsage") or {}, f"{p}.ipUsage",
                              ("ipv4Total", "ipv4Free", "ipv6Total", "ipv6Free"))
            counts = {k: r.count(usage.get(k, 0), f"{p}.ipUsage.{k}")
                      for k in ("ipv4Total", "ipv4Free", "ipv6Total", "ipv6Free")}
            gateways[name] = GatewayStatus(
                nodes=tuple(nodes), ipv4_total=counts["ipv4Total"], ipv4_free=counts["ipv4Free"],
                ipv6_total=counts["ipv6Total"], ipv6_free=counts["ipv6Free"],
                policies=r.strings(g.get("policies"), f"{p}.policies"),
                conditions=r.conditions(g.get("conditions"), f"{p}.conditions"))
        rr_last = {}
        raw = top.get("rr_last") or {}
        if not isinstance(raw, dict):
            r.fail("rr_last", "must be a mapping")
        for name, by_family in raw.items():
            by_family = r.mapping(by_family, f"rr_last[{name}]", ("ipv4", "ipv6"))
            for fam, ip in by_family.items():
                version = int(fam[-1])
                rr_last[(name, version)] = r.ip(ip, f"rr_last[{name}].{fam}", version)
        errors = []
        for i, e in enumerate(r.seq(top.get("errors"), "errors")):
            p = f"errors[{i}]"
            e = r.mapping(e, p, ("kind", "namespace", "name", "field", "message", "source"))
            v = {k: r.text(e.get(k, ""), f"{p}.{k}") for k in
                 ("kind", "namespace", "name", "field", "message", "source")}
            errors.append(ObjectError(ObjectRef(v["kind"], v["namespace"], v["name"]), v["field"],
                                      v["message"], v["source"]))
        accepted = {}
        raw = top.get("accepted") or {}
        if not isinstance(raw, dict):
            r.fail("accepted", "must be a mapping")
        for ref, a in raw.items():
            p = f"accepted[{ref}]"
            a = r.mapping(a, p, ("source", "gateway", "eip_v4", "eip_v6", "clusterDefault"))
            if not isinstance(a.get("clusterDefault", False), bool):
                r.fail(f"{p}.clusterDefault", "must be a boolean")
            accepted[ref] = Accepted(
                source=r.text(a.get("source", ""), f"{p}.source"), gateway=r.text(a.get("gateway", ""),
                                                                                  f"{p}.gateway"),
                eip_v4=None if a.get("eip_v4") is None else r.ip(a["eip_v4"], f"{p}.eip_v4", 4),
                eip_v6=None if a.get("eip_v6") is None else r.ip(a["eip_v6"], f"{p}.eip_v6", 6),
                cluster_default=a.get("clusterDefault", False))
        return cls(eips=tuple(eips), policies=policies, errors=tuple(errors), gateways=gateways,
                   rr_last=rr_last, accepted=accepted)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Allocation":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)


def _str_or_none(ip: netaddr.IPAddress | None) -> str | None:
    return None if ip is None else str(ip)


class _Reader:
    """Strict reading of allocation JSON; raises ValueError naming the field."""

    def fail(self, path: str, message: str):
        raise ValueError(f"{path or 'top level'}: {message}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            self.fail(path, "must be a mapping")
        for k in value:
            if k not in allowed:
                self.fail(path, f"unknown key {k!r}")
        return value

    def seq(self, value: Any, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, "must be a list")
        return value

    def text(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            self.fail(path, "must be a string")
        return value

    def count(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.fail(path, "must be a non-negative integer")
        return value

    def conditions(self, value: Any, path: str) -> tuple[Condition, ...]:
        out = []
        for j, c in enumerate(self.seq(value, path)):
            cp = f"{path}[{j}]"
            c = self.mapping(c, cp, ("type", "status", "reason", "message"))
            out.append(Condition(type=self.text(c.get("type"), f"{cp}.type"),
                                 status=self.text(c.get("status"), f"{cp}.status"),
                                 reason=self.text(c.get("reason"), f"{cp}.reason"),
                                 message=self.text(c.get("message", ""), f"{cp}.message")))
        return tuple(out)

    def strings(self, value: Any, path: str) -> tuple[str, ...]:
        return tuple(self.text(v, f"{path}[{i}]") for i, v in enumerate(self.seq(value, path)))

    def ip(self, value: Any, path: str, version: int | None = None) -> netaddr.IPAddress:
        try:
            addr = ipaddress.ip_address(self.text(value, path))
        except ValueError:
            self.fail(path, f"{value!r} is not an IP address")
        if version is not None and addr.version != version:
            self.fail(path, f"{value!r} is not an IPv{version} address")
        return netaddr.IPAddress(str(addr))


# -- allocation --------------------------------------------------------------------------------------

def _families(p: EgressPolicy, gw: EgressGateway) -> tuple[int, ...]:
    """The address families a policy gets an EIP of: both of a dual-stack
    gateway's; else those it names one for, and those its gateway has a pool for."""
    if gw.dual_stack:
        return (4, 6)
    return tuple(v for v in (4, 6) if p.explicit_eip(v) is not None or gw.pool(v))


def lowest_free(pool: Iterable[netaddr.IPRange], taken: Mapping | set) -> netaddr.IPAddress | None:
    """The lowest address of ``pool`` not in ``taken``; O(len(taken)) per range."""
    for r in sorted(pool, key=lambda r: r.first):
        candidate = r.first
        while candidate <= r.last:
            ip = netaddr.IPAddress(candidate, r.version)
            if ip not in taken:
                return ip
            candidate += 1
    return None


def _index_after(gw: EgressGateway, version: int, last: netaddr.IPAddress | None) -> int:
    """The pool index of the first address above ``last`` (0 when none is)."""
    if last is None:
        return 0
    offset = 0
    for r in gw.pool(version):
        if int(last) < r.first:
            return offset
        if int(last) < r.last:
            return offset + int(last) - r.first + 1
        offset += r.size
    return 0


def _free_index(gw: EgressGateway, versions: tuple[int, ...], taken: Mapping, start: int = 0) -> int | None:
    """The first pool index from ``start`` on (wrapping) whose addresses of
    every family in ``versions`` are free; O(len(taken)) steps."""
    size = gw.pool_size(versions[0])
    if not size:
        return None
    index = start % size
    for _ in range(min(size, len(taken) + 1)):
        if all(gw.address_at(v, index) not in taken for v in versions):
            return index
        index = (index + 1) % size
    return None


@dataclass
class _Problem:
    reason: str
    field: str
    message: str


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


def _resolve(state: ClusterState, p: EgressPolicy, previous: Allocation
             ) -> tuple[EgressGateway | None, _Problem | None]:
    """The gateway that serves a policy: the one it names; else the one it was
    served by (a default, once applied, sticks); else its default.  A gateway
    being deleted serves only the policies it already served."""
    old = previous.policies.get(p.key)
    if p.gateway:
        name = p.gateway
        if name not in state.gateways:
            return None, _Problem(GATEWAY_NOT_FOUND, "spec.egressGatewayName",
                                  f"no EgressGateway named {quote_name(name)}")
    elif old is not None and old.gateway in state.gateways:
        name = old.gateway
    else:
        name, why = default_gateway(state, p)
        if not name:
            return None, _Problem(GATEWAY_NOT_FOUND, "spec.egressGatewayName", why)
    gw = state.gateways[name]
    if not p.cluster and not gw.serves_namespace(state.namespace_labels(p.namespace)):
        return None, _Problem(NAMESPACE_NOT_ALLOWED, "spec.egressGatewayName",
                              namespace_refusal(gw, p.namespace))
    if gw.deleting and (old is None or old.gateway != name):
        return None, _Problem(GATEWAY_DELETING, "spec.egressGatewayName",
                              f"EgressGateway {name} is being deleted: it takes no new policies")
    return gw, None


def namespace_refusal(gw: EgressGateway, namespace: str) -> str:
    return (f"EgressGateway {gw.name} does not serve namespace {namespace}: its namespaceSelector "
            f"({gw.namespace_selector}) does not match the namespace's labels; ask the gateway's owner, or "
            "name a gateway that serves this namespace")


class _Ledger:
    """Which policy holds which EIP, while :func:`allocate` runs."""

    def __init__(self, state: ClusterState):
        self.state = state
        self.taken: dict[netaddr.IPAddress, str] = {}  # EIP -> policy key, across all gateways
        self.got: dict[tuple[str, int], netaddr.IPAddress] = {}

    def take(self, p: EgressPolicy, version: int, ip: netaddr.IPAddress) -> None:
        self.taken[ip] = p.key
        self.got[(p.key, version)] = ip

    def release(self, p: EgressPolicy, version: int) -> None:
        ip = self.got.pop((p.key, version), None)
        if ip is not None:
            del self.taken[ip]

    def holder(self, ip: netaddr.IPAddress) -> str:
        return str(self.state.policies[self.taken[ip]].ref)


def allocate(state: ClusterState, previous: Allocation | None = None,
             held: Mapping[str, str] | None = None) -> Allocation:
    """``held``: EIP -> the node whose data plane reports holding it (agents'
    reports); that node becomes the EIP's active gateway, so the control plane
    records a failover the data plane already made instead of undoing it."""
    previous = previous or Allocation()
    policies = sorted(state.policies.values(), key=lambda p: p.key)
    problems: dict[str, list[_Problem]] = {p.key: [] for p in policies}
    gateway_problems: dict[str, list[_Problem]] = {}
    served: dict[str, EgressGateway] = {}
    for p in policies:
        gw, problem = _resolve(state, p, previous)
        if problem is not None:
            problems[p.key].append(problem)
        else:
            served[p.key] = gw
    ledger = _Ledger(state)
    take, got, taken = ledger.take, ledger.got, ledger.taken
    rr_last = {k: v for k, v in previous.rr_last.items() if k[0] in state.gateways}

    # 1. Sticky: what a policy had stays its own while it still qualifies.  An
    #    address that left the pool while in use stays with its holder.
    for p in policies:
        gw, old = served.get(p.key), previous.policies.get(p.key)
        if gw is None or old is None or old.gateway != gw.name or p.use_node_ip:
            continue
        for v in _families(p, gw):
            ip = old.eip(v)
            if ip is None or ip.version != v or ip in taken or p.explicit_eip(v) not in (None, ip):
                continue
            if not gw.in_pool(ip):
                gateway_problems.setdefault(gw.name, []).append(_Problem(
                    IN_USE_ADDRESS_REMOVED, f"spec.ippools.ipv{v}",
                    f"{ip} left the pool while {p.ref} uses it: an address in use stays until its "
                    "policy releases it"))
            take(p, v, ip)

    # 2. Explicit EIPs (in a dual-stack gateway, with the address they pair with).
    for p in policies:
        gw = served.get(p.key)
        if gw is None or p.use_node_ip:
            continue
        for v in (4, 6):
            ip = p.explicit_eip(v)
            if ip is None or (p.key, v) in got:
                continue
            field_ = f"spec.egressIP.ipv{v}"
            if not gw.in_pool(ip):
                problems[p.key].append(_Problem(NOT_IN_POOL, field_, f'"{ip}" is not in the pool of '
                                                f"EgressGateway {gw.name} ({gw.pool_text(v)})"))
            elif ip in taken:
                problems[p.key].append(_Problem(EIP_IN_USE, field_, f'"{ip}" is already the egress IP '
                                                f"of {ledger.holder(ip)}"))
            else:
                take(p, v, ip)
        if not gw.dual_stack or problems[p.key]:
            continue
        if p.eip_v4 and p.eip_v6 and gw.pair_of(p.eip_v4) != p.eip_v6:
            problems[p.key].append(_Problem(NOT_PAIRED, "spec.egressIP.ipv6", (
                f'"{p.eip_v6}" does not pair with {p.eip_v4} in EgressGateway {gw.name}: {p.eip_v4} pairs '
                f"with {gw.pair_of(p.eip_v4)}")))
            continue
        mine = [v for v in (4, 6) if p.explicit_eip(v) is not None]
        if len(mine) == 1 and (p.key, 10 - mine[0]) not in got:
            v = mine[0]
            pair = gw.pair_of(p.explicit_eip(v))
            if pair in taken:
                problems[p.key].append(_Problem(EIP_IN_USE, f"spec.egressIP.ipv{v}", (
                    f'"{p.explicit_eip(v)}" pairs with {pair}, which is already the egress IP of '
                    f"{ledger.holder(pair)}")))
            else:
                take(p, 10 - v, pair)
    for p in policies:  # never half a pair
        gw = served.get(p.key)
        if gw is not None and gw.dual_stack and problems[p.key]:
            for v in (4, 6):
                if p.explicit_eip(v) is not None:
                    ledger.release(p, v)

    # 3. From the pool: the lowest free address ("default") or the next free
    #    one after the last handed out ("rr").
    for p in policies:
        gw = served.get(p.key)
        if gw is None or p.use_node_ip:
            continue
        families = _families(p, gw)
        if not families:
            problems[p.key].append(_Problem(NO_POOL, "spec.egressGatewayName",
                                            f"EgressGateway {gw.name} has no addresses in its pool"))
            continue
        if gw.dual_stack:
            if problems[p.key] or all((p.key, v) in got for v in (4, 6)):
                continue
            have = [v for v in (4, 6) if (p.key, v) in got]
            if have:  # the gateway became dual-stack: the other half is the pair
                v = have[0]
                pair = gw.pair_of(got[(p.key, v)])
                if pair is None or pair in taken:
                    why = (f"is already the egress IP of {ledger.holder(pair)}" if pair is not None
                           else "is not in the pool")
                    problems[p.key].append(_Problem(POOL_EXHAUSTED, "spec.egressGatewayName", (
                        f"the IPv{10 - v} address that pairs with {got[(p.key, v)]} {why}")))
                else:
                    take(p, 10 - v, pair)
                continue
            start = (_index_after(gw, 4, rr_last.get((gw.name, 4)))
                     if p.allocator == ALLOCATOR_RR else 0)
            index = _free_index(gw, (4, 6), taken, start)
            if index is None:
                problems[p.key].append(_Problem(
                    POOL_EXHAUSTED, "spec.egressGatewayName",
                    f"no free IPv4/IPv6 pair left in the pool of EgressGateway {gw.name} "
                    f"({gw.pool_text(4)}; {gw.pool_text(6)})"))
                continue
            for v in (4, 6):
                take(p, v, gw.address_at(v, index))
                rr_last[(gw.name, v)] = gw.address_at(v, index)
            continue
        for v in families:
            if p.explicit_eip(v) is not None or (p.key, v) in got:
                continue
            start = (_index_after(gw, v, rr_last.get((gw.name, v)))
                     if p.allocator == ALLOCATOR_RR else 0)
            index = _free_index(gw, (v,), taken, start)
            if index is None:
                problems[p.key].append(_Problem(
                    POOL_EXHAUSTED, "spec.egressGatewayName",
                    f"no free IPv{v} address left in the pool of EgressGateway {gw.name} "
                    f"({gw.pool_text(v)})"))
            else:
                ip = gw.address_at(v, index)
                take(p, v, ip)
                rr_last[(gw.name, v)] = ip

    gateway_of = {ip: served[key].name for ip, key in taken.items()}
    nodes = _elect(state, gateway_of, previous, held)
    pool_eips = [EipAssignment(ip=ip, gateway=gateway_of[ip], policies=(taken[ip],), tunnel_key=0,
                               nodes=nodes[ip]) for ip in taken]
    node_ip_nodes = _node_ip_nodes(state, [p for p in policies if p.use_node_ip and p.key in served],
                                   served, previous, tuple(pool_eips))
    node_ips = _node_ip_assignments(state, node_ip_nodes, served, taken)
    for key, node in node_ip_nodes.items():
        for ip in node_ips.get(node, {}):
            got[(key, ip.version)] = ip
    ips = sorted(list(taken) + [ip for by_ip in node_ips.values() for ip in by_ip],
                 key=lambda ip: (ip.version, ip.value))
    keys = _tunnel_keys(ips, previous)
    everything = {a.ip: a for a in pool_eips}
    everything.update({ip: a for by_ip in node_ips.values() for ip, a in by_ip.items()})
    eips = tuple(dataclasses.replace(everything[ip], tunnel_key=keys[ip]) for ip in ips)
    by_ip = {a.ip: a for a in eips}

    statuses: dict[str, PolicyStatus] = {}
    errors: list[ObjectError] = []
    for p in policies:
        mine = [got[(p.key, v)] for v in (4, 6) if (p.key, v) in got]
        probs = problems[p.key]
        gw = served.get(p.key)
        errors.extend(ObjectError(p.ref, pr.field, pr.message) for pr in probs)
        if probs:
            ip_cond = Condition(IP_ALLOCATED, "False", probs[0].reason,
                                "; ".join(pr.message for pr in probs))
            ready = Condition(READY, "False", IP_NOT_ALLOCATED,
                              "not every address family has an EIP" if mine else "no EIP")
            active = next((by_ip[ip].active for ip in mine if by_ip[ip].active), None)
        elif p.use_node_ip:
            active = node_ip_nodes.get(p.key)
            if active and mine:
                ip_cond = Condition(IP_ALLOCATED, "True", NODE_IP,
                                    f"the address of its gateway node {active}: {', '.join(map(str, mine))}")
                ready = Condition(READY, "True", GATEWAY_NODE_SELECTED,
                                  f"SNAT to {', '.join(map(str, mine))} on node {active} (no standby: "
                                  "another node is another address)")
            else:
                why = (f"node {active} has no address the policy could use" if active else
                       f"no ready node matches the nodeSelector of EgressGateway {gw.name} "
                       f"({gw.node_selector})")
                ip_cond = Condition(IP_ALLOCATED, "False", NODE_IP, f"uses its gateway node's address; {why}")
                ready = Condition(READY, "False", NO_GATEWAY_NODE, why)
                active = None
        else:
            ip_cond = Condition(IP_ALLOCATED, "True", ALLOCATED,
                                f"EIP {', '.join(map(str, mine))} from EgressGateway {gw.name}")
            homeless = [ip for ip in mine if not by_ip[ip].nodes]
            if homeless:
                ready = Condition(READY, "False", NO_GATEWAY_NODE,
                                  f"no ready node matches the nodeSelector of EgressGateway {gw.name} "
                                  f"({gw.node_selector})")
            else:
                ready = Condition(READY, "True", GATEWAY_NODE_SELECTED, "; ".join(
                    f"EIP {ip} on node {by_ip[ip].nodes[0]}"
                    + (f" (standby: {listing(by_ip[ip].nodes[1:])})" if len(by_ip[ip].nodes) > 1 else "")
                    for ip in mine))
            active = next((by_ip[ip].active for ip in mine if by_ip[ip].active), None)
        statuses[p.key] = PolicyStatus(
            eip_v4=got.get((p.key, 4)), eip_v6=got.get((p.key, 6)),
            gateway=gw.name if gw is not None else "", node=active,
            ready=ready.status == "True", conditions=(ip_cond, ready))

    gateway_statuses = {name: _gateway_status(state, gw, served, eips, gateway_problems.get(name, []))
                        for name, gw in sorted(state.gateways.items())}
    for name, probs in sorted(gateway_problems.items()):
        errors.extend(ObjectError(state.gateways[name].ref, pr.field, pr.message) for pr in probs)
    return Allocation(eips=eips, policies=statuses, errors=tuple(state.errors) + tuple(errors),
                      gateways=gateway_statuses, rr_last=dict(sorted(rr_last.items())),
                      accepted=dict(sorted(state.accepted.items())))


def _node_ip_assignments(state: ClusterState, node_ip_nodes: Mapping[str, str],
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


def _node_ip_nodes(state: ClusterState, policies: list[EgressPolicy], served: Mapping[str, EgressGateway],
                   previous: Allocation, eips: tuple[EipAssignment, ...]) -> dict[str, str]:
    """The gateway node of each useNodeIP policy: the one it had while it
    qualifies, else the eligible node with the fewest active EIPs."""
    load = Counter(a.active for a in eips if a.active)
    out = {}
    for p in policies:
        eligible = eligible_nodes(state, served[p.key])
        old = previous.policies.get(p.key)
        if old is not None and old.node in eligible:
            out[p.key] = old.node
        elif eligible:
            out[p.key] = min(eligible, key=lambda n: (load[n], n))
        else:
            continue
        load[out[p.key]] += 1
    return out


def _gateway_status(state: ClusterState, gw: EgressGateway, served: Mapping[str, EgressGateway],
                    eips: tuple[EipAssignment, ...], problems: list[_Problem]) -> GatewayStatus:
    mine = [a for a in eips if a.gateway == gw.name]
    eligible = set(eligible_nodes(state, gw))
    nodes = tuple(
        GatewayNode(name=n.name, ready=n.name in eligible,
                    eips=tuple(a.ip for a in mine if a.active == n.name))
        for n in sorted(state.nodes.values(), key=lambda n: n.name) if gw.node_selector.matches(n.labels))
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


def _tunnel_keys(ips: list[netaddr.IPAddress], previous: Allocation) -> dict[netaddr.IPAddress, int]:
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


def eligible_nodes(state: ClusterState, gw: EgressGateway | None) -> list[str]:
    """Nodes that may hold a gateway's EIPs: ready, with an address, matching
    its nodeSelector; by name."""
    if gw is None:
        return []
    return sorted(n.name for n in state.nodes.values()
                  if n.ready and n.addresses and gw.node_selector.matches(n.labels))


def _elect(state: ClusterState, gateway_of: Mapping[netaddr.IPAddress, str],
           previous: Allocation, held: Mapping[str, str] | None = None
           ) -> dict[netaddr.IPAddress, tuple[str, ...]]:
    ips = sorted(gateway_of, key=lambda ip: (ip.version, ip.value))
    eligible = {name: eligible_nodes(state, state.gateways.get(name)) for name in set(gateway_of.values())}
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


# -- the store --------------------------------------------------------------------------------------

class AllocationStore:
    """``allocation.json`` and ``errors.json`` in a status directory.  Writes
    are atomic (temporary file + rename) and skipped when the content is
    unchanged, so readers watching the files see only real changes."""

    ALLOCATION = "allocation.json"
    ERRORS = "errors.json"

    def __init__(self, path: str):
        self.path = str(path)

    @property
    def allocation_file(self) -> str:
        return os.path.join(self.path, self.ALLOCATION)

    @property
    def errors_file(self) -> str:
        return os.path.join(self.path, self.ERRORS)

    def load(self) -> Allocation | None:
        """The saved allocation; None when there is none yet.  Raises
        ValueError naming the file and the field when it cannot be read."""
        try:
            with open(self.allocation_file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            return Allocation.from_json(data)
        except ValueError as exc:
            raise ValueError(f"{self.allocation_file}: {exc}") from None

    def set_aside(self) -> str:
        """Move an unreadable allocation file aside; returns where it went."""
        bad = self.allocation_file + ".bad"
        os.replace(self.allocation_file, bad)
        return bad

    def save(self, alloc: Allocation) -> bool:
        """Write both files; True when either changed."""
        os.makedirs(self.path, exist_ok=True)
        errors = json.dumps([e.to_dict() for e in alloc.errors], indent=2, sort_keys=True) + "\n"
        changed = _write_if_changed(self.errors_file, errors.encode())
        return _write_if_changed(self.allocation_file, alloc.to_json().encode()) or changed


def _write_if_changed(path: str, data: bytes) -> bool:
    return write_atomic(path, data, only_if_changed=True)
