"""The API resources sdn-egress reads and writes, and how to call them."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from sdn_egress.model import API_GROUP, API_VERSION


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def custom(self) -> bool:
        return self.group == API_GROUP

    def path(self, namespace: str = "", name: str = "") -> str:
        """The object's (or the collection's) URL path, as errors cite it."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod", namespaced=True)
GATEWAYS = Resource(API_GROUP, API_VERSION, "egressgateways", "EgressGateway", False, True)
POLICIES = Resource(API_GROUP, API_VERSION, "egresspolicies", "EgressPolicy", True, True)
CLUSTER_POLICIES = Resource(API_GROUP, API_VERSION, "egressclusterpolicies", "EgressClusterPolicy", False, True)

# The service CIDRs, where the cluster serves them (Kubernetes 1.33+, GA): the
# kube-apiserver keeps object "kubernetes" with its --service-cluster-ip-range.
SERVICE_CIDRS = Resource("networking.k8s.io", "v1", "servicecidrs", "ServiceCIDR", namespaced=False)
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", namespaced=True)

# What the state source watches, in the order a snapshot reads them.
WATCHED = (NODES, NAMESPACES, PODS, GATEWAYS, POLICIES, CLUSTER_POLICIES)
BY_KIND = {r.kind: r for r in WATCHED}
# The controller: allocation and election read no pod (nodes, namespaces,
# gateways and policies only), so it watches none.
CONTROLLER_WATCHED = tuple(r for r in WATCHED if r != PODS)

# -- trimming: what a cache keeps of an object -----------------------------------------------------
# The fields the parsers (sdn_egress.model.manifests), the status writers and the
# heartbeat (a Node's uid) read; the rest of a core object (a Pod's container
# specs, a Node's images and capacity, managedFields) is dropped on arrival.
_META_KEPT = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "deletionTimestamp")
# Never read, often large (the whole object as kubectl applied it).
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _pick(value, keys: tuple[str, ...]):
    """The given keys of a mapping (anything else: as it is, for the parser to refuse)."""
    if not isinstance(value, dict):
        return value
    return {k: value[k] for k in keys if k in value}


def _shared(value):
    """A string as the one copy every cached object shares (labels, address
    types, condition statuses repeat across thousands of objects)."""
    return sys.intern(value) if type(value) is str else value


def _labels(labels):
    if not isinstance(labels, dict):
        return labels
    return {_shared(k): _shared(v) for k, v in labels.items()}


def _meta(obj: dict, annotations: bool) -> dict:
    meta = obj.get("metadata")
    out = _pick(meta, _META_KEPT)
    if isinstance(out, dict) and "labels" in out:
        out["labels"] = _labels(out["labels"])
    if annotations and isinstance(meta, dict) and "annotations" in meta:
        ann = meta["annotations"]
        out["annotations"] = ({k: v for k, v in ann.items() if k not in DROPPED_ANNOTATIONS}
                              if isinstance(ann, dict) else ann)
    return out


def _top(obj: dict, meta: dict, **parts) -> dict:
    out = {k: obj[k] for k in ("apiVersion", "kind") if k in obj}
    out["metadata"] = meta
    out.update({k: v for k, v in parts.items() if v is not None})
    return out


# In place of a Node's address or condition that the parser skips without
# reading it (a Hostname address, a MemoryPressure condition): one shared
# entry, of a type it skips too, so that the entries it does read keep their
# indices (an error cites status.addresses[i] of the object as it is).
SKIPPED_ENTRY = {"type": "(trimmed)"}
ROUTED_ADDRESSES = ("InternalIP", "ExternalIP")


def _address(a):
    if isinstance(a, dict) and isinstance(a.get("type"), str) and a["type"] not in ROUTED_ADDRESSES:
        return SKIPPED_ENTRY
    a = _pick(a, ("type", "address"))
    if isinstance(a, dict) and "type" in a:
        a["type"] = _shared(a["type"])
    return a


def _condition(c):
    if isinstance(c, dict) and c.get("type") != "Ready":
        return SKIPPED_ENTRY
    return _labels(_pick(c, ("type", "status")))


def trim_node(obj: dict) -> dict:
    """What the parser reads of a Node: its labels, pod CIDRs, routed
    addresses and Ready condition (not its heartbeats, nor its other
    conditions: their changes need no new snapshot)."""
    spec, status = obj.get("spec"), obj.get("status")
    if isinstance(status, dict):
        status = _pick(status, ("addresses", "conditions"))
        for key, entry in (("addresses", _address), ("conditions", _condition)):
            if isinstance(status.get(key), list):
                status[key] = [entry(e) for e in status[key]]
    return _top(obj, _meta(obj, annotations=False), spec=_pick(spec, ("podCIDR", "podCIDRs")), status=status)


def trim_namespace(obj: dict) -> dict:
    return _top(obj, _meta(obj, annotations=False))


def trim_pod(obj: dict) -> dict:
    return _top(obj, _meta(obj, annotations=True), spec=_pick(obj.get("spec"), ("nodeName", "hostNetwork")),
                status=_pick(obj.get("status"), ("phase", "podIP", "podIPs")))


def _shared_tree(value, depth: int = 16):
    """A spec with its strings shared (selectors, gateway names, subnets:
    the same few values in thousands of policies); deeper than our schemas
    go (``depth``), as it is."""
    if type(value) is str:
        return sys.intern(value)
    if depth == 0:
        return value
    if type(value) is dict:
        return {_shared(k): _shared_tree(v, depth - 1) for k, v in value.items()}
    if type(value) is list:
        return [_shared_tree(v, depth - 1) for v in value]
    return value


def trim_custom(obj: dict) -> dict:
    """Our own kinds are parsed strictly and their status is written back:
    kept whole but for managedFields (their labels and spec's strings shared)."""
    meta = obj.get("metadata")
    out = dict(obj)
    if isinstance(meta, dict):
        out["metadata"] = {k: _labels(v) if k == "labels" else v for k, v in meta.items() if k != "managedFields"}
    if "spec" in out:
        out["spec"] = _shared_tree(out["spec"])
    return out


TRIMS = {"Node": trim_node, "Namespace": trim_namespace, "Pod": trim_pod, "EgressGateway": trim_custom,
         "EgressPolicy": trim_custom, "EgressClusterPolicy": trim_custom}


def list_function(api_client, res: Resource, namespace: str | None = None):
    """(function, args) that list (and, with watch=True, watch) ``res``
    across all namespaces, or in ``namespace``: a GET of its collection's
    path (:mod:`sdn_egress.kube.rest`), whatever its group."""
    from sdn_egress.kube.rest import collection

    return collection(api_client, res.path(namespace or "")), ()
