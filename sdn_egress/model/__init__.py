"""The typed, immutable model of the cluster state sdn-egress acts on.

Every state source (a manifest directory, the Kubernetes API) produces a
:class:`ClusterState`; nothing downstream (allocation, election, the per-node
view, ``flows/``) knows which source it came from.  Objects are frozen once
built; invalid input never becomes a model object but an :class:`ObjectError`
naming the object and the field.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import netaddr

API_GROUP = "sdn-egress.io"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"

# A pod annotated with this key is in the EgressPolicy of that name in its own
# namespace, whatever the policy's appliedTo says.
POLICY_ANNOTATION = f"{API_GROUP}/egress-policy"
# A Namespace labelled with this key names the EgressGateway of its policies
# that name none.
DEFAULT_GATEWAY_LABEL = f"{API_GROUP}/default-gateway"
# Kubernetes sets this label on every Namespace (its name); selectors may use it.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

ALLOCATOR_DEFAULT = "default"  # the lowest free address of the pool
ALLOCATOR_RR = "rr"  # round robin: the next free address after the last one handed out
ALLOCATORS = (ALLOCATOR_DEFAULT, ALLOCATOR_RR)


@dataclass(frozen=True, order=True)
class ObjectRef:
    """Names one object: ``kind`` plus ``namespace/name`` (namespace empty for
    cluster-scoped kinds)."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class ObjectError:
    """Why one object was refused: the object, the field path, the reason."""

    ref: ObjectRef
    field: str
    message: str
    source: str = ""  # a file path or an API URL, where known

    def __str__(self) -> str:
        where = f" ({self.source})" if self.source else ""
        return f"{self.ref}: {self.field}: {self.message}{where}"

    def to_dict(self) -> dict:
        return {
            "kind": self.ref.kind,
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "field": self.field,
            "message": self.message,
            "source": self.source,
        }


@dataclass(frozen=True)
class Accepted:
    """What decides incumbency for one accepted object, kept with the stored
    allocation so that a restarted controller (or a new leader) decides as
    the last one did: the file or API path the object came from (a duplicate
    elsewhere is the newcomer), a policy's immutable fields as accepted (its
    ``spec.egressGatewayName`` and explicit EIPs), whether a gateway is the
    cluster default."""

    source: str = ""
    gateway: str = ""
    eip_v4: netaddr.IPAddress | None = None
    eip_v6: netaddr.IPAddress | None = None
    cluster_default: bool = False


class InvalidObject(ValueError):
    """Raised by parsers; carries the :class:`ObjectError`."""

    def __init__(self, error: ObjectError):
        super().__init__(str(error))
        self.error = error


def frozen_labels(labels: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((labels or {}).items()))


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry of a label selector."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        raise ValueError(f"unknown operator {self.operator!r}")


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes label selector.  The empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | tuple) -> bool:
        labels = dict(labels)
        if any(labels.get(k) != v for k, v in self.match_labels):
            return False
        return all(r.matches(labels) for r in self.match_expressions)

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator in ("In", "NotIn"):
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts) or "<all>"


@dataclass(frozen=True)
class Node:
    name: str
    labels: tuple[tuple[str, str], ...]
    addresses: tuple[netaddr.IPAddress, ...]  # InternalIP first
    pod_cidrs: tuple[netaddr.IPNetwork, ...]
    ready: bool = True  # the Ready condition; nodes that are not ready never hold an EIP

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Node", "", self.name)

    def address(self, version: int = 4) -> netaddr.IPAddress | None:
        for a in self.addresses:
            if a.version == version:
                return a
        return None


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Namespace", "", self.name)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node: str
    labels: tuple[tuple[str, str], ...]
    ips: tuple[netaddr.IPAddress, ...]
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Pod", self.namespace, self.name)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class EgressGateway:
    """A pool of EIPs and the nodes that may hold them.

    In a dual-stack gateway (both pools non-empty) the pools hold as many
    addresses each, and the n-th IPv4 address pairs with the n-th IPv6
    address (pool order: ascending): a policy gets a pair, never two halves
    of different pairs."""

    name: str
    node_selector: LabelSelector
    pool_v4: tuple[netaddr.IPRange, ...] = ()
    pool_v6: tuple[netaddr.IPRange, ...] = ()
    cluster_default: bool = False  # serves policies that name no gateway (after a namespace default)
    deleting: bool = False  # deletion requested (Kubernetes: deletionTimestamp set, finalizer held)
    # The namespaces whose EgressPolicies it serves; None: every namespace.
    # (EgressClusterPolicies, cluster-scoped and so an administrator's, are always served.)
    namespace_selector: LabelSelector | None = None

    def serves_namespace(self, labels: Mapping[str, str] | tuple) -> bool:
        return self.namespace_selector is None or self.namespace_selector.matches(labels)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("EgressGateway", "", self.name)

    def pool(self, version: int) -> tuple[netaddr.IPRange, ...]:
        return self.pool_v4 if version == 4 else self.pool_v6

    def in_pool(self, ip: netaddr.IPAddress) -> bool:
        return any(ip in r for r in self.pool(ip.version))

    def pool_text(self, version: int) -> str:
        """The pool as messages show it: ``192.0.2.200-192.0.2.210, 192.0.2.250``."""
        parts = [str(r[0]) if r.size == 1 else f"{r[0]}-{r[-1]}" for r in self.pool(version)]
        return ", ".join(parts) or f"no IPv{version} addresses"

    def pool_size(self, version: int) -> int:
        return sum(r.size for r in self.pool(version))

    @property
    def dual_stack(self) -> bool:
        return bool(self.pool_v4) and bool(self.pool_v6)

    def index_of(self, ip: netaddr.IPAddress) -> int | None:
        """The position of ``ip`` in its family's pool (ascending), None when
        it is not in the pool."""
        offset = 0
        for r in self.pool(ip.version):
            if ip in r:
                return offset + int(ip) - r.first
            offset += r.size
        return None

    def address_at(self, version: int, index: int) -> netaddr.IPAddress | None:
        for r in self.pool(version):
            if index < r.size:
                return netaddr.IPAddress(r.first + index, version)
            index -= r.size
        return None

    def pair_of(self, ip: netaddr.IPAddress) -> netaddr.IPAddress | None:
        """The address of the other family that ``ip`` pairs with (dual-stack
        gateways only)."""
        if not self.dual_stack:
            return None
        index = self.index_of(ip)
        return None if index is None else self.address_at(10 - ip.version, index)


@dataclass(frozen=True)
class EgressPolicy:
    """An EgressPolicy (namespaced) or, with ``cluster`` set, an
    EgressClusterPolicy (namespace empty, key = name).

    ``gateway`` is the name the spec gives, empty when it names none (the
    allocation resolves it: namespace default, then the cluster default).
    Pods are selected by ``pod_selector`` or by ``pod_subnets`` (exactly one
    of them is set), and for a namespaced policy also by the pod annotation
    :data:`POLICY_ANNOTATION`."""

    namespace: str
    name: str
    gateway: str
    pod_selector: LabelSelector | None
    eip_v4: netaddr.IPAddress | None = None
    eip_v6: netaddr.IPAddress | None = None
    dest_subnets: tuple[netaddr.IPNetwork, ...] = ()  # empty: everything outside the cluster
    exclude_subnets: tuple[netaddr.IPNetwork, ...] = ()
    priority: int = 0
    pod_subnets: tuple[netaddr.IPNetwork, ...] = ()
    namespace_selector: LabelSelector | None = None  # cluster policies; None: every namespace
    cluster: bool = False
    use_node_ip: bool = False
    allocator: str = ALLOCATOR_DEFAULT

    @property
    def kind(self) -> str:
        return "EgressClusterPolicy" if self.cluster else "EgressPolicy"

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def explicit_eip(self, version: int) -> netaddr.IPAddress | None:
        return self.eip_v4 if version == 4 else self.eip_v6

    def selects(self, pod: "Pod", namespace_labels: Mapping[str, str] | tuple = ()) -> bool:
        """Whether this policy applies to ``pod`` (``namespace_labels``: the
        labels of the pod's namespace, for a cluster policy's namespaceSelector)."""
        if self.cluster:
            if self.namespace_selector is not None and not self.namespace_selector.matches(namespace_labels):
                return False
        elif pod.namespace != self.namespace:
            return False
        elif dict(pod.annotations).get(POLICY_ANNOTATION) == self.name:
            return True
        if self.pod_selector is not None:
            return self.pod_selector.matches(pod.labels)
        return any(ip in net for net in self.pod_subnets for ip in pod.ips)


@dataclass(frozen=True)
class ClusterState:
    """One consistent snapshot of everything a source knows."""

    nodes: Mapping[str, Node] = field(default_factory=dict)
    namespaces: Mapping[str, Namespace] = field(default_factory=dict)
    pods: Mapping[str, Pod] = field(default_factory=dict)  # key ns/name
    gateways: Mapping[str, EgressGateway] = field(default_factory=dict)
    policies: Mapping[str, EgressPolicy] = field(default_factory=dict)  # key ns/name; cluster policies: name
    errors: tuple[ObjectError, ...] = ()
    extra_cluster_cidrs: tuple[netaddr.IPNetwork, ...] = ()  # service CIDR and configured extras
    # str(ObjectRef) -> what decided incumbency, of every accepted gateway and policy
    accepted: Mapping[str, "Accepted"] = field(default_factory=dict)

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        """A namespace's labels, with the name label Kubernetes always sets
        (also for namespaces this state has no object of)."""
        ns = self.namespaces.get(namespace)
        labels = dict(ns.labels) if ns is not None else {}
        labels[NAMESPACE_NAME_LABEL] = namespace
        return labels

    def cluster_cidrs(self, version: int = 4) -> tuple[netaddr.IPNetwork, ...]:
        """Destinations that are never steered: pod CIDRs, node IPs, extras."""
        nets: list[netaddr.IPNetwork] = []
        for node in self.nodes.values():
            nets.extend(c for c in node.pod_cidrs if c.version == version)
            nets.extend(netaddr.IPNetwork(a) for a in node.addresses if a.version == version)
        nets.extend(c for c in self.extra_cluster_cidrs if c.version == version)
        return tuple(netaddr.cidr_merge(nets))
