"""A synthetic but realistic cluster for bench/scale.py: the raw objects an
API server would hand out (with the fields real objects carry: managed
fields, container specs, node images, conditions), generated deterministically
so that any process can produce exactly the part it would be sent (one node's
pods) without generating the rest.

Shape (issue 15): 200 namespaces; pods spread evenly over the nodes and
namespaces, each with an ``app`` label of 12 values per namespace; every
namespaced policy selects 10 of them (its namespace's apps a0-a9, about 0.4 %
of the cluster's pods), with varying priorities, some ``destSubnet`` and
``excludeSubnet``; about 1 % are cluster policies (namespaces by a ``tier``
label, pods app=a10).  One EgressGateway per 500 nodes (at least one), three
gateway nodes each (one active, two standbys), 8-25 EIPs per gateway (policies
beyond the pools get no EIP, as in a real cluster that ran out).

Addresses: 88,650 pods do not fit the documentation ranges; pod CIDRs come
from 100.64.0.0/10 and node addresses from 198.18.0.0/15 (the benchmarking
range).  These exist **in memory only**, never on an interface.  EIPs and
policy destinations stay in the documentation ranges.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable

GROUP_VERSION = "sdn-egress.io/v1alpha1"
NAMESPACES = 200
APPS = 12  # per namespace; a0-a9 are selected by the namespace's policies, a10 by cluster policies
POD_NET = ipaddress.ip_network("100.64.0.0/10")  # in memory only
NODE_NET = ipaddress.ip_network("198.18.0.0/15")  # in memory only
EIP_BLOCKS = ("203.0.113.0/24", "198.51.100.0/24")


@dataclass(frozen=True)
class Size:
    name: str
    nodes: int
    pods: int
    policies: int

    @property
    def gateways(self) -> int:
        return max(1, self.nodes // 500)

    @property
    def pool(self) -> int:
        return 8 if self.nodes < 500 else 25

    @property
    def cluster_policies(self) -> int:
        return max(1, self.policies // 100)


SIZES = {s.name: s for s in (Size("S", 100, 1773, 42), Size("M", 1000, 17730, 404),
                             Size("L", 5000, 88650, 2006))}


def _managed(manager: str, fields: dict) -> list[dict]:
    return [{"manager": manager, "operation": "Update", "apiVersion": "v1",
             "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields}]


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def node_ip(i: int) -> str:
    return str(NODE_NET.network_address + 10 + i)


def pod_cidr(i: int) -> str:
    return f"{POD_NET.network_address + 64 * i}/26"


def gateway_of_node(size: Size, i: int) -> int | None:
    """Nodes 0..3g-1 are gateway nodes, three per gateway."""
    return i // 3 if i < 3 * size.gateways else None


def node(size: Size, i: int, rv: int = 1) -> dict:
    name = node_name(i)
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
              "node.kubernetes.io/instance-type": "m6i.2xlarge", "topology.kubernetes.io/zone": f"zone-{i % 3}"}
    gw = gateway_of_node(size, i)
    if gw is not None:
        labels["egress-gw"] = f"g{gw}"
    conditions = [{"type": t, "status": "False" if t != "Ready" else "True", "reason": f"Kubelet{t}",
                   "message": f"kubelet reports {t}", "lastHeartbeatTime": "2026-11-30T10:00:00Z",
                   "lastTransitionTime": "2026-11-01T10:00:00Z"}
                  for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]
    images = [{"names": [f"registry.example/team-{k}/image-{k}@sha256:{k:064x}", f"registry.example/image-{k}:v1"],
               "sizeBytes": 100_000_000 + k} for k in range(25)]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": f"00000000-0000-0000-0000-{i:012d}", "resourceVersion": str(rv),
                     "labels": labels, "creationTimestamp": "2026-11-01T10:00:00Z",
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
                     "managedFields": _managed("kubelet", {"f:status": {"f:conditions": {}, "f:images": {}}})},
        "spec": {"podCIDR": pod_cidr(i), "podCIDRs": [pod_cidr(i)], "providerID": f"aws:///zone/i-{i:017x}"},
        "status": {"addresses": [{"type": "InternalIP", "address": node_ip(i)},
                                 {"type": "Hostname", "address": name}],
                   "conditions": conditions, "images": images,
                   "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
                   "allocatable": {"cpu": "7800m", "memory": "31Gi", "pods": "110"},
                   "nodeInfo": {"kubeletVersion": "v1.33.1", "containerRuntimeVersion": "containerd://2.0",
                                "kernelVersion": "6.8.0", "osImage": "Ubuntu 24.04", "machineID": f"{i:032x}"}},
    }


def namespace(n: int) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": f"ns{n:03d}", "uid": f"ns-{n}", "resourceVersion": "1",
                         "labels": {"kubernetes.io/metadata.name": f"ns{n:03d}", "tier": f"t{n % 4}"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def pod_place(size: Size, j: int) -> tuple[str, int, int]:
    """(namespace, node index, app index) of pod number j."""
    return f"ns{(j + j // size.nodes) % NAMESPACES:03d}", j % size.nodes, (j // NAMESPACES * 5) % APPS


def pod(size: Size, j: int, app: int | None = None, rv: int = 1) -> dict:
    ns, i, a = pod_place(size, j)
    a = a if app is None else app
    slot = j // size.nodes  # the pod's index on its node
    ip = str(POD_NET.network_address + 64 * i + 2 + slot)
    name = f"app-{a}-{j:06d}"
    container = {"name": "main", "image": f"registry.example/{ns}/app-{a}:v3",
                 "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                 "env": [{"name": f"VAR_{k}", "value": f"value-{k}"} for k in range(6)],
                 "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                 "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io"}]}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": f"pod-{j}", "resourceVersion": str(rv),
                     "labels": {"app": f"a{a}", "pod-template-hash": f"{j % 997:x}"},
                     "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T09:00:00Z"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"app-{a}-rs",
                                          "uid": f"rs-{a}", "controller": True}],
                     "managedFields": _managed("kube-controller-manager", {"f:metadata": {"f:labels": {}}})},
        "spec": {"nodeName": node_name(i), "containers": [container], "serviceAccountName": "default",
                 "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {
                     "path": "token", "expirationSeconds": 3607}}]}}],
                 "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                  "effect": "NoExecute", "tolerationSeconds": 300}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": node_ip(i),
                   "conditions": [{"type": t, "status": "True", "lastTransitionTime": "2026-11-30T09:00:00Z"}
                                  for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")],
                   "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0,
                                          "image": container["image"], "imageID": f"sha256:{j:064x}",
                                          "containerID": f"containerd://{j:064x}",
                                          "state": {"running": {"startedAt": "2026-11-30T09:00:00Z"}}}]},
    }


def pods_on(size: Size, i: int):
    """The pods of node i (what a field selector spec.nodeName gives)."""
    return (pod(size, j) for j in range(i, size.pods, size.nodes))


def all_pods(size: Size):
    return (pod(size, j) for j in range(size.pods))


def _eip_addresses():
    for block in EIP_BLOCKS:
        net = ipaddress.ip_network(block)
        yield from (str(a) for a in net)


def gateway(size: Size, g: int) -> dict:
    addrs = list(_eip_addresses())[g * size.pool:(g + 1) * size.pool]
    return {"apiVersion": GROUP_VERSION, "kind": "EgressGateway",
            "metadata": {"name": f"g{g}", "uid": f"gw-{g}", "resourceVersion": "1", "generation": 1},
            "spec": {"nodeSelector": {"matchLabels": {"egress-gw": f"g{g}"}},
                     "ippools": {"ipv4": [f"{addrs[0]}-{addrs[-1]}"]}, "clusterDefault": g == 0}}


def policy(size: Size, k: int) -> dict:
    """Policy k: namespaced (selects a0-a9 of its namespace) or, for the last
    1 %, a cluster policy (namespaces tier=t<k%4>, pods app=a10)."""
    spec: dict = {"egressGatewayName": f"g{k % size.gateways}", "priority": (k % 5) * 10}
    if k % 3 == 0:
        spec["destSubnet"] = [f"198.51.100.{(k % 8) * 32}/27", "192.0.2.0/24"]
    if k % 7 == 0:
        spec["excludeSubnet"] = ["203.0.113.0/28"]
    cluster = k >= size.policies - size.cluster_policies
    meta = {"name": f"egress-{k:05d}", "uid": f"pol-{k}", "resourceVersion": "1", "generation": 1}
    if cluster:
        spec["appliedTo"] = {"namespaceSelector": {"matchLabels": {"tier": f"t{k % 4}"}},
                             "podSelector": {"matchLabels": {"app": "a10"}}}
        return {"apiVersion": GROUP_VERSION, "kind": "EgressClusterPolicy", "metadata": meta, "spec": spec}
    meta["namespace"] = f"ns{k % NAMESPACES:03d}"
    spec["appliedTo"] = {"podSelector": {"matchExpressions": [
        {"key": "app", "operator": "In", "values": [f"a{a}" for a in range(10)]}]}}
    return {"apiVersion": GROUP_VERSION, "kind": "EgressPolicy", "metadata": meta, "spec": spec}


KINDS = ("Node", "Namespace", "Pod", "EgressGateway", "EgressPolicy", "EgressClusterPolicy")


def listed(size: Size, kind: str, node_index: int | None = None) -> tuple[int, Callable[[int], dict]]:
    """What a list of ``kind`` holds (pods: those of node ``node_index`` when
    given, as a field selector spec.nodeName gives them): how many, and the
    k-th of them, made when asked (a server's page needs only its own)."""
    if kind == "Pod" and node_index is not None:
        return len(range(node_index, size.pods, size.nodes)), lambda k: pod(size, node_index + k * size.nodes)
    namespaced = size.policies - size.cluster_policies
    return {
        "Node": (size.nodes, lambda k: node(size, k)),
        "Namespace": (NAMESPACES, namespace),
        "Pod": (size.pods, lambda k: pod(size, k)),
        "EgressGateway": (size.gateways, lambda k: gateway(size, k)),
        "EgressPolicy": (namespaced, lambda k: policy(size, k)),
        "EgressClusterPolicy": (size.cluster_policies, lambda k: policy(size, namespaced + k)),
    }[kind]


def cluster(size: Size, pods: bool = True) -> dict[str, list[dict]]:
    """Every object by kind (pods: all of them, or none)."""
    out = {}
    for kind in KINDS:
        n, make = listed(size, kind) if pods or kind != "Pod" else (0, None)
        out[kind] = [make(k) for k in range(n)]
    return out


def event_pod(size: Size, namespace_index: int) -> int:
    """A pod of app a11 (selected by nothing) in the given namespace, on a
    worker node (not a gateway node): the one the benchmark relabels."""
    for j in range(size.pods):
        ns, i, app = pod_place(size, j)
        if ns == f"ns{namespace_index:03d}" and app == APPS - 1 and gateway_of_node(size, i) is None:
            return j
    raise ValueError("no pod of app a11 on a worker in that namespace")
