"""The lab's topology file and the addresses it implies (documentation
ranges only): underlay 192.0.2.0/24, external LAN 198.51.100.0/24, pod CIDRs
carved from 203.0.113.0/24."""
from __future__ import annotations

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
MAX_NODES = 8  # 8 x /27 in the pod range
MAX_PODS_PER_NODE = 29
MAX_EXTERNALS = 100

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class TopologyError(ValueError):
    pass


def default_topology_path() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "topologies", "default.yaml")


@dataclass(frozen=True)
class LabNode:
    name: str
    index: int
    labels: dict = field(default_factory=dict, hash=False)

    @property
    def ip(self) -> str:
        return f"192.0.2.{11 + self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"203.0.113.{32 * self.index}/27"


@dataclass(frozen=True)
class LabPod:
    namespace: str
    name: str
    node: str
    index: int  # global, for interface and namespace names
    ip: str
    labels: dict = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class LabExternal:
    """An external host.  With ``mtu`` it hangs off the router by a link of
    its own with that MTU (both ends), so a path from the cluster to it
    narrows past the gateway, as the Internet's paths do; without, it sits on
    the external LAN."""
    name: str
    index: int
    mtu: int | None = None

    @property
    def ip(self) -> str:
        return f"198.51.100.{10 + self.index}"


@dataclass(frozen=True)
class Topology:
    nodes: tuple[LabNode, ...]
    pods: tuple[LabPod, ...]
    externals: tuple[LabExternal, ...]

    def node(self, name: str) -> LabNode:
        return next(n for n in self.nodes if n.name == name)


def _labels(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TopologyError(f"{where}.labels: must be a mapping of strings, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TopologyError(f"{where}.labels.{k}: label values must be strings "
                                f"(quote them: {k}: \"{v}\")")
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
            raise TopologyError(f"{where}: unknown field {sorted(unknown)[0]!r} "
                                f"(allowed: {', '.join(sorted(allowed))})")
        for r in required:
            if not isinstance(item.get(r), str) or not NAME_RE.match(item[r]):
                raise TopologyError(f"{where}.{r}: required, a lower-case DNS label (got {item.get(r)!r})")
    return items


def parse(doc) -> Topology:
    if not isinstance(doc, dict):
        raise TopologyError("topology: must be a mapping with nodes, pods, externals")
    unknown = set(doc) - {"nodes", "pods", "externals"}
    if unknown:
        raise TopologyError(f"topology: unknown field {sorted(unknown)[0]!r} (allowed: nodes, pods, externals)")
    raw_nodes = _entries(doc, "nodes", {"name", "labels"}, {"name"})
    if not raw_nodes:
        raise TopologyError("nodes: at least one node is required")
    if len(raw_nodes) > MAX_NODES:
        raise TopologyError(f"nodes: at most {MAX_NODES} nodes (one /27 of 203.0.113.0/24 each)")
    nodes, seen = [], set()
    for i, n in enumerate(raw_nodes):
        if n["name"] in seen:
            raise TopologyError(f"nodes[{i}].name: duplicate node {n['name']!r}")
        seen.add(n["name"])
        nodes.append(LabNode(n["name"], i, _labels(n.get("labels"), f"nodes[{i}]")))
    pods, per_node, keys = [], {}, set()
    for i, p in enumerate(_entries(doc, "pods", {"name", "namespace", "node", "labels"},
                                   {"name", "namespace", "node"})):
        if p["node"] not in seen:
            raise TopologyError(f"pods[{i}].node: no node named {p['node']!r}")
        key = f"{p['namespace']}/{p['name']}"
        if key in keys:
            raise TopologyError(f"pods[{i}]: duplicate pod {key}")
        keys.add(key)
        k = per_node.get(p["node"], 0)
        if k >= MAX_PODS_PER_NODE:
            raise TopologyError(f"pods[{i}].node: node {p['node']} has {MAX_PODS_PER_NODE} pods already")
        per_node[p["node"]] = k + 1
        node = next(n for n in nodes if n.name == p["node"])
        pods.append(LabPod(p["namespace"], p["name"], p["node"], i, f"203.0.113.{32 * node.index + 2 + k}",
                           _labels(p.get("labels"), f"pods[{i}]")))
    externals = []
    raw_ext = _entries(doc, "externals", {"name", "mtu"}, {"name"})
    if len(raw_ext) > MAX_EXTERNALS:
        raise TopologyError(f"externals: at most {MAX_EXTERNALS}")
    names = set(seen)
    for i, x in enumerate(raw_ext):
        if x["name"] in names or x["name"] == "router":
            raise TopologyError(f"externals[{i}].name: {x['name']!r} is already a node or external name")
        names.add(x["name"])
        mtu = x.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                                or not MIN_EXTERNAL_MTU <= mtu <= MAX_EXTERNAL_MTU):
            raise TopologyError(f"externals[{i}].mtu: {mtu!r} is not an MTU in "
                                f"{MIN_EXTERNAL_MTU}..{MAX_EXTERNAL_MTU}")
        externals.append(LabExternal(x["name"], i, mtu))
    return Topology(tuple(nodes), tuple(pods), tuple(externals))


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
