"""Test objects on the lab's address plan, as manifests and as model objects.

Node ``i`` is at 192.0.2.(11+i) on the underlay, its pods in
203.0.113.(32i)/27; gateway ``edge`` hands out 192.0.2.200-192.0.2.210 to
nodes labelled ``egress=true``.  Plus the tests' manifest-file helpers.
"""
from __future__ import annotations

import copy
import os

import netaddr
import yaml

GROUP_VERSION = "sdn-egress.io/v1alpha1"
EIP_POOL = "192.0.2.200-192.0.2.210"


def node_ip(i: int) -> str:
    return f"192.0.2.{11 + i}"


def pod_cidr(i: int) -> str:
    return f"203.0.113.{32 * i}/27"


# -- manifests ------------------------------------------------------------------------------------------
def node(name: str, i: int, egress: bool = True, ready: str | None = "True", labels: dict | None = None) -> dict:
    """Node ``name``, the ``i``-th of the plan; ``labels`` (default ``egress=true``
    when ``egress``); ``ready=None``: no conditions at all."""
    status: dict = {"addresses": [{"type": "InternalIP", "address": node_ip(i)}]}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready}]
    if labels is None:
        labels = {"egress": "true"} if egress else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"podCIDR": pod_cidr(i)}, "status": status}


def namespace(name: str, **labels) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, node_name: str, ip: str, containers: bool = True, **labels) -> dict:
    spec: dict = {"nodeName": node_name}
    if containers:
        spec["containers"] = [{"name": "c", "image": "x"}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": spec, "status": {"phase": "Running", "podIP": ip}}


def gateway(name: str = "edge", pool: str = EIP_POOL, **spec) -> dict:
    return {"apiVersion": GROUP_VERSION, "kind": "EgressGateway", "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}}, "ippools": {"ipv4": [pool]}, **spec}}


def policy(name: str, ns: str = "shop", gw: str | None = "edge", **spec) -> dict:
    body = {"appliedTo": {"podSelector": {"matchLabels": {"app": name}}}, **spec}
    if gw:
        body["egressGatewayName"] = gw
    return {"apiVersion": GROUP_VERSION, "kind": "EgressPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": body}


def set_path(doc: dict, path: str, value) -> dict:
    """A copy of ``doc`` with the dotted ``path`` set to ``value`` (parents
    made as needed), or removed when ``value`` is ``...``."""
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    target = doc
    for p in parents:
        target = target.setdefault(p, {})
    if value is ...:
        target.pop(last, None)
    else:
        target[last] = value
    return doc


def write(path, name: str, docs) -> str:
    """``docs`` (YAML text, or documents) into ``path/name``; its full path."""
    full = os.path.join(str(path), name)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w") as f:
        if isinstance(docs, str):
            f.write(docs)
        else:
            yaml.safe_dump_all(docs, f, sort_keys=False)
    return full


# -- model objects --------------------------------------------------------------------------------------
def model_node(name: str, i: int, labels: dict | None = None, ready: bool = True):
    """The :class:`sdn_egress.model.Node` the parser makes of :func:`node`."""
    from sdn_egress.model import Node, frozen_labels

    return Node(name=name, labels=frozen_labels(labels), addresses=(netaddr.IPAddress(node_ip(i)),),
                pod_cidrs=(netaddr.IPNetwork(pod_cidr(i)),), ready=ready)


def scattered(n: int, seed: int = 7) -> list[str]:
    """``n`` distinct IPv4 addresses spread over the unicast space (a fixed seed: the same every run)."""
    import random

    rnd = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        out.add(f"{rnd.randrange(1, 223)}.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(256)}")
    return sorted(out)
