"""The lab's pods and cluster objects: the cluster manifests at ``up``,
pods coming and going the way a kubelet and the CNI make them (network first,
then the Pod object), labels, and ``apply``/``delete`` into the object store
chosen at ``up`` (:mod:`sdn_egress.lab.objects`).  A mixin of
:class:`sdn_egress.lab.lab.Lab`."""
from __future__ import annotations

import re

from ovs_setup.daemons import terminate as _kill
from sdn_egress.lab import topology as topo_mod
from sdn_egress.lab.objects import ident, node_object, pod_object, read_documents, yaml_files
from sdn_egress.lab.shell import LabError, lab_errors, nsx, sh
from sdn_egress.lab.topology import Topology


class Pods:
    # -- objects -----------------------------------------------------------------------
    def _write_cluster_manifests(self, topo: Topology) -> None:
        self.objects.write_cluster([node_object(n) for n in topo.nodes], {p.namespace for p in topo.pods},
                                   topo.families)
        for pod in topo.pods:
            self._write_pod(pod, pod.labels)

    def _write_pod(self, pod, labels: dict) -> None:
        self.objects.write_pod(pod_object(pod, labels))

    def pods(self) -> list:
        """The lab's live pods: the topology's, then those ``add_pod`` made,
        without those ``delete_pod`` removed."""
        from sdn_egress.lab.topology import LabPod

        st = self.load()
        if "pods" not in st:  # a lab brought up before pods came and went
            return list(self.topology().pods)
        return [LabPod(p["namespace"], p["name"], p["node"], p["index"], p["ip"], dict(p["labels"]),
                       tuple(p.get("ips") or (p["ip"],)))
                for p in st["pods"]]

    def pod(self, name: str):
        pods = self.pods()
        matches = [p for p in pods if p.key == name] or [p for p in pods if p.name == name]
        if not matches:
            raise LabError(f"no pod {name!r} in the lab (pods: {', '.join(p.key for p in pods)})")
        if len(matches) > 1:
            raise LabError(f"pod name {name!r} is ambiguous: use namespace/name "
                           f"({', '.join(p.key for p in matches)})")
        return matches[0]

    def pod_labels(self, name: str) -> dict:
        pod = self.pod(name)
        with lab_errors():
            return self.objects.pod_labels(pod.namespace, pod.name)

    def label(self, name: str, key: str, value: str | None) -> None:
        """Set (or with ``value=None`` remove) one label of a pod."""
        pod = self.pod(name)
        labels = self.pod_labels(name)
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
        self._write_pod(pod, labels)
        st = self.load()
        for rec in st.get("pods", []):
            if f"{rec['namespace']}/{rec['name']}" == pod.key:
                rec["labels"] = dict(labels)
        self._save()

    # -- pods come and go ----------------------------------------------------------------
    def add_pod(self, key: str, node: str, labels: dict | None = None, ip: str | None = None,
                publish: bool = True):
        """Create pod ``NS/NAME`` on ``node`` the way a kubelet and the CNI do:
        first its network (namespace, veth, /32 route; the address is the
        lowest free one of the node's pod CIDR, or ``ip``), then, once that
        is up, the Pod object with its IP (``publish=False`` leaves that to
        :meth:`publish_pod`: the window between the two is where a new pod's
        first packets go).  Returns the pod."""
        from sdn_egress.lab.topology import LabPod

        st = self.load()
        namespace, name = _split_key(key)
        if any(p.key == f"{namespace}/{name}" for p in self.pods()):
            raise LabError(f"pod {namespace}/{name}: exists already (lab pod delete, or lab pod move)")
        topo = self.topology()
        if node not in {n.name for n in topo.nodes}:
            raise LabError(f"pod {namespace}/{name}: --node: no node named {node!r} "
                           f"(nodes: {', '.join(n.name for n in topo.nodes)})")
        labels = _check_labels(f"pod {namespace}/{name}", labels or {})
        n = topo.node(node)
        ip = self._pod_address(f"pod {namespace}/{name}", n, ip)
        ips = self._pod_addresses(n, ip)
        pod = LabPod(namespace, name, node, st.get("next_pod_index", len(st.get("pods", []))), ip, labels, ips)
        st["next_pod_index"] = pod.index + 1
        st.setdefault("pods", [_pod_record(p) for p in topo.pods]).append(_pod_record(pod))
        self._save()
        self._build_pod(pod, self.ns_node(node))
        if publish:
            self.publish_pod(pod.key)
        return pod

    def _pod_address(self, what: str, node, ip: str | None) -> str:
        import netaddr

        # .0 is the network, .1 is kept (a CNI's gateway address), the last
        # of the /27 is broadcast: offsets 2..30 (the same in an IPv6 /64).
        fam = node.families[0]
        usable = [node.pod_address(o, fam) for o in range(2, 2 + topo_mod.MAX_PODS_PER_NODE)]
        used = {p.ip for p in self.pods()}
        if ip is None:
            free = [a for a in usable if a not in used]
            if not free:
                raise LabError(f"{what}: node {node.name} has no free address in {node.pod_cidr}")
            return free[0]
        try:
            addr = str(netaddr.IPAddress(ip, topo_mod.version(fam)))
        except (netaddr.AddrFormatError, ValueError):
            raise LabError(f"{what}: --ip: {ip!r} is not an {fam} address") from None
        if addr not in usable:
            raise LabError(f"{what}: --ip: {addr} is not a pod address of node {node.name} "
                           f"({usable[0]}-{usable[-1]} of {node.pod_cidr})")
        holder = next((p.key for p in self.pods() if p.ip == addr), None)
        if holder:
            raise LabError(f"{what}: --ip: {addr} is pod {holder}'s address")
        return addr

    def _pod_addresses(self, node, ip: str) -> tuple[str, ...]:
        """Every family's address of the pod whose primary address is
        ``ip``: the same offset in each of the node's pod CIDRs."""
        import netaddr

        offset = int(netaddr.IPAddress(ip)) - int(netaddr.IPNetwork(node.pod_cidr).network)
        return tuple(node.pod_address(offset, f) for f in node.families)

    def publish_pod(self, key: str) -> None:
        """The Pod object appears (status.podIP set): what the kubelet
        reports once the CNI is done.  A namespace the lab does not have yet
        is created first."""
        pod = self.pod(key)
        self.objects.ensure_namespace(pod.namespace)
        self._write_pod(pod, pod.labels)

    def delete_pod(self, key: str, object_too: bool = True) -> None:
        """Delete a pod the way a kubelet does: its processes and network go
        (the CNI's DEL: the veth and the /32 route go with the namespace; its
        address is free again), then the Pod object.  ``object_too=False``
        leaves the object (a pod terminating, its object not yet gone) for
        :meth:`delete_pod_object`."""
        pod = self.pod(key)
        st = self.load()
        ns = self.ns_pod(pod.index)
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            _kill(int(pid), timeout=2)
        sh("ip", "netns", "del", ns, check=False)
        if ns in st["namespaces"]:
            st["namespaces"].remove(ns)
        for ip in pod.addresses:
            nsx(self.ns_node(pod.node), "ip", "route", "del", f"{ip}/{128 if ':' in ip else 32}", check=False)
        st["pods"] = [p for p in st.get("pods", []) if f"{p['namespace']}/{p['name']}" != pod.key]
        self._save()
        if object_too:
            self.delete_pod_object(pod.key)

    def delete_pod_object(self, key: str) -> None:
        """The Pod object goes (the pod's network may be gone already)."""
        self.objects.delete_pod(*_split_key(key))

    def move_pod(self, key: str, node: str):
        """Reschedule: delete the pod, then create it on ``node`` with the
        same name and labels and a new address, as a StatefulSet's pod is."""
        pod = self.pod(key)
        if node not in {n.name for n in self.topology().nodes}:
            raise LabError(f"pod {pod.key}: --node: no node named {node!r}")
        if node == pod.node:
            raise LabError(f"pod {pod.key}: is on {node} already")
        labels = self.pod_labels(pod.key)
        self.delete_pod(pod.key)
        return self.add_pod(pod.key, node, labels)

    def apply(self, path: str) -> list[str]:
        """Copy manifests into the lab's user manifest directory (the
        controller and agents pick them up); with an API server, create or
        replace the objects there (returns their API paths)."""
        self.load()
        with lab_errors():
            return self.objects.apply(yaml_files(path))

    def delete(self, path: str) -> int:
        """Remove the objects PATH's documents name (kind, namespace, name)."""
        self.load()
        with lab_errors():
            files = yaml_files(path)
        return self.objects.delete({ident(d) for f in files for d in read_documents(f) if isinstance(d, dict)})

    def cluster_state(self):
        """The cluster state as the controller and agents assemble it (the
        source's own rules), with the incumbency the stored allocation
        recorded, as a restarted controller starts from."""
        from sdn_egress.allocation import FileAllocationStore

        stored = FileAllocationStore(self.status_dir).load()
        return self.objects.cluster_state(stored.accepted if stored is not None else {})


def _pod_record(pod) -> dict:
    return {"namespace": pod.namespace, "name": pod.name, "node": pod.node, "index": pod.index,
            "ip": pod.ip, "ips": list(pod.addresses), "labels": dict(pod.labels)}


def _split_key(key: str) -> tuple[str, str]:
    from sdn_egress.lab.topology import NAME_RE

    namespace, sep, name = key.partition("/")
    if not sep:
        raise LabError(f"pod {key!r}: give it as NAMESPACE/NAME")
    for what, value in (("namespace", namespace), ("name", name)):
        if not NAME_RE.match(value) or len(value) > 63:
            raise LabError(f"pod {key!r}: {what} {value!r} is not a lower-case DNS label")
    return namespace, name


LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _check_labels(what: str, labels: dict) -> dict:
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_KEY_RE.match(k) or len(k.rpartition("/")[2]) > 63:
            raise LabError(f"{what}: labels: {k!r} is not a label key")
        if not isinstance(v, str) or not LABEL_VALUE_RE.match(v) or len(v) > 63:
            raise LabError(f"{what}: labels.{k}: {v!r} is not a label value")
    return dict(labels)


def parse_labels(text: str | None, what: str = "--labels") -> dict:
    """``k=v,k2=v2`` -> a dict; an entry without ``=`` is an error naming it."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        k, sep, v = part.partition("=")
        if not sep:
            raise LabError(f"{what}: {part!r}: use KEY=VALUE")
        out[k.strip()] = v.strip()
    return out

