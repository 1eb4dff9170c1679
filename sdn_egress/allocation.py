"""EIP allocation and gateway election: ClusterState (+ the previous result) -> Allocation.

The rules, in the order they are applied (:func:`allocate`):

1. **Sticky**: a policy keeps the EIP it had while it exists, names the same
   gateway, the EIP is still in that gateway's pool and (when the policy names
   an EIP explicitly) still the one it names.  An EIP is freed only when the
   policy that holds it goes or stops qualifying for it; it is never handed to
   another policy while its holder keeps it.
2. **Explicit**: ``spec.egressIP`` is honoured when it lies in the gateway's pool
   and no policy holds it (``EIPInUse`` otherwise, the holder named).
3. **Pool**: every other policy gets the lowest free address of each family
   its gateway has a pool for; none left -> ``PoolExhausted``, no EIP.
   EIPs are unique across all gateways.

Each EIP gets a Geneve tunnel key (1..2**24-1): the one it had, else the lowest
free.  Its gateway nodes are the ready nodes (with an address) matching the
gateway's nodeSelector, active first: the previous active while it still
qualifies, else the previous first standby that still qualifies (the node the
data plane fails over to), else the node holding the fewest EIPs as active
(ties by name).  Standbys keep their previous order; new ones follow, fewest
EIPs first.  The same inputs always give the same output.
"""
from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import netaddr

from sdn_egress.model import ClusterState, EgressGateway, EgressPolicy, ObjectError, ObjectRef

TUNNEL_KEY_MIN = 1
TUNNEL_KEY_MAX = 2**24 - 1

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

    @property
    def active(self) -> str | None:
        return self.nodes[0] if self.nodes else None


@dataclass(frozen=True)
class Allocation:
    eips: tuple[EipAssignment, ...] = ()  # sorted by address family, then address
    policies: Mapping[str, PolicyStatus] = field(default_factory=dict)  # key namespace/name
    # Every refusal: the state source's (first) and the allocation's own.
    errors: tuple[ObjectError, ...] = ()

    def eip(self, ip: netaddr.IPAddress | str) -> EipAssignment | None:
        ip = netaddr.IPAddress(str(ip))
        return next((a for a in self.eips if a.ip == ip), None)

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "eips": [
                {"ip": str(a.ip), "gateway": a.gateway, "policies": list(a.policies),
                 "tunnel_key": a.tunnel_key, "nodes": list(a.nodes)}
                for a in self.eips
            ],
            "policies": {
                key: {
                    "eip_v4": _str_or_none(s.eip_v4), "eip_v6": _str_or_none(s.eip_v6),
                    "gateway": s.gateway, "node": s.node, "ready": s.ready,
                    "conditions": [{"type": c.type, "status": c.status, "reason": c.reason,
                                    "message": c.message} for c in s.conditions],
                }
                for key, s in sorted(self.policies.items())
            },
            "errors": [e.to_dict() for e in self.errors],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> "Allocation":
        r = _Reader()
        top = r.mapping(data, "", ("eips", "policies", "errors"))
        eips = []
        for i, a in enumerate(r.seq(top.get("eips"), "eips")):
            p = f"eips[{i}]"
            a = r.mapping(a, p, ("ip", "gateway", "policies", "tunnel_key", "nodes"))
            key = a.get("tunnel_key")
            if isinstance(key, bool) or not isinstance(key, int) or not TUNNEL_KEY_MIN <= key <= TUNNEL_KEY_MAX:
                r.fail(f"{p}.tunnel_key", f"must be an integer in {TUNNEL_KEY_MIN}..{TUNNEL_KEY_MAX}")
            eips.append(EipAssignment(
                ip=r.ip(a.get("ip"), f"{p}.ip"), gateway=r.text(a.get("gateway"), f"{p}.gateway"),
                policies=r.strings(a.get("policies"), f"{p}.policies"), tunnel_key=key,
                nodes=r.strings(a.get("nodes"), f"{p}.nodes")))
        policies = {}
        raw = top.get("policies") or {}
        if not isinstance(raw, dict):
            r.fail("policies", "must be a mapping")
        for key, s in raw.items():
            p = f"policies[{key}]"
            s = r.mapping(s, p, ("eip_v4", "eip_v6", "gateway", "node", "ready", "conditions"))
            if not isinstance(s.get("ready", False), bool):
                r.fail(f"{p}.ready", "must be a boolean")
            conditions = []
            for j, c in enumerate(r.seq(s.get("conditions"), f"{p}.conditions")):
                cp = f"{p}.conditions[{j}]"
                c = r.mapping(c, cp, ("type", "status", "reason", "message"))
                conditions.append(Condition(
                    type=r.text(c.get("type"), f"{cp}.type"), status=r.text(c.get("status"), f"{cp}.status"),
                    reason=r.text(c.get("reason"), f"{cp}.reason"),
                    message=r.text(c.get("message", ""), f"{cp}.message")))
            node = s.get("node")
            policies[key] = PolicyStatus(
                eip_v4=None if s.get("eip_v4") is None else r.ip(s["eip_v4"], f"{p}.eip_v4", 4),
                eip_v6=None if s.get("eip_v6") is None else r.ip(s["eip_v6"], f"{p}.eip_v6", 6),
                gateway=r.text(s.get("gateway", ""), f"{p}.gateway"),
                node=None if node is None else r.text(node, f"{p}.node"),
                ready=s.get("ready", False), conditions=tuple(conditions))
        errors = []
        for i, e in enumerate(r.seq(top.get("errors"), "errors")):
            p = f"errors[{i}]"
            e = r.mapping(e, p, ("kind", "namespace", "name", "field", "message", "source"))
            v = {k: r.text(e.get(k, ""), f"{p}.{k}") for k in
                 ("kind", "namespace", "name", "field", "message", "source")}
            errors.append(ObjectError(ObjectRef(v["kind"], v["namespace"], v["name"]), v["field"],
                                      v["message"], v["source"]))
        return cls(eips=tuple(eips), policies=policies, errors=tuple(errors))

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

def _explicit(p: EgressPolicy, version: int) -> netaddr.IPAddress | None:
    return p.eip_v4 if version == 4 else p.eip_v6


def _families(p: EgressPolicy, gw: EgressGateway) -> tuple[int, ...]:
    """The address families a policy gets an EIP of: those it names one for,
    and those its gateway has a pool for."""
    return tuple(v for v in (4, 6) if _explicit(p, v) is not None or gw.pool(v))


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


@dataclass
class _Problem:
    reason: str
    field: str
    message: str


def allocate(state: ClusterState, previous: Allocation | None = None,
             held: Mapping[str, str] | None = None) -> Allocation:
    """``held``: EIP -> the node whose data plane reports holding it (agents'
    reports); that node becomes the EIP's active gateway, so the control plane
    records a failover the data plane already made instead of undoing it."""
    previous = previous or Allocation()
    policies = sorted(state.policies.values(), key=lambda p: p.key)
    gateways = state.gateways
    taken: dict[netaddr.IPAddress, str] = {}  # EIP -> policy key, across all gateways
    got: dict[tuple[str, int], netaddr.IPAddress] = {}
    problems: dict[str, list[_Problem]] = {p.key: [] for p in policies}

    def take(p: EgressPolicy, version: int, ip: netaddr.IPAddress) -> None:
        taken[ip] = p.key
        got[(p.key, version)] = ip

    # 1. Sticky: what a policy had stays its own while it still qualifies.
    for p in policies:
        gw = gateways.get(p.gateway)
        old = previous.policies.get(p.key)
        if gw is None or old is None or old.gateway != p.gateway:
            continue
        for v in _families(p, gw):
            ip = old.eip(v)
            if (ip is None or ip.version != v or not gw.in_pool(ip) or ip in taken
                    or _explicit(p, v) not in (None, ip)):
                continue
            take(p, v, ip)

    # 2. Explicit EIPs.
    for p in policies:
        gw = gateways.get(p.gateway)
        if gw is None:
            problems[p.key].append(_Problem(GATEWAY_NOT_FOUND, "spec.egressGatewayName",
                                            f'no EgressGateway named "{p.gateway}"'))
            continue
        for v in (4, 6):
            ip = _explicit(p, v)
            if ip is None or (p.key, v) in got:
                continue
            field_ = f"spec.egressIP.ipv{v}"
            if not gw.in_pool(ip):
                problems[p.key].append(_Problem(NOT_IN_POOL, field_, f'"{ip}" is not in the pool of '
                                                f"EgressGateway {gw.name} ({gw.pool_text(v)})"))
            elif ip in taken:
                problems[p.key].append(_Problem(EIP_IN_USE, field_, f'"{ip}" is already the egress IP '
                                                f"of EgressPolicy {taken[ip]}"))
            else:
                take(p, v, ip)

    # 3. From the pool, lowest free address first.
    for p in policies:
        gw = gateways.get(p.gateway)
        if gw is None:
            continue
        families = _families(p, gw)
        if not families:
            problems[p.key].append(_Problem(NO_POOL, "spec.egressGatewayName",
                                            f"EgressGateway {gw.name} has no addresses in its pool"))
        for v in families:
            if _explicit(p, v) is not None or (p.key, v) in got:
                continue
            ip = lowest_free(gw.pool(v), taken)
            if ip is None:
                problems[p.key].append(_Problem(
                    POOL_EXHAUSTED, "spec.egressGatewayName",
                    f"no free IPv{v} address left in the pool of EgressGateway {gw.name} "
                    f"({gw.pool_text(v)})"))
            else:
                take(p, v, ip)

    keys = _tunnel_keys(sorted(taken, key=lambda ip: (ip.version, ip.value)), previous)
    gateway_of = {ip: state.policies[key].gateway for ip, key in taken.items()}
    nodes = _elect(state, gateway_of, previous, held)
    eips = tuple(
        EipAssignment(ip=ip, gateway=gateway_of[ip], policies=(taken[ip],), tunnel_key=keys[ip],
                      nodes=nodes[ip])
        for ip in sorted(taken, key=lambda ip: (ip.version, ip.value)))
    by_ip = {a.ip: a for a in eips}

    statuses: dict[str, PolicyStatus] = {}
    errors: list[ObjectError] = []
    for p in policies:
        mine = [got[(p.key, v)] for v in (4, 6) if (p.key, v) in got]
        probs = problems[p.key]
        errors.extend(ObjectError(p.ref, pr.field, pr.message) for pr in probs)
        if probs:
            ip_cond = Condition(IP_ALLOCATED, "False", probs[0].reason,
                                "; ".join(pr.message for pr in probs))
        else:
            ip_cond = Condition(IP_ALLOCATED, "True", ALLOCATED,
                                f"EIP {', '.join(map(str, mine))} from EgressGateway {p.gateway}")
        gw = gateways.get(p.gateway)
        homeless = [ip for ip in mine if not by_ip[ip].nodes]
        if probs:
            ready = Condition(READY, "False", IP_NOT_ALLOCATED,
                              "not every address family has an EIP" if mine else "no EIP")
        elif homeless:
            ready = Condition(READY, "False", NO_GATEWAY_NODE,
                              f"no ready node matches the nodeSelector of EgressGateway {gw.name} "
                              f"({gw.node_selector})")
        else:
            ready = Condition(READY, "True", GATEWAY_NODE_SELECTED, "; ".join(
                f"EIP {ip} on node {by_ip[ip].nodes[0]}"
                + (f" (standby: {', '.join(by_ip[ip].nodes[1:])})" if len(by_ip[ip].nodes) > 1 else "")
                for ip in mine))
        active = next((by_ip[ip].active for ip in mine if by_ip[ip].active), None)
        statuses[p.key] = PolicyStatus(
            eip_v4=got.get((p.key, 4)), eip_v6=got.get((p.key, 6)), gateway=p.gateway, node=active,
            ready=ready.status == "True", conditions=(ip_cond, ready))
    return Allocation(eips=eips, policies=statuses, errors=tuple(state.errors) + tuple(errors))


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

    def save(self, alloc: Allocation) -> bool:
        """Write both files; True when either changed."""
        os.makedirs(self.path, exist_ok=True)
        errors = json.dumps([e.to_dict() for e in alloc.errors], indent=2, sort_keys=True) + "\n"
        changed = _write_if_changed(self.errors_file, errors.encode())
        return _write_if_changed(self.allocation_file, alloc.to_json().encode()) or changed


def _write_if_changed(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return True
