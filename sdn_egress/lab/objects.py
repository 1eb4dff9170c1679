"""Where the lab keeps its cluster's objects: one interface, two implementations.

- :class:`ManifestObjects`: a manifest directory (``STATE/manifests``:
  ``cluster/`` the lab's own Nodes, Namespaces and Pods, ``user/`` what ``lab
  apply`` copied in); the controller and agents read it (``--manifests``).
- :class:`ApiObjects`: the lab's Kubernetes API server
  (:mod:`sdn_egress.lab.kubeapi`) in the router namespace, on
  192.0.2.1:6443; the controller (in the router namespace) and the agents
  take their state through the Kubernetes source, as in a cluster.

The lab chooses one when it comes up (``lab up --kube``: the API server) and
asks it to write, read and delete objects; :meth:`ObjectStore.cluster_state`
assembles them with the state source's own rules (``sdn_egress.source``,
``sdn_egress.source.kube``), seeded with what the stored allocation accepted,
as a restarted controller would be.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Protocol

import yaml

from ovs_setup.daemons import process_alive
from sdn_egress.fileio import write_atomic
from sdn_egress.reports.leases import NAMESPACE as AGENT_LEASE_NAMESPACE
from sdn_egress.lab import topology as topo_mod

KUBE_API_PORT = 6443  # on the router's underlay address
KUBE_SERVICE_CIDR = "192.0.2.64/27"  # the lab cluster's ServiceCIDR (a free part of the underlay range)
KUBE_SERVICE_CIDR6 = "2001:db8:64::/112"  # its IPv6 range (beside the lab's IPv6 plan)
KUBE_NAMESPACE = "sdn-egress"  # the controller's Lease, the allocation ConfigMap


class ObjectsError(RuntimeError):
    """A manifest or object the store cannot take (the lab shows it as a LabError)."""


class ObjectStore(Protocol):
    kube: bool  # the cluster has an API server
    controller_in_router: bool  # the controller runs in the router namespace (where the API is)

    def state_args(self) -> list[str]:
        """The controller's and the agents' flags that name where the state is."""

    def controller_args(self) -> list[str]:
        """The controller's extra flags."""

    def start(self, spawn: Callable[[str, str, list[str], str], int], netns: str) -> None:
        """Before anything else is written: start what keeps the objects."""

    def write_cluster(self, nodes: list[dict], namespaces: set[str], families=("IPv4",)) -> None:
        """The lab's Nodes and the Namespaces its pods live in (``families``: the
        lab's ipFamilies, for what the cluster serves per family)."""

    def write_pod(self, pod: dict) -> None:
        """Create or replace one Pod object."""

    def pod_labels(self, namespace: str, name: str) -> dict:
        """The Pod object's labels (ObjectsError: no such object)."""

    def ensure_namespace(self, namespace: str) -> None:
        """The Namespace exists (created when it does not)."""

    def delete_pod(self, namespace: str, name: str) -> None:
        """The Pod object goes (nothing when it is gone already)."""

    def apply(self, files: list[str]) -> list[str]:
        """The user's manifests go in; where each went."""

    def delete(self, idents: set[tuple[str, str, str]]) -> int:
        """(kind, namespace, name) objects of the user's go; how many did."""

    def cluster_state(self, accepted: dict):
        """The ``model.ClusterState``, with ``accepted`` the incumbency of the stored allocation."""


def node_object(n) -> dict:
    """A lab node as a kubelet reports it, dual stack included: podCIDRs and
    InternalIPs, the primary family first."""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name, "labels": n.labels},
            "spec": {"podCIDR": n.pod_cidr, "podCIDRs": list(n.pod_cidrs)},
            "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in n.ips],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def namespace_object(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def pod_object(pod, labels: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
            "spec": {"nodeName": pod.node},
            "status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": ip} for ip in pod.addresses]}}


def yaml_files(path: str) -> list[str]:
    """The manifest files at ``path`` (a file, or a directory's, recursively), each checked to parse."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                       if f.endswith((".yaml", ".yml", ".json")))
    elif os.path.exists(path):
        files = [path]
    else:
        raise ObjectsError(f"{path}: no such file or directory")
    for f in files:
        try:
            read_documents(f)
        except yaml.YAMLError as exc:
            raise ObjectsError(f"{f}: not valid YAML: {exc}") from exc
    return files


def read_documents(path: str) -> list:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def ident(doc: dict) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return (str(doc.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name")))


def write_documents(path: str, docs: list[dict]) -> None:
    write_atomic(path, yaml.safe_dump_all(docs, sort_keys=False))


class ManifestObjects:
    kube = False
    controller_in_router = False

    def __init__(self, root: str):
        self.root = root

    def _cluster(self, *parts: str) -> str:
        return os.path.join(self.root, "cluster", *parts)

    def _pod_file(self, namespace: str, name: str) -> str:
        return self._cluster("pods", f"{namespace}--{name}.yaml")

    def state_args(self) -> list[str]:
        return ["--manifests", self.root]

    def controller_args(self) -> list[str]:
        return []

    def start(self, spawn, netns: str) -> None:
        pass

    def write_cluster(self, nodes: list[dict], namespaces: set[str], families=("IPv4",)) -> None:
        write_documents(self._cluster("nodes.yaml"), nodes)
        write_documents(self._cluster("namespaces.yaml"), [namespace_object(ns) for ns in sorted(namespaces)])

    def write_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        write_documents(self._pod_file(meta["namespace"], meta["name"]), [pod])

    def pod_labels(self, namespace: str, name: str) -> dict:
        with open(self._pod_file(namespace, name)) as f:
            return yaml.safe_load(f)["metadata"].get("labels") or {}

    def ensure_namespace(self, namespace: str) -> None:
        path = self._cluster("namespaces.yaml")
        docs = read_documents(path)
        if namespace not in {d["metadata"]["name"] for d in docs}:
            write_documents(path, docs + [namespace_object(namespace)])

    def delete_pod(self, namespace: str, name: str) -> None:
        path = self._pod_file(namespace, name)
        if os.path.exists(path):
            os.unlink(path)

    def apply(self, files: list[str]) -> list[str]:
        out = []
        for f in files:
            dest = os.path.join(self.root, "user", os.path.basename(f))
            write_documents(dest, read_documents(f))
            out.append(dest)
        return out

    def delete(self, idents: set[tuple[str, str, str]]) -> int:
        removed = 0
        user = os.path.join(self.root, "user")
        for f in sorted(os.listdir(user)):
            if f.startswith("."):
                continue
            full = os.path.join(user, f)
            try:
                docs = read_documents(full)
            except yaml.YAMLError:
                continue
            keep = [d for d in docs if not (isinstance(d, dict) and ident(d) in idents)]
            removed += len(docs) - len(keep)
            if not keep:
                os.unlink(full)
            elif len(keep) != len(docs):
                write_documents(full, keep)
        return removed

    def cluster_state(self, accepted: dict):
        from sdn_egress.source import ManifestDirSource

        source = ManifestDirSource(self.root)
        source.remember(accepted)
        return source.snapshot()


class ApiObjects:
    """``kube_dir``: the API server's socket, kubeconfig, objects and log."""

    kube = True
    controller_in_router = True

    def __init__(self, kube_dir: str):
        self.kube_dir = kube_dir

    @property
    def kubeconfig(self) -> str:
        """The kubeconfig the controller and agents use (the API over the underlay)."""
        return os.path.join(self.kube_dir, "kubeconfig")

    def client(self):
        """A client of the lab's API server (over its Unix socket)."""
        from sdn_egress.lab.kubeclient import Client

        return Client(os.path.join(self.kube_dir, "api.sock"))

    def state_args(self) -> list[str]:
        return ["--kubeconfig", self.kubeconfig, "--namespace", KUBE_NAMESPACE]

    def controller_args(self) -> list[str]:
        return ["--identity", "lab-controller"]

    def start(self, spawn, netns: str, timeout: float = 15.0) -> int:
        """Start the lab's API server in ``netns`` (its objects kept in
        ``kube/objects.json``: a restart keeps them, as etcd would)."""
        os.makedirs(self.kube_dir, exist_ok=True)
        ready = os.path.join(self.kube_dir, "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        with open(self.kubeconfig, "w") as f:
            f.write("apiVersion: v1\nkind: Config\ncurrent-context: lab\n"
                    f"clusters: [{{name: lab, cluster: {{server: 'http://{topo_mod.ROUTER_UNDERLAY_IP}:"
                    f"{KUBE_API_PORT}'}}}}]\n"
                    "users: [{name: lab, user: {token: lab}}]\n"
                    "contexts: [{name: lab, context: {cluster: lab, user: lab}}]\n")
        pid = spawn("kubeapi", netns,
                    [sys.executable, "-m", "sdn_egress.lab.kubeapi",
                     "--listen", f"{topo_mod.ROUTER_UNDERLAY_IP}:{KUBE_API_PORT}",
                     "--unix", os.path.join(self.kube_dir, "api.sock"),
                     "--state", os.path.join(self.kube_dir, "objects.json"), "--ready", ready],
                    os.path.join(self.kube_dir, "api.log"))
        deadline = time.monotonic() + timeout
        while not os.path.exists(ready):
            if not process_alive(pid) or time.monotonic() > deadline:
                raise ObjectsError(f"the lab's API server did not start (see {self.kube_dir}/api.log)")
            time.sleep(0.05)
        return pid

    def write_cluster(self, nodes: list[dict], namespaces: set[str], families=("IPv4",)) -> None:
        api = self.client()
        # As a kube-apiserver keeps it for its --service-cluster-ip-range (one range per family).
        service_cidr = {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                        "metadata": {"name": "kubernetes"},
                        "spec": {"cidrs": [KUBE_SERVICE_CIDR6 if f == topo_mod.IPV6 else KUBE_SERVICE_CIDR
                                           for f in families]}}
        names = namespaces | {KUBE_NAMESPACE, AGENT_LEASE_NAMESPACE}
        for obj in nodes + [namespace_object(ns) for ns in sorted(names)] + [service_cidr]:
            api.apply(obj)

    def write_pod(self, pod: dict) -> None:
        self.client().apply(pod)

    def pod_labels(self, namespace: str, name: str) -> dict:
        obj = self.client().get("Pod", name, namespace)
        if obj is None:
            raise ObjectsError(f"pod {namespace}/{name} is not in the lab's API server")
        return obj["metadata"].get("labels") or {}

    def ensure_namespace(self, namespace: str) -> None:
        api = self.client()
        if api.get("Namespace", namespace) is None:
            api.apply(namespace_object(namespace))

    def delete_pod(self, namespace: str, name: str) -> None:
        self.client().delete("Pod", name, namespace)

    def apply(self, files: list[str]) -> list[str]:
        from sdn_egress.lab.kubestore import ApiError

        api, out = self.client(), []
        for f in files:
            for i, d in enumerate(read_documents(f)):
                if not isinstance(d, dict) or not isinstance(d.get("metadata"), dict) or not d["metadata"].get("name"):
                    raise ObjectsError(f"{f}: document {i + 1}: not an object with metadata.name")
                try:
                    api.apply(d)
                except (ApiError, ValueError) as exc:
                    raise ObjectsError(f"{f}: {d.get('kind')} {d['metadata']['name']}: {exc}") from None
                kind, ns, name = ident(d)
                out.append(api.path(kind, name, ns))
        return out

    def delete(self, idents: set[tuple[str, str, str]]) -> int:
        api = self.client()
        return sum(api.delete(kind, name, ns) for kind, ns, name in sorted(idents))

    def cluster_state(self, accepted: dict):
        from sdn_egress.kube.resources import WATCHED
        from sdn_egress.source.kube import assemble, service_cidrs_of
        from sdn_egress.source import Assembler

        api, history = self.client(), Assembler()
        history.remember(accepted)
        objects = []
        for res in WATCHED:
            items = api.items(res.kind)
            for obj in items:  # list items carry neither kind nor apiVersion
                obj.setdefault("kind", res.kind)
                obj.setdefault("apiVersion", res.api_version)
            objects.append((res, items))
        return assemble(history, objects, service_cidrs_of(api.items("ServiceCIDR")))
