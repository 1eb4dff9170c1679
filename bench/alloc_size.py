"""Bytes of the allocation in Kubernetes: written per allocation change, received by an agent.

Synthetic clusters at the sizes of issue 15 (S: 100 nodes / 42 policies, M:
1,000 / 404, L: 5,000 / 2,006; 200 namespaces, some cluster policies, some
useNodeIP policies, a gateway per ~100 policies with 3 gateway nodes each),
allocated by the project's own :func:`allocate` and written through the lab's
API server (:mod:`sdn_egress.lab.kubeapi`) by the controller's store.  Before
(the single ConfigMap ``sdn-egress-allocation``): every change wrote the
whole document and every agent received it whole; then every agent
received every EIP record.  Now: the records that changed are written (each
with the value in force before, and a head after them); an agent receives
its node's part: the EIP records it may hold (a gateway node's) and those of
the policies selecting its pods (a worker with pods of 3 policies here), at
its start and as they change.  ``measure()`` is what bench/scale.py may call.

Usage: python bench/alloc_size.py [--no-write]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import netaddr  # noqa: E402

from sdn_egress.allocation import allocate  # noqa: E402
from sdn_egress.model import (  # noqa: E402
    Accepted,
    ClusterState,
    EgressGateway,
    EgressPolicy,
    LabelSelector,
    Namespace,
    Node,
)

SIZES = {"S": (100, 42), "M": (1000, 404), "L": (5000, 2006)}
MiB = 1024 * 1024


def synthetic(policies: int, nodes: int = 100, namespaces: int = 200) -> ClusterState:
    """A cluster of ``nodes`` nodes and ``policies`` policies (about 1 in 10
    useNodeIP, 1 in 50 a cluster policy) over gateways of ~100 policies each."""
    gateways = max(1, policies // 100)
    node_objs = {}
    for i in range(nodes):
        gw = i // 3 if i < 3 * gateways else None
        node_objs[f"node-{i:05d}"] = Node(
            name=f"node-{i:05d}", labels=(("egress-gateway", f"gw-{gw:03d}"),) if gw is not None else (),
            addresses=(netaddr.IPAddress(0xC0000000 | (100 << 16) | i),),  # 192.100.x.y: synthetic only
            pod_cidrs=(netaddr.IPNetwork(f"10.{i // 256}.{i % 256}.0/24"),), ready=True)
    gws = {}
    for g in range(gateways):
        first = netaddr.IPAddress("198.51.100.0").value + (g << 8)
        gws[f"gw-{g:03d}"] = EgressGateway(
            name=f"gw-{g:03d}", node_selector=LabelSelector(match_labels=(("egress-gateway", f"gw-{g:03d}"),)),
            pool_v4=(netaddr.IPRange(first, first + 199),), cluster_default=g == 0)
    pols, accepted = {}, {}
    for k in range(policies):
        cluster = k % 50 == 49
        p = EgressPolicy(namespace="" if cluster else f"team-{k % namespaces:03d}", name=f"egress-app-{k:05d}",
                         gateway=f"gw-{k % gateways:03d}", cluster=cluster, use_node_ip=k % 10 == 9,
                         pod_selector=LabelSelector(match_labels=(("app", f"app-{k:05d}"),)))
        pols[p.key] = p
        accepted[str(p.ref)] = Accepted(source=f"/apis/sdn-egress.io/v1alpha1/{p.key}", gateway=p.gateway)
    for gw in gws.values():
        accepted[str(gw.ref)] = Accepted(source=f"/apis/sdn-egress.io/v1alpha1/egressgateways/{gw.name}",
                                         cluster_default=gw.cluster_default)
    return ClusterState(nodes=node_objs, gateways=gws, policies=pols, accepted=dict(sorted(accepted.items())),
                        namespaces={f"team-{n:03d}": Namespace(name=f"team-{n:03d}") for n in range(namespaces)})


def changes(state: ClusterState) -> dict[str, ClusterState]:
    """Typical allocation changes: a policy added, one deleted, a gateway node lost."""
    one = next(iter(state.policies.values()))
    added = dataclasses.replace(one, name=one.name + "-new")
    gw_node = next(n for n in state.nodes.values() if n.labels)
    return {
        "policy added": dataclasses.replace(state, policies={**state.policies, added.key: added}),
        "policy deleted": dataclasses.replace(state, policies={k: v for k, v in state.policies.items()
                                                               if k != one.key}),
        "gateway node lost": dataclasses.replace(state, nodes={**state.nodes, gw_node.name: dataclasses.replace(
            gw_node, ready=False)}),
    }


def _eip_objects(emu) -> dict[str, dict]:
    from sdn_egress.allocation.store_kube import RECORD_LABEL

    return {cm["metadata"]["name"]: cm for cm in emu.items("ConfigMap")
            if (cm["metadata"].get("labels") or {}).get(RECORD_LABEL) == "eip"}


def _size(obj: dict) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


class _Fixed:
    """An agent's state source as the reader asks it (a snapshot)."""

    def __init__(self, state: ClusterState):
        self.state = state

    def snapshot(self) -> ClusterState:
        return self.state


def agent_start(api, state: ClusterState, node: str, policies: list[str]) -> int:
    """The bytes an agent on ``node`` with a pod of each of ``policies``
    receives at its start (the records its informers list)."""
    from sdn_egress.allocation.reader_kube import KubeAllocationReader
    from sdn_egress.model import Pod

    pods = {}
    for i, key in enumerate(policies):
        p = state.policies[key]
        pod = Pod(namespace=p.namespace or "team-001", name=f"pod-{i}", node=node,
                  labels=p.pod_selector.match_labels, ips=(netaddr.IPAddress(f"10.200.0.{i + 1}"),))
        pods[pod.key] = pod
    reader = KubeAllocationReader(api, "sdn-egress", node=node,
                                  source=_Fixed(dataclasses.replace(state, pods=pods))).start()
    try:
        while not reader.synced:
            time.sleep(0.01)
        reader.load()
        return sum(_size(cm) for inf in (reader.informer, *reader.policy_informers.values()) for cm in inf.items())
    finally:
        reader.stop()


def _events(emu, since: int) -> list[tuple[int, set[str]]]:
    """(bytes, selection labels) of every watch event of an EIP record after ``since``."""
    from sdn_egress.allocation import records

    out = []
    with emu.cond:
        for rv, _, _, obj, before in emu.log:
            labels = set((obj["metadata"].get("labels") or {}))
            if rv <= since or (obj["metadata"].get("labels") or {}).get("sdn-egress.io/allocation-record") != "eip":
                continue
            labels |= set(((before or {}).get("metadata") or {}).get("labels") or {})
            out.append((_size(obj), {k for k in labels if k.startswith((records.NODE_LABEL, records.POLICY_LABEL))}))
    return out


def measure(policies: int, nodes: int) -> dict:
    """Write the allocation of a synthetic cluster, then each change, through
    the lab's API server; the bytes of each, before and now."""
    from kubernetes import client

    from sdn_egress.allocation.store_kube import KubeAllocationStore
    from sdn_egress.lab.kubeapi import KubeApiServer

    state = synthetic(policies, nodes)
    alloc = allocate(state)
    out = {"policies": policies, "nodes": nodes, "eips": len(alloc.eips),
           "document": len(alloc.to_json()), "changes": {}}
    emu = KubeApiServer().start()
    try:
        configuration = client.Configuration()
        configuration.host = emu.url
        with client.ApiClient(configuration) as api:
            store = KubeAllocationStore(api, "sdn-egress")
            store.load()
            store.save(alloc)
            records = [cm for cm in emu.items("ConfigMap") if "record.json" in (cm.get("data") or {})]
            worker = f"node-{nodes - 1:05d}"  # no gateway's
            pool = [k for k in state.policies if not state.policies[k].use_node_ip][:3]
            out.update(records=len(records), largest_record=max(len(cm["data"]["record.json"]) for cm in records),
                       first_write=store.bytes_written, every_eip=sum(map(_size, _eip_objects(emu).values())),
                       worker_start=agent_start(api, state, worker, pool),
                       gateway_start=agent_start(api, state, "node-00000", []))
            for what, changed in changes(state).items():
                since, written = emu.rv, store.bytes_written
                store.save(allocate(changed, alloc))
                events = _events(emu, since)
                told = {k for _, labels in events for k in labels}
                # What an agent selecting one of the labels receives, at most; how many gateway nodes are told.
                most = max((sum(n for n, labels in events if k in labels) for k in told), default=0)
                out["changes"][what] = {"written": store.bytes_written - written, "agent": most,
                                        "holders": len({k for k in told if k.startswith("node.")}),
                                        "document": len(allocate(changed, alloc).to_json())}
                store.save(alloc)  # back to the start for the next change
    finally:
        emu.stop()
    return out


def _kb(n: int) -> str:
    return f"{n / 1000:,.1f} kB" if n < MiB else f"{n / MiB:,.2f} MiB"


def report(results: dict[str, dict]) -> str:
    lines = ["| | " + " | ".join(f"{k} ({r['policies']:,} policies, {r['eips']:,} EIPs)" for k, r in results.items())
             + " |", "| --- |" + " --- |" * len(results)]

    def row(label, get):
        lines.append(f"| {label} | " + " | ".join(get(r) for r in results.values()) + " |")

    row("before: the single ConfigMap (written per change, received by every agent per change)",
        lambda r: _kb(r["document"]))
    row("now: records (ConfigMaps), largest record's data", lambda r: f"{r['records']:,}, {_kb(r['largest_record'])}")
    row("now: first write (all records)", lambda r: _kb(r["first_write"]))
    row("every EIP record, whole objects (what an agent received at its start before its part was selected)",
        lambda r: _kb(r["every_eip"]))
    row("now: an agent's start: a worker with pods of 3 policies / a gateway node",
        lambda r: f"{_kb(r['worker_start'])} / {_kb(r['gateway_start'])}")
    for what in next(iter(results.values()))["changes"]:
        row(f"now: {what}: written / the most an agent receives / gateway nodes told",
            lambda r, w=what: f"{_kb(r['changes'][w]['written'])} / {_kb(r['changes'][w]['agent'])} / "
                              f"{r['changes'][w]['holders']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = ap.parse_args()
    results = {k: measure(p, n) for k, (n, p) in SIZES.items()}
    body = report(results)
    print(body)
    if not args.no_write:
        from common import write_section
        write_section("alloc_size", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
