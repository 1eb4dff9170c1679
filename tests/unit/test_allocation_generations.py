"""Which value of a record is in force (sdn_egress.allocation.generations),
and the labels the agents select records by (records.selection_labels)."""
from __future__ import annotations

import json

from sdn_egress.allocation import records
from sdn_egress.allocation.generations import (
    HEAD,
    head_data,
    in_force,
    next_generation,
    reading_at,
    record_data,
)


def cm(name: str, data: dict) -> dict:
    return {"metadata": {"name": name}, "data": data}


def test_a_record_is_read_at_the_heads_generation():
    old, new = '{"v":1}', '{"v":2}'
    rewritten = cm("a", record_data(new, 5, old))
    created = cm("b", record_data(new, 5, None))
    tombstone = cm("c", record_data(None, 5, old))
    earlier = cm("d", {"record.json": old})  # written before generations: generation 0
    assert [in_force(c, 4) for c in (rewritten, created, tombstone, earlier)] == [old, None, old, old]
    assert [in_force(c, 5) for c in (rewritten, created, tombstone, earlier)] == [new, new, None, old]
    assert next_generation(4, [rewritten, earlier]) == 6  # above the half-written one
    assert next_generation(0, []) == 1


def test_a_reader_whose_record_watch_trails_the_head_reads_the_generation_before():
    head = {"metadata": {"name": HEAD}, "data": head_data(7, 4, ["a", "b"])}
    behind = [cm("a", record_data('{"v":2}', 7, '{"v":1}')), cm("b", record_data('{"v":1}', 3, None))]
    assert reading_at(head, behind) == 4
    caught_up = [behind[0], cm("b", record_data('{"v":2}', 7, '{"v":1}'))]
    assert reading_at(head, caught_up) == 7
    assert reading_at(head, [cm("z", record_data("{}", 2, None))]) == 7  # not ours: nothing to wait for
    many = head_data(9, 7, [f"r{i}" for i in range(1000)])
    assert "written.json" not in many and json.loads(head_data(1, 0, ["x"])["written.json"]) == ["x"]
    assert reading_at(None, behind) == 0
    # A record created at the head's generation that has not come yet: a reader
    # of every EIP record waits for it; a node's part cannot tell it is its own.
    created = {"metadata": {"name": HEAD}, "data": head_data(7, 4, ["sdn-egress-eip-a", "b"], ["sdn-egress-eip-a"])}
    mine = [cm("b", record_data("{}", 7, None))]
    assert reading_at(created, mine, selects_all="sdn-egress-eip-") == 4
    assert reading_at(created, [*mine, cm("sdn-egress-eip-a", record_data("{}", 7, None))],
                      selects_all="sdn-egress-eip-") == 7
    assert reading_at(created, mine) == 7


def test_an_eip_record_is_labelled_with_its_gateway_nodes_and_policies():
    data = {"eip": {"ip": "192.0.2.200", "nodes": ["alpha", "n" * 70], "policies": ["shop/cart", "cluster-wide"]}}
    labels = records.selection_labels(data)
    assert records.node_label("alpha") == "node.sdn-egress.io/alpha" and records.node_label("alpha") in labels
    long = records.node_label("n" * 70)
    assert long in labels and len(long.split("/", 1)[1]) <= 63 and long != records.node_label("n" * 71)
    assert {records.policy_label("shop/cart"), records.policy_label("cluster-wide")} <= set(labels)
    assert records.policy_label("shop/cart") != records.policy_label("shop.cart")
    assert len(labels) == 4 and set(labels.values()) == {""}
    assert records.selection_labels({"ref": {"kind": "EgressPolicy"}, "policy": {}}) == {}  # object records: none
