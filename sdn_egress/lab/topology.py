"""The lab's topology file and the addresses it implies (documentation
ranges only).  IPv4: underlay 192.0.2.0/24, external LAN 198.51.100.0/24, pod
CIDRs carved from 203.0.113.0/24.  IPv6 beside it: underlay 2001:db8::/64,
external LAN 2001:db8:100::/64, pod CIDRs (a /64 per node) carved from
2001:db8:113::/56.  ``ipFamilies`` (Kubernetes' spelling: ``[IPv4]``,
``[IPv6]``, ``[IPv4, IPv6]``; absent: ``[IPv4]``) says which the lab has; the
first family is the primary one (what ``ip`` and ``pod_cidr`` give)."""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

import yaml

UNDERLAY = "192.0.2.0/24"
ROUTER_UNDERLAY_IP = "192.0.2.1"
EXTERNAL_LAN = "198.51.100.0/24"
ROUTER_EXTERNAL_IP = "198.51.100.1"
CLUSTER_POD_CIDR = "203.0.113.0/24"
EIP_RANGE = "192.0.2.200-192.0.2.250"
UNDERLAY6 = "2001:db8::/64"
ROUTER_UNDERLAY_IP6 = "2001:db8::1"
EXTERNAL_LAN6 = "2001:db8:100::/64"
ROUTER_EXTERNAL_IP6 = "2001:db8:100::1"
CLUSTER_POD_CIDR6 = "2001:db8:113::/56"
EIP_RANGE6 = "2001:db8::200-2001:db8::250"
IPV4, IPV6 = "IPv4", "IPv6"
FAMILY_CHOICES = ([IPV4], [IPV6], [IPV4, IPV6])
MIN_IPV6_MTU = 1280  # RFC 8200: a link narrower carries no IPv6
MAX_NODES = 8  # 8 x /27 in the pod range
MAX_PODS_PER_NODE = 29
MAX_EXTERNALS = 100

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class TopologyError(ValueError):
    pass


def default_topology_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "topologies", "default.yaml")


def version(family: str) -> int:
    return 6 if family == IPV6 else 4


def router_underlay_ip(family: str) -> str:
    return ROUTER_UNDERLAY_IP6 if family == IPV6 else ROUTER_UNDERLAY_IP


def router_external_ip(family: str) -> str:
    return ROUTER_EXTERNAL_IP6 if family == IPV6 else ROUTER_EXTERNAL_IP


def cluster_pod_cidr(family: str) -> str:
    return CLUSTER_POD_CIDR6 if family == IPV6 else CLUSTER_POD_CIDR


class _Addressed:
    """A host with an address per family of the lab (``ip_of``)."""
    families: tuple[str, ...]

    def ip_of(self, family: str) -> str | None:
        raise NotImplementedError

    @property
    def ip(self) -> str:
        """The primary address (first family): for a node, the InternalIP the tunnels use."""
        return self.ip_of(self.families[0])

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(self.ip_of(f) for f in self.families)


@dataclass(frozen=True)
class LabNode(_Addressed):
    name: str
    index: int
    labels: dict = field(default_factory=dict, hash=False)
    families: tuple[str, ...] = (IPV4,)

    def ip_of(self, family: str) -> str | None:
        if family not in self.families:
            return None
        return f"2001:db8::{11 + self.index}" if family == IPV6 else f"192.0.2.{11 + self.index}"

    def pod_cidr_of(self, family: str) -> str | None:
        if family not in self.families:
            return None
        if family == IPV6:
            return str(ipaddress.ip_network(f"2001:db8:113:{self.index:x}::/64"))
        return f"203.0.113.{32 * self.index}/27"

    def pod_address(self, offset: int, family: str) -> str:
        """The pod address ``offset`` (2..30) of this node's pod CIDR of ``family``."""
        if family == IPV6:
            return str(ipaddress.ip_address(f"2001:db8:113:{self.index:x}::{offset:x}"))
        return f"203.0.113.{32 * self.index + offset}"

    @property
    def pod_cidr(self) -> str:
        return self.pod_cidr_of(self.families[0])

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        return tuple(self.pod_cidr_of(f) for f in self.families)


@dataclass(frozen=True)
class LabPod:
    namespace: str
    name: str
    node: str
    index: int  # global, for interface and namespace names
    ip: str  # the primary family's
    labels: dict = field(default_factory=dict, hash=False)
    ips: tuple[str, ...] = ()  # every family's, primary first (empty: ``ip`` alone)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.ips or (self.ip,)

    def ip_of(self, family: str) -> str | None:
        return next((a for a in self.addresses if (":" in a) == (family == IPV6)), None)


@dataclass(frozen=True)
class LabExternal(_Addressed):
    """An external host.  With ``mtu`` it hangs off the router by a link of
    its own with that MTU (both ends), so a path from the cluster to it
    narrows past the gateway, as the Internet's paths do; without, it sits on
    the external LAN."""
    name: str
    index: int
    mtu: int | None = None
    families: tuple[str, ...] = (IPV4,)

    def ip_of(self, family: str) -> str | None:
        if family not in self.families:
            return None
        return f"2001:db8:100::{10 + self.index}" if family == IPV6 else f"198.51.100.{10 + self.index}"


@dataclass(frozen=True)
class Topology:
    nodes: tuple[LabNode, ...]
    pods: tuple[LabPod, ...]
    externals: tuple[LabExternal, ...]
    families: tuple[str, ...] = (IPV4,)

    @property
    def dual_stack(self) -> bool:
        return len(self.families) == 2

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)


def _show(value, limit: int = 60) -> str:
    """``repr`` for an error message, bounded (a 5,000-digit integer has no
    ``repr`` in Python 3.11+)."""
    try:
        text = repr(value)
    except ValueError:
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= limit else text[:limit] + "..."


def _plain(value, limit: int = 60) -> str:
    """``str`` for an error message, bounded as :func:`_show` is."""
    try:
        text = str(value)
    except ValueError:
        return f"a {type(value).__name__} too long to show"
    return text if len(text) <= limit else text[:limit] + "..."


def _labels(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TopologyError(f"{where}.labels: must be a mapping of strings, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TopologyError(f"{where}.labels.{_plain(k)}: label values must be strings "
                                f"(quote them: {_plain(k)}: \"{_plain(v)}\")")
    return dict(value)


# An external link narrower than the lab's 1500-byte links, down to IPv4's
# minimum datagram every host must take (RFC 791).
MIN_EXTERNAL_MTU, MAX_EXTERNAL_MTU = 576, 1500


def _entries(doc: dict, key: str, allowed: set[str], required: set[str]) -> list[dict]:
    items = doc.get(key) or []
    if not isinstance(items, list):
        raise TopologyError(f"{key}: must be a list")
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise TopologyError(f"{where}: must be a mapping")
        unknown = set(item) - allowed
        if unknown:
            raise TopologyError(f"{where}: unknown field {_show(sorted(unknown, key=str)[0])} "
                                f"(allowed: {', '.join(sorted(allowed))})")
        for r in required:
            if not isinstance(item.get(r), str) or not NAME_RE.match(item[r]):
                raise TopologyError(f"{where}.{r}: required, a lower-case DNS label (got {_show(item.get(r))})")
    return items


def parse(doc) -> Topology:
    if not isinstance(doc, dict):
        raise TopologyError("topology: must be a mapping with nodes, pods, externals")
    unknown = set(doc) - {"nodes", "pods", "externals", "ipFamilies"}
    if unknown:
        raise TopologyError(f"topology: unknown field {_show(sorted(unknown, key=str)[0])} "
                            "(allowed: externals, ipFamilies, nodes, pods)")
    fams = _families(doc.get("ipFamilies", [IPV4]))
    raw_nodes = _entries(doc, "nodes", {"name", "labels"}, {"name"})
    if not raw_nodes:
        raise TopologyError("nodes: at least one node is required")
    if len(raw_nodes) > MAX_NODES:
        raise TopologyError(f"nodes: at most {MAX_NODES} nodes (one /27 of 203.0.113.0/24 each)")
    nodes, seen = [], set()
    for i, n in enumerate(raw_nodes):
        if n["name"] in seen:
            raise TopologyError(f"nodes[{i}].name: duplicate node {_show(n['name'])}")
        seen.add(n["name"])
        nodes.append(LabNode(n["name"], i, _labels(n.get("labels"), f"nodes[{i}]"), fams))
    pods, per_node, keys = [], {}, set()
    for i, p in enumerate(_entries(doc, "pods", {"name", "namespace", "node", "labels"},
                                   {"name", "namespace", "node"})):
        if p["node"] not in seen:
            raise TopologyError(f"pods[{i}].node: no node named {_show(p['node'])}")
        key = f"{p['namespace']}/{p['name']}"
        if key in keys:
            raise TopologyError(f"pods[{i}]: duplicate pod {key}")
        keys.add(key)
        k = per_node.get(p["node"], 0)
        if k >= MAX_PODS_PER_NODE:
            raise TopologyError(f"pods[{i}].node: node {p['node']} has {MAX_PODS_PER_NODE} pods already")
        per_node[p["node"]] = k + 1
        node = next(n for n in nodes if n.name == p["node"])
        ips = tuple(node.pod_address(2 + k, f) for f in fams)
        pods.append(LabPod(p["namespace"], p["name"], p["node"], i, ips[0],
                           _labels(p.get("labels"), f"pods[{i}]"), ips))
    externals = []
    raw_ext = _entries(doc, "externals", {"name", "mtu"}, {"name"})
    if len(raw_ext) > MAX_EXTERNALS:
        raise TopologyError(f"externals: at most {MAX_EXTERNALS}")
    names = set(seen)
    for i, x in enumerate(raw_ext):
        if x["name"] in names or x["name"] == "router":
            raise TopologyError(f"externals[{i}].name: {_show(x['name'])} is already a node or external name")
        names.add(x["name"])
        mtu = x.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                                or not MIN_EXTERNAL_MTU <= mtu <= MAX_EXTERNAL_MTU):
            raise TopologyError(f"externals[{i}].mtu: {_show(mtu)} is not an MTU in "
                                f"{MIN_EXTERNAL_MTU}..{MAX_EXTERNAL_MTU}")
        if mtu is not None and IPV6 in fams and mtu < MIN_IPV6_MTU:
            raise TopologyError(f"externals[{i}].mtu: {mtu} is below IPv6's minimum link MTU "
                                f"{MIN_IPV6_MTU} (ipFamilies has IPv6)")
        externals.append(LabExternal(x["name"], i, mtu, fams))
    return Topology(tuple(nodes), tuple(pods), tuple(externals), fams)


def _families(value) -> tuple[str, ...]:
    """``ipFamilies``: one or both of IPv4 and IPv6, each once, spelled as
    Kubernetes spells them (the order names the primary family)."""
    if not isinstance(value, list) or not value:
        raise TopologyError(f"ipFamilies: must be a list of one or two of IPv4, IPv6 "
                            f"(e.g. [IPv4, IPv6]), got {_show(value)}")
    if len(value) > 2:
        raise TopologyError(f"ipFamilies: at most two families (IPv4 and IPv6), got {len(value)}")
    for i, f in enumerate(value):
        if f not in (IPV4, IPV6):
            hint = next((g for g in (IPV4, IPV6) if isinstance(f, str) and f.lower() == g.lower()), None)
            raise TopologyError(f"ipFamilies[{i}]: {_show(f)} is not IPv4 or IPv6"
                                + (f" (spelled {hint})" if hint else ""))
    if len(value) == 2 and value[0] == value[1]:
        raise TopologyError(f"ipFamilies[1]: {value[1]} is listed twice")
    if value == [IPV6, IPV4]:
        raise TopologyError("ipFamilies: the lab's dual stack is IPv4-primary (tunnels over the IPv4 "
                            "underlay): write [IPv4, IPv6]")
    return tuple(value)


def load(path: str) -> Topology:
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise TopologyError(f"{path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise TopologyError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return parse(doc)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from exc
