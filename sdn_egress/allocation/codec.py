"""The allocation's JSON: writing it, and reading it back strictly (a wrong
field raises ValueError naming it, never a half-read allocation).

Each part has its own pair of functions (an EIP, a policy's status, a
gateway's status, an incumbency record, an error) so that the per-object
stores (:mod:`.records`) write and read the same shape as ``allocation.json``.
"""
from __future__ import annotations

import ipaddress
import json
from typing import Any, Iterable

import netaddr

from sdn_egress.allocation.types import (
    TUNNEL_KEY_MAX,
    TUNNEL_KEY_MIN,
    Allocation,
    Condition,
    EipAssignment,
    GatewayNode,
    GatewayStatus,
    PolicyStatus,
)
from sdn_egress.model import Accepted, ObjectError, ObjectRef

TOP_KEYS = ("eips", "policies", "gateways", "rr_last", "errors", "accepted")


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def loads(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


def _str_or_none(ip: netaddr.IPAddress | None) -> str | None:
    return None if ip is None else str(ip)


def _conditions_dict(conditions: Iterable[Condition]) -> list[dict]:
    return [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message} for c in conditions]


# -- writing -----------------------------------------------------------------------------------------

def eip_to_dict(a: EipAssignment) -> dict:
    return {"ip": str(a.ip), "gateway": a.gateway, "policies": list(a.policies),
            "tunnel_key": a.tunnel_key, "nodes": list(a.nodes), **({"node_ip": True} if a.node_ip else {})}


def policy_to_dict(s: PolicyStatus) -> dict:
    return {"eip_v4": _str_or_none(s.eip_v4), "eip_v6": _str_or_none(s.eip_v6),
            "gateway": s.gateway, "node": s.node, "ready": s.ready,
            "conditions": _conditions_dict(s.conditions)}


def gateway_to_dict(g: GatewayStatus) -> dict:
    return {"nodes": [{"name": n.name, "ready": n.ready, "eips": [str(ip) for ip in n.eips]} for n in g.nodes],
            "ipUsage": {"ipv4Total": g.ipv4_total, "ipv4Free": g.ipv4_free,
                        "ipv6Total": g.ipv6_total, "ipv6Free": g.ipv6_free},
            "policies": list(g.policies),
            "conditions": _conditions_dict(g.conditions)}


def accepted_to_dict(a: Accepted) -> dict:
    return {k: v for k, v in (("source", a.source), ("gateway", a.gateway),
                              ("eip_v4", _str_or_none(a.eip_v4)), ("eip_v6", _str_or_none(a.eip_v6)),
                              ("clusterDefault", a.cluster_default)) if v}


def rr_to_dict(rr_last) -> dict[str, dict[str, str]]:
    rr: dict[str, dict[str, str]] = {}
    for (gw, version), ip in sorted(rr_last.items()):
        rr.setdefault(gw, {})[f"ipv{version}"] = str(ip)
    return rr


def allocation_to_dict(alloc: Allocation) -> dict:
    return {
        "eips": [eip_to_dict(a) for a in alloc.eips],
        "policies": {key: policy_to_dict(s) for key, s in sorted(alloc.policies.items())},
        "gateways": {name: gateway_to_dict(g) for name, g in sorted(alloc.gateways.items())},
        "rr_last": rr_to_dict(alloc.rr_last),
        "errors": [e.to_dict() for e in alloc.errors],
        "accepted": {ref: accepted_to_dict(a) for ref, a in sorted(alloc.accepted.items())},
    }


# -- reading -----------------------------------------------------------------------------------------

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


    def flag(self, value: dict, key: str, path: str) -> bool:
        if not isinstance(value.get(key, False), bool):
            self.fail(f"{path}.{key}", "must be a boolean")
        return value.get(key, False)

    def optional_ip(self, value: dict, key: str, path: str, version: int) -> netaddr.IPAddress | None:
        return None if value.get(key) is None else self.ip(value[key], f"{path}.{key}", version)

    def table(self, value: Any, path: str) -> dict:
        """A mapping of names to parts (absent: empty)."""
        value = value or {}
        if not isinstance(value, dict):
            self.fail(path, "must be a mapping")
        return value


def eip_from_dict(r: _Reader, a: Any, p: str) -> EipAssignment:
    a = r.mapping(a, p, ("ip", "gateway", "policies", "tunnel_key", "nodes", "node_ip"))
    node_ip = r.flag(a, "node_ip", p)
    key = a.get("tunnel_key")
    if isinstance(key, bool) or not isinstance(key, int) or not TUNNEL_KEY_MIN <= key <= TUNNEL_KEY_MAX:
        r.fail(f"{p}.tunnel_key", f"must be an integer in {TUNNEL_KEY_MIN}..{TUNNEL_KEY_MAX}")
    return EipAssignment(
        ip=r.ip(a.get("ip"), f"{p}.ip"), gateway=r.text(a.get("gateway"), f"{p}.gateway"),
        policies=r.strings(a.get("policies"), f"{p}.policies"), tunnel_key=key,
        nodes=r.strings(a.get("nodes"), f"{p}.nodes"), node_ip=node_ip)


def policy_from_dict(r: _Reader, s: Any, p: str) -> PolicyStatus:
    s = r.mapping(s, p, ("eip_v4", "eip_v6", "gateway", "node", "ready", "conditions"))
    ready = r.flag(s, "ready", p)
    node = s.get("node")
    return PolicyStatus(
        eip_v4=r.optional_ip(s, "eip_v4", p, 4), eip_v6=r.optional_ip(s, "eip_v6", p, 6),
        gateway=r.text(s.get("gateway", ""), f"{p}.gateway"),
        node=None if node is None else r.text(node, f"{p}.node"),
        ready=ready, conditions=r.conditions(s.get("conditions"), f"{p}.conditions"))


def _gateway_node(r: _Reader, n: Any, p: str) -> GatewayNode:
    n = r.mapping(n, p, ("name", "ready", "eips"))
    ready = r.flag(n, "ready", p)
    return GatewayNode(name=r.text(n.get("name"), f"{p}.name"), ready=ready,
                       eips=tuple(r.ip(ip, f"{p}.eips[{k}]") for k, ip in enumerate(r.seq(n.get("eips"),
                                                                                        f"{p}.eips"))))


def gateway_from_dict(r: _Reader, g: Any, p: str) -> GatewayStatus:
    g = r.mapping(g, p, ("nodes", "ipUsage", "policies", "conditions"))
    nodes = tuple(_gateway_node(r, n, f"{p}.nodes[{j}]") for j, n in enumerate(r.seq(g.get("nodes"),
                                                                                   f"{p}.nodes")))
    usage = r.mapping(g.get("ipUsage") or {}, f"{p}.ipUsage", ("ipv4Total", "ipv4Free", "ipv6Total", "ipv6Free"))
    counts = {k: r.count(usage.get(k, 0), f"{p}.ipUsage.{k}")
              for k in ("ipv4Total", "ipv4Free", "ipv6Total", "ipv6Free")}
    return GatewayStatus(
        nodes=nodes, ipv4_total=counts["ipv4Total"], ipv4_free=counts["ipv4Free"],
        ipv6_total=counts["ipv6Total"], ipv6_free=counts["ipv6Free"],
        policies=r.strings(g.get("policies"), f"{p}.policies"),
        conditions=r.conditions(g.get("conditions"), f"{p}.conditions"))


def rr_from_dict(r: _Reader, raw: Any, p: str = "rr_last") -> dict[tuple[str, int], netaddr.IPAddress]:
    out = {}
    for name, by_family in r.table(raw, p).items():
        by_family = r.mapping(by_family, f"{p}[{name}]", ("ipv4", "ipv6"))
        for fam, ip in by_family.items():
            version = int(fam[-1])
            out[(name, version)] = r.ip(ip, f"{p}[{name}].{fam}", version)
    return out


def error_from_dict(r: _Reader, e: Any, p: str) -> ObjectError:
    e = r.mapping(e, p, ("kind", "namespace", "name", "field", "message", "source"))
    v = {k: r.text(e.get(k, ""), f"{p}.{k}") for k in ("kind", "namespace", "name", "field", "message", "source")}
    return ObjectError(ObjectRef(v["kind"], v["namespace"], v["name"]), v["field"], v["message"], v["source"])


def accepted_from_dict(r: _Reader, a: Any, p: str) -> Accepted:
    a = r.mapping(a, p, ("source", "gateway", "eip_v4", "eip_v6", "clusterDefault"))
    cluster_default = r.flag(a, "clusterDefault", p)
    return Accepted(source=r.text(a.get("source", ""), f"{p}.source"),
                    gateway=r.text(a.get("gateway", ""), f"{p}.gateway"),
                    eip_v4=r.optional_ip(a, "eip_v4", p, 4), eip_v6=r.optional_ip(a, "eip_v6", p, 6),
                    cluster_default=cluster_default)


def allocation_from_dict(data: Any) -> Allocation:
    r = _Reader()
    top = r.mapping(data, "", TOP_KEYS)
    return Allocation(
        eips=tuple(eip_from_dict(r, a, f"eips[{i}]") for i, a in enumerate(r.seq(top.get("eips"), "eips"))),
        policies={key: policy_from_dict(r, s, f"policies[{key}]")
                  for key, s in r.table(top.get("policies"), "policies").items()},
        gateways={name: gateway_from_dict(r, g, f"gateways[{name}]")
                  for name, g in r.table(top.get("gateways"), "gateways").items()},
        rr_last=rr_from_dict(r, top.get("rr_last")),
        errors=tuple(error_from_dict(r, e, f"errors[{i}]") for i, e in enumerate(r.seq(top.get("errors"),
                                                                                       "errors"))),
        accepted={ref: accepted_from_dict(r, a, f"accepted[{ref}]")
                  for ref, a in r.table(top.get("accepted"), "accepted").items()})
