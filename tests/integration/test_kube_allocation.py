"""The allocation in Kubernetes (sdn_egress.allocation.store_kube): one small
ConfigMap per EIP and per object, through the lab's API server; the agents'
part; a new leader starts from it; the move from the single ConfigMap."""
from __future__ import annotations

import dataclasses
import json

from bench.alloc_size import synthetic
from sdn_egress.allocation import Allocation, allocate
from sdn_egress.allocation.reader_kube import KubeAllocationReader
from sdn_egress.allocation.store_kube import RECORD_LABEL, KubeAllocationStore
from sdn_egress.controller import Controller
from sdn_egress.source.kube import KubeSource

from tests.support.kubeemu import api, emu  # noqa: F401 - fixtures
from tests.support.objects import gateway, node, policy

NS = "sdn-egress"
MiB = 1024 * 1024
ETCD_VALUE = 1.5 * MiB


def _records(emu) -> dict[str, dict]:
    return {cm["metadata"]["name"]: cm for cm in emu.items("ConfigMap")
            if (cm["metadata"].get("labels") or {}).get(RECORD_LABEL)}


def assert_fit(objs: dict[str, dict]) -> None:
    """Every record's data far below a ConfigMap's 1 MiB, the object within etcd's value."""
    for name, cm in objs.items():
        assert sum(len(k) + len(v.encode()) for k, v in cm["data"].items()) < MiB / 64, name
        assert len(json.dumps(cm).encode()) < ETCD_VALUE, name


def _versions(objs) -> dict[str, str]:
    return {name: cm["metadata"]["resourceVersion"] for name, cm in objs.items()}


def test_the_records_fit_a_new_leader_reads_them_and_a_change_writes_what_changed(emu, api):
    """(2,000 policies: test_kube_allocation_part.py, which checks that they fit too.)"""
    state = synthetic(200, nodes=100)
    alloc = allocate(state)
    store = KubeAllocationStore(api, NS)
    assert store.load() is None
    assert store.save(alloc)
    objs = _records(emu)
    assert len(objs) == len(alloc.eips) + len(alloc.policies) + len(alloc.gateways)
    assert_fit(objs)
    # A new leader starts from the records: the same allocation, incumbency included.
    again = KubeAllocationStore(api, NS).load()
    assert again == alloc and again.accepted == state.accepted
    assert allocate(state, again) == alloc
    # An agent watches the EIP records only, and reads from them what its view needs.
    reader = KubeAllocationReader(api, NS).start()
    try:
        emu.wait_for(lambda: reader.synced and len(reader.informer.items()) == len(alloc.eips))
        got = reader.informer.items()
        assert {cm["metadata"]["labels"][RECORD_LABEL] for cm in got} == {"eip"}
        received = sum(len(json.dumps(cm).encode()) for cm in got)
        assert received < len(alloc.to_json()) and received < sum(len(json.dumps(cm)) for cm in objs.values())
        part = reader.load()
        assert part.eips == alloc.eips
        assert {k: (s.eip_v4, s.eip_v6) for k, s in part.policies.items()} == {
            k: (s.eip_v4, s.eip_v6) for k, s in alloc.policies.items() if s.eip_v4 or s.eip_v6}
        assert reader.changed() and not reader.changed()
        # A change writes what changed: one policy gone, its EIP record and its own
        # go, its gateway's record changes; no other record is written, the agent
        # is told of the one EIP record.
        gone = next(k for k, s in alloc.policies.items() if s.eip_v4 and not alloc.eip(s.eip_v4).node_ip)
        before = _versions(objs)
        ref = str(state.policies[gone].ref)
        smaller = allocate(dataclasses.replace(
            state, policies={k: p for k, p in state.policies.items() if k != gone},
            accepted={r: a for r, a in state.accepted.items() if r != ref}), alloc)
        written = store.bytes_written
        assert store.save(smaller)
        after = _versions(_records(emu))
        assert len(before) - len(after) == 2
        gw_record = f"sdn-egress-egressgateway-{state.policies[gone].gateway}"
        assert [n for n in after if after[n] != before[n]] == [gw_record]
        assert store.bytes_written - written < 16 * 1024
        emu.wait_for(lambda: len(reader.informer.items()) == len(alloc.eips) - 1)
        assert reader.changed()
        # In force once the head of that save is seen too (its watch may trail the records').
        emu.wait_for(lambda: reader.load().eip(alloc.policies[gone].eip_v4) is None)
    finally:
        reader.stop()



def test_a_cluster_on_the_single_configmap_moves_to_the_records_and_no_eip_changes(emu, api):
    for obj in (node("alpha", 0), node("beta", 1), gateway(), policy("cart"), policy("shop")):
        emu.apply(obj)
    source = KubeSource(api).start()
    try:
        assert source.wait_synced(timeout=20)
        # What an earlier version wrote: cart on .205, shop on .203 (a fresh
        # allocation would give .200 and .201), the standby order reversed, and a planned move.
        fresh = allocate(source.snapshot())
        doc = fresh.to_dict()
        for a, ip in zip(doc["eips"], ("192.0.2.205", "192.0.2.203"), strict=True):
            a["ip"], a["nodes"] = ip, a["nodes"][::-1]
            doc["policies"][a["policies"][0]]["eip_v4"] = ip
        old = Allocation.from_dict(doc)
        emu.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "sdn-egress-allocation",
                                                                         "namespace": NS},
                   "data": {"allocation.json": old.to_json(), "errors.json": "[]\n",
                            "moves.json": json.dumps({"192.0.2.250": "beta"})}})
        reader = KubeAllocationReader(api, NS).start()
        try:
            emu.wait_for(lambda: reader.synced and reader.load() is not None)
            assert reader.load().eips == old.eips  # the agents read the old document until it moved
            want = {(str(a.ip), a.policies, a.nodes, a.tunnel_key) for a in old.eips}
            alloc = Controller(source, KubeAllocationStore(api, NS)).reconcile()
            assert {(str(a.ip), a.policies, a.nodes, a.tunnel_key) for a in alloc.eips} == want
            cm = emu.get("ConfigMap", "sdn-egress-allocation", NS)
            assert cm["data"] == {"moves.json": json.dumps({"192.0.2.250": "beta"})}  # the moves stay
            assert {n for n, o in _records(emu).items() if o["metadata"]["labels"][RECORD_LABEL] == "eip"} == {
                "sdn-egress-eip-v4-192-0-2-203", "sdn-egress-eip-v4-192-0-2-205"}
            emu.wait_for(lambda: not reader.changed() and {
                (str(a.ip), a.policies, a.nodes, a.tunnel_key) for a in (reader.load() or Allocation()).eips} == want)
            # A new leader (or a restart) starts from the records: still nothing changes.
            again = Controller(source, KubeAllocationStore(api, NS)).reconcile()
            assert again.eips == alloc.eips and again.policies == alloc.policies
        finally:
            reader.stop()
    finally:
        source.stop()


def test_planned_moves_live_beside_the_records(emu, api):
    store = KubeAllocationStore(api, NS)
    assert store.load() is None
    store.save(Allocation())  # a controller ran: the moves' ConfigMap is there
    store.request_move("192.0.2.200", "beta")
    store.request_move("192.0.2.201", "alpha")
    assert store.read_moves() == {"192.0.2.200": "beta", "192.0.2.201": "alpha"}
    store.finish_moves({"192.0.2.200"})
    assert KubeAllocationStore(api, NS).read_moves() == {"192.0.2.201": "alpha"}
    assert not _records(emu)  # an empty allocation has no record


def test_an_unreadable_record_is_set_aside_and_allocation_starts_afresh(emu, api, caplog):
    for obj in (node("alpha", 0), node("beta", 1), gateway(), policy("cart")):
        emu.apply(obj)
    source = KubeSource(api).start()
    try:
        assert source.wait_synced(timeout=20)
        first = Controller(source, KubeAllocationStore(api, NS)).reconcile()
        cm = emu.get("ConfigMap", "sdn-egress-egresspolicy-shop.cart", NS)
        cm["data"]["record.json"] = '{"policy": {"eip_v4": "not an address"}}'
        emu.apply(cm)
        again = Controller(source, KubeAllocationStore(api, NS)).reconcile()
        assert "sdn-egress-egresspolicy-shop.cart" in caplog.text and "allocating afresh" in caplog.text
        assert again.eips == first.eips  # afresh, the same inputs give the same EIPs
        bad = emu.get("ConfigMap", "sdn-egress-egresspolicy-shop.cart.bad", NS)
        assert bad["metadata"]["labels"][RECORD_LABEL] == "set-aside" and "not an address" in bad["data"]["record.json"]
        assert KubeAllocationStore(api, NS).load() == again
    finally:
        source.stop()
