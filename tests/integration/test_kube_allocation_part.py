"""The allocation records in Kubernetes, as the agents read them through the
lab's API server: each agent receives only its node's part (the EIPs it may
hold, those of the policies selecting its pods), and a save cut short after
any number of its writes is never read (the old allocation stays in force
until the head moves; the next save repairs it)."""
from __future__ import annotations

import dataclasses
import json
import threading
import time

import netaddr
import pytest
from kubernetes.client.rest import ApiException

from bench.alloc_size import changes, synthetic
from sdn_egress.allocation import allocate, reader_kube, records
from sdn_egress.allocation.generations import HEAD, head_generation, record_generation
from sdn_egress.allocation.reader_kube import KubeAllocationReader
from sdn_egress.allocation.store_kube import RECORD_LABEL, KubeAllocationStore
from sdn_egress.model import ClusterState, Pod

from tests.support.kubeemu import api, emu  # noqa: F401 - fixtures
from tests.support.waiting import wait_for

from .test_kube_allocation import MiB, assert_fit

NS = "sdn-egress"


class FixedSource:
    """An agent's state source, as far as the reader asks it: a snapshot."""

    def __init__(self, state: ClusterState):
        self.state = state

    def snapshot(self) -> ClusterState:
        return self.state


def _pods_of(state: ClusterState, node: str, keys) -> dict[str, Pod]:
    """A pod on ``node`` for each policy of ``keys`` (synthetic: policy k selects app=app-k)."""
    pods = {}
    for i, key in enumerate(keys):
        p = state.policies[key]
        ns = p.namespace or "team-001"
        pod = Pod(namespace=ns, name=f"pod-{i}", node=node, labels=p.pod_selector.match_labels,
                  ips=(netaddr.IPAddress(f"10.200.0.{i + 1}"),))
        pods[pod.key] = pod
    return pods


def _eip_records(emu) -> dict[str, dict]:
    return {cm["metadata"]["name"]: cm for cm in emu.items("ConfigMap")
            if (cm["metadata"].get("labels") or {}).get(RECORD_LABEL) == records.EIP}


def _received(reader: KubeAllocationReader) -> dict[str, dict]:
    return {cm["metadata"]["name"]: cm
            for inf in (reader.informer, *reader.policy_informers.values()) for cm in inf.items()}


def test_an_agent_receives_only_its_nodes_part_of_2000_policies(emu, api):
    state = synthetic(2000, nodes=1000)
    alloc = allocate(state)
    assert len(alloc.to_json()) > 1.5 * MiB  # what the single ConfigMap could not hold
    store = KubeAllocationStore(api, NS)
    store.load()
    store.save(alloc)
    assert_fit({cm["metadata"]["name"]: cm for cm in emu.items("ConfigMap")})
    assert KubeAllocationStore(api, NS).load() == alloc  # a new leader reads all of it back
    everything = _eip_records(emu)
    total = sum(len(json.dumps(cm)) for cm in everything.values())
    worker, holder = "node-00500", "node-00000"
    assert not any(worker in a.nodes for a in alloc.eips) and any(holder in a.nodes for a in alloc.eips)
    # A worker with pods of three policies: a namespaced one, a useNodeIP one, a cluster one.
    chosen = ["team-007/egress-app-00007", "team-009/egress-app-00009", "egress-app-00049"]
    assert state.policies["egress-app-00049"].cluster and state.policies["team-009/egress-app-00009"].use_node_ip
    source = FixedSource(dataclasses.replace(state, pods=_pods_of(state, worker, chosen)))
    emu.requests.clear()  # the controller's are done
    reader = KubeAllocationReader(api, NS, node=worker, source=source).start()
    gw_reader = KubeAllocationReader(api, NS, node=holder, source=FixedSource(state)).start()
    try:
        emu.wait_for(lambda: reader.synced and gw_reader.synced)
        part = reader.load()
        want = {a.ip for a in alloc.eips if set(a.policies) & set(chosen)}
        assert {a.ip for a in part.eips} == want and len(want) == 3
        assert {a.ip: a for a in part.eips} == {a.ip: a for a in alloc.eips if a.ip in want}
        assert set(_received(reader)) == {records.eip_name(ip) for ip in want}  # nothing else came
        assert sorted(reader.policy_informers) == sorted(chosen)
        for key in chosen:  # what the view reads of a policy: its EIPs; and its incumbency
            assert (part.policies[key].eip_v4, part.policies[key].eip_v6) == (
                alloc.policies[key].eip_v4, alloc.policies[key].eip_v6)
            assert part.accepted[str(state.policies[key].ref)] == state.accepted[str(state.policies[key].ref)]
        got = sum(len(json.dumps(cm)) for cm in _received(reader).values())
        assert got < total / 100  # two of the three are useNodeIP EIPs, shared by ~30 policies each
        # Every list and watch the reader made asked the server for its part only.
        asked = [r.query.get("labelSelector", "") for r in emu.requests_to("GET", r"/namespaces/sdn-egress/configmaps$")]
        assert asked and all(records.NODE_LABEL in s or records.POLICY_LABEL in s for s in asked if RECORD_LABEL in s)
        # A gateway node receives the EIPs it may hold (and has no pod: no policy's).
        held = {a.ip for a in alloc.eips if holder in a.nodes}
        assert {a.ip for a in gw_reader.load().eips} == held
        assert set(_received(gw_reader)) == {records.eip_name(ip) for ip in held}
        assert len(held) < len(alloc.eips) / 10
        # A pod of another policy: its EIP joins the part; the pod gone, the
        # policy's records stay while it exists; the policy gone, they go.
        more = "team-011/egress-app-00011"
        source.state = dataclasses.replace(state, pods=_pods_of(state, worker, [*chosen, more]))
        assert alloc.policies[more].eip_v4 in {a.ip for a in reader.load().eips}
        source.state = dataclasses.replace(state, pods=_pods_of(state, worker, chosen))
        assert alloc.policies[more].eip_v4 in {a.ip for a in reader.load().eips}
        source.state = dataclasses.replace(source.state, policies={
            k: p for k, p in state.policies.items() if k != more})
        assert alloc.policies[more].eip_v4 not in {a.ip for a in reader.load().eips}
        assert more not in reader.policy_informers
        # A change reaches the agents that need it: a failover moves the worker's EIPs.
        lost = next(n for n in alloc.eip(alloc.policies[chosen[0]].eip_v4).nodes)
        failed = allocate(dataclasses.replace(state, nodes={
            **state.nodes, lost: dataclasses.replace(state.nodes[lost], ready=False)}), alloc)
        store.save(failed)
        ip = alloc.policies[chosen[0]].eip_v4
        wait_for(lambda: reader.load().eip(ip).nodes == failed.eip(ip).nodes, "the failover")
    finally:
        reader.stop()
        gw_reader.stop()


def test_a_record_that_leaves_a_watchs_selection_is_deleted_from_it(emu, api):
    """As the real server's watch cache: a MODIFIED object that no longer
    matches the selector is DELETED for that watch, one that comes to match ADDED."""
    from sdn_egress.kube.informer import Informer
    from sdn_egress.kube.resources import CONFIGMAPS

    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": NS, "labels": {"a": "1"}},
          "data": {}}
    emu.apply(cm)
    inf = Informer(api, CONFIGMAPS, namespace=NS, label_selector="a=1").start()
    try:
        emu.wait_for(lambda: inf.synced.is_set() and inf.get("x", NS) is not None)
        emu.apply({**cm, "metadata": {**cm["metadata"], "labels": {"a": "2"}}})
        emu.wait_for(lambda: inf.get("x", NS) is None)
        emu.apply(cm)
        emu.wait_for(lambda: inf.get("x", NS) is not None)
    finally:
        inf.stop()


def _eips(alloc):
    return tuple((str(a.ip), a.nodes, a.policies, a.tunnel_key, a.node_ip) for a in alloc.eips)


@pytest.mark.parametrize("what", ["gateway node lost", "policy deleted"])
def test_a_save_cut_short_after_any_write_is_never_read_and_the_next_pass_repairs_it(emu, api, what):
    state = synthetic(42, nodes=100)
    old = allocate(state)
    changed = changes(state)[what]
    store = KubeAllocationStore(api, NS)
    store.load()
    store.save(old)
    new = allocate(changed, old)
    assert _eips(new) != _eips(old)
    reader = KubeAllocationReader(api, NS).start()
    seen: set = set()
    done = threading.Event()

    def sample():  # an agent reading all along: never anything but the old or the new allocation
        while not done.is_set():
            try:
                got = reader.load()
            except ValueError:
                continue
            if got is not None:
                seen.add(_eips(got))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        emu.wait_for(lambda: reader.synced and reader.load() is not None)
        sampler.start()
        writes = len([n for n, r in records.split(new).items()
                      if (emu.get("ConfigMap", n, NS) or {}).get("data", {}).get("record.json")
                      != json.dumps(r.data, sort_keys=True, separators=(",", ":"))])
        writes += len(set(records.split(old)) - set(records.split(new)))  # the tombstones
        assert writes >= 2
        for k in sorted({0, 1, writes // 2, writes - 1, writes}):  # k == writes: all but the head
            head = head_generation(emu.get("ConfigMap", HEAD, NS))
            emu.fail("PUT", r"/configmaps/sdn-egress-", 500, times=10 ** 6, after=k)
            emu.fail("POST", r"/configmaps$", 500, times=10 ** 6, after=0)
            cut = KubeAllocationStore(api, NS)
            cut.load()
            with pytest.raises(ApiException):
                cut.save(new)
            emu.faults.clear()
            half = [cm for cm in emu.items("ConfigMap") if record_generation(cm) > head]
            assert len(half) == min(k, writes)  # the save got that far
            assert head_generation(emu.get("ConfigMap", HEAD, NS)) == head
            emu.wait_for(lambda: sum(record_generation(cm) > head for cm in reader.informer.items())
                         == sum(RECORD_LABEL in cm["metadata"]["labels"] and cm["metadata"]["labels"][RECORD_LABEL]
                                == records.EIP for cm in half))
            assert _eips(reader.load()) == _eips(old)
            # A new controller starts from the old allocation, whole; its pass writes the new one.
            again = KubeAllocationStore(api, NS)
            start = again.load()
            assert start == old and start.accepted == old.accepted
            again.save(allocate(changed, start))
            assert KubeAllocationStore(api, NS).load() == new
            emu.wait_for(lambda: _eips(reader.load()) == _eips(new))
            assert not [cm for cm in emu.items("ConfigMap") if RECORD_LABEL in (cm["metadata"].get("labels") or {})
                        and "record.json" not in cm["data"]]  # the tombstones went
            again.save(old)  # back, for the next cut
            emu.wait_for(lambda: _eips(reader.load()) == _eips(old))
    finally:
        done.set()
        if sampler.is_alive():
            sampler.join(5)
        reader.stop()
    assert seen == {_eips(old), _eips(new)}


def test_an_agent_on_its_own_source_follows_its_pods_policies(emu, api, monkeypatch):
    """With the agent's own KubeSource (its node's pods only), as the agent runs it."""
    from sdn_egress.controller import Controller
    from sdn_egress.source.kube import KubeSource
    from tests.support.objects import gateway, namespace, node, pod, policy

    for obj in (namespace("shop"), node("alpha", 0), node("beta", 1), node("gamma", 2, egress=False), gateway(),
                policy("cart"), policy("shop"), policy("web"), pod("shop", "cart-1", "gamma", "203.0.113.65", app="cart")):
        emu.apply(obj)
    controller_source = KubeSource(api).start()
    source = KubeSource(api, node="gamma").start()
    reader = KubeAllocationReader(api, NS, node="gamma", source=source).start()
    try:
        assert controller_source.wait_synced(timeout=20) and source.wait_synced(timeout=20)
        alloc = Controller(controller_source, KubeAllocationStore(api, NS)).reconcile()
        assert len(alloc.eips) == 3
        cart = alloc.policies["shop/cart"].eip_v4
        # (not emu.wait_for: a load may wait for a list, which needs the server's lock)
        wait_for(lambda: reader.synced and [a.ip for a in (reader.load() or _none()).eips] == [cart], "cart's EIP")
        emu.apply(pod("shop", "web-1", "gamma", "203.0.113.66", app="web"))
        web = alloc.policies["shop/web"].eip_v4
        wait_for(lambda: {a.ip for a in reader.load().eips} == {cart, web}, "web's EIP too")
        assert set(reader.policy_informers) == {"shop/cart", "shop/web"}
        # The pods gone, the informers of their policies stay, the latest STICKY of them.
        monkeypatch.setattr(reader_kube, "STICKY", 1)
        emu.delete("Pod", "cart-1", "shop")
        emu.delete("Pod", "web-1", "shop")
        wait_for(lambda: reader.load() is not None and len(reader.policy_informers) == 1, "one policy's informer")
    finally:
        for part in (reader, source, controller_source):
            part.stop()


def _none():
    from sdn_egress.allocation import Allocation

    return Allocation()
