"""EIP allocation, gateway election and the allocation store (sdn_egress.allocation)."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import netaddr
import pytest

from sdn_egress.allocation import Allocation, FileAllocationStore, allocate
from sdn_egress.model import (
    Accepted,
    ClusterState,
    EgressGateway,
    EgressPolicy,
    LabelSelector,
    Namespace,
    Node,
    ObjectError,
    ObjectRef,
)
from tests.support.objects import model_node

IP = netaddr.IPAddress
EDGE_SELECTOR = LabelSelector(match_labels=(("egress", "true"),))


def node(name: str, i: int, egress: bool = True, ready: bool = True) -> Node:
    return model_node(name, i, {"egress": "true"} if egress else {}, ready=ready)


def gateway(name: str = "edge", v4: str = "192.0.2.200-192.0.2.210", v6: str | None = None) -> EgressGateway:
    def ranges(text):
        out = []
        for part in text.split(","):
            first, _, last = part.partition("-")
            out.append(netaddr.IPRange(first, last or first))
        return tuple(out)
    return EgressGateway(name=name, node_selector=EDGE_SELECTOR, pool_v4=ranges(v4) if v4 else (),
                         pool_v6=ranges(v6) if v6 else ())


def policy(name: str, ns: str = "shop", gw: str = "edge", eip: str | None = None, eip6: str | None = None):
    return EgressPolicy(namespace=ns, name=name, gateway=gw,
                        pod_selector=LabelSelector(match_labels=(("app", name),)),
                        eip_v4=IP(eip) if eip else None, eip_v6=IP(eip6) if eip6 else None)


def state(policies, gateways=None, nodes=None, errors=(), namespaces=()) -> ClusterState:
    gateways = gateways if gateways is not None else [gateway()]
    nodes = nodes if nodes is not None else [node("alpha", 0), node("beta", 1)]
    return ClusterState(nodes={n.name: n for n in nodes}, gateways={g.name: g for g in gateways},
                        policies={p.key: p for p in policies}, errors=tuple(errors),
                        namespaces={n.name: n for n in namespaces})


def eips(alloc: Allocation) -> dict[str, str | None]:
    return {k: (str(s.eip_v4) if s.eip_v4 else None) for k, s in alloc.policies.items()}


def keys(alloc: Allocation) -> dict[str, int]:
    return {str(a.ip): a.tunnel_key for a in alloc.eips}


def test_lowest_free_addresses_keys_and_balanced_actives():
    alloc = allocate(state([policy("b"), policy("a"), policy("c")]))
    assert eips(alloc) == {"shop/a": "192.0.2.200", "shop/b": "192.0.2.201", "shop/c": "192.0.2.202"}
    assert keys(alloc) == {"192.0.2.200": 1, "192.0.2.201": 2, "192.0.2.202": 3}
    assert [a.nodes for a in alloc.eips] == [("alpha", "beta"), ("beta", "alpha"), ("alpha", "beta")]
    a = alloc.policies["shop/a"]
    assert (a.gateway, a.node, a.ready) == ("edge", "alpha", True)
    assert [(c.type, c.status, c.reason) for c in a.conditions] == [
        ("IPAllocated", "True", "Allocated"), ("Ready", "True", "GatewayNodeSelected")]
    assert alloc.eip("192.0.2.201").policies == ("shop/b",)
    assert alloc.errors == ()


def test_sticky_across_reordering_and_policies_coming_and_going():
    first = allocate(state([policy("a"), policy("b"), policy("c")]))
    # Reordered input, same previous: nothing moves.
    again = allocate(state([policy("c"), policy("a"), policy("b")]), first)
    assert again == first
    # "a" goes: its EIP is freed, nobody else's moves.
    without_a = allocate(state([policy("c"), policy("b")]), first)
    assert eips(without_a) == {"shop/b": "192.0.2.201", "shop/c": "192.0.2.202"}
    assert keys(without_a) == {"192.0.2.201": 2, "192.0.2.202": 3}
    assert [a.nodes[0] for a in without_a.eips] == ["beta", "alpha"]
    # Newcomers take the lowest free address and key; the others keep theirs,
    # even one ("0") that sorts before all of them.
    later = allocate(state([policy("c"), policy("b"), policy("z"), policy("0")]), without_a)
    assert eips(later) == {"shop/0": "192.0.2.200", "shop/b": "192.0.2.201", "shop/c": "192.0.2.202",
                           "shop/z": "192.0.2.203"}
    assert keys(later) == {"192.0.2.200": 1, "192.0.2.201": 2, "192.0.2.202": 3, "192.0.2.203": 4}
    # Without a previous allocation the same set would be packed by name: stickiness is real.
    assert eips(allocate(state([policy("c"), policy("b")]))) == {"shop/b": "192.0.2.200",
                                                                  "shop/c": "192.0.2.201"}


def test_explicit_eip_is_honoured_and_skipped_by_the_pool():
    alloc = allocate(state([policy("a"), policy("b", eip="192.0.2.200"), policy("c")]))
    assert eips(alloc) == {"shop/a": "192.0.2.201", "shop/b": "192.0.2.200", "shop/c": "192.0.2.202"}


def test_explicit_eip_never_steals_a_held_one():
    first = allocate(state([policy("a")]))
    assert eips(first) == {"shop/a": "192.0.2.200"}
    alloc = allocate(state([policy("a"), policy("b", eip="192.0.2.200")]), first)
    assert eips(alloc) == {"shop/a": "192.0.2.200", "shop/b": None}
    b = alloc.policies["shop/b"]
    assert (b.condition("IPAllocated").status, b.condition("IPAllocated").reason) == ("False", "EIPInUse")
    assert [str(e) for e in alloc.errors] == [
        'EgressPolicy shop/b: spec.egressIP.ipv4: "192.0.2.200" is already the egress IP of EgressPolicy shop/a']


def test_explicit_eip_change_moves_the_policy():
    first = allocate(state([policy("a")]))
    moved = allocate(state([policy("a", eip="192.0.2.209")]), first)
    assert eips(moved) == {"shop/a": "192.0.2.209"}
    assert keys(moved) == {"192.0.2.209": 1}


def test_pool_exhaustion_never_steals():
    small = [gateway(v4="192.0.2.200-192.0.2.201")]
    first = allocate(state([policy("b"), policy("c")], small))
    alloc = allocate(state([policy("a"), policy("b"), policy("c")], small), first)
    assert eips(alloc) == {"shop/a": None, "shop/b": "192.0.2.200", "shop/c": "192.0.2.201"}
    a = alloc.policies["shop/a"]
    assert not a.ready and a.node is None
    assert (a.condition("IPAllocated").status, a.condition("IPAllocated").reason) == ("False", "PoolExhausted")
    assert a.condition("Ready").reason == "IPNotAllocated"
    assert [str(e) for e in alloc.errors] == [
        "EgressPolicy shop/a: spec.egressGatewayName: no free IPv4 address left in the pool of EgressGateway "
        "edge (192.0.2.200-192.0.2.201)"]
    # When a holder goes, the waiting policy gets the freed address.
    after = allocate(state([policy("a"), policy("c")], small), alloc)
    assert eips(after) == {"shop/a": "192.0.2.200", "shop/c": "192.0.2.201"}
    assert after.errors == ()


def test_no_gateway_node_keeps_the_eip_without_nodes():
    nodes = [node("alpha", 0, egress=False), node("beta", 1, ready=False)]
    alloc = allocate(state([policy("a")], nodes=nodes))
    assert eips(alloc) == {"shop/a": "192.0.2.200"}
    assert alloc.eips[0].nodes == ()
    a = alloc.policies["shop/a"]
    assert (a.ready, a.node) == (False, None)
    assert a.condition("IPAllocated").status == "True"
    ready = a.condition("Ready")
    assert (ready.status, ready.reason) == ("False", "NoGatewayNode")
    assert ready.message == "no ready node matches the nodeSelector of EgressGateway edge (egress=true)"


def test_active_stays_then_fails_over_to_the_first_standby():
    three = [node("alpha", 0), node("beta", 1), node("gamma", 2)]
    first = allocate(state([policy("a"), policy("b")], nodes=three))
    # Actives balanced; the idle node is everyone's first standby.
    assert [a.nodes for a in first.eips] == [("alpha", "gamma", "beta"), ("beta", "gamma", "alpha")]
    # A new node joins: nobody moves to it, it stands by last.
    four = three + [node("delta", 3)]
    joined = allocate(state([policy("a"), policy("b")], nodes=four), first)
    assert [a.nodes for a in joined.eips] == [("alpha", "gamma", "beta", "delta"),
                                              ("beta", "gamma", "alpha", "delta")]
    # alpha fails: its EIP goes to its first standby (where the data plane already sent it).
    down = [node("alpha", 0, ready=False)] + four[1:]
    failed = allocate(state([policy("a"), policy("b")], nodes=down), joined)
    assert [a.nodes for a in failed.eips] == [("gamma", "beta", "delta"), ("beta", "gamma", "delta")]
    assert failed.policies["shop/a"].node == "gamma"
    # alpha comes back as a standby; the actives stay.
    back = allocate(state([policy("a"), policy("b")], nodes=four), failed)
    assert [a.nodes for a in back.eips] == [("gamma", "beta", "delta", "alpha"),
                                            ("beta", "gamma", "delta", "alpha")]


def test_gateway_change_reallocates():
    gws = [gateway(), gateway("west", v4="192.0.2.220-192.0.2.229")]
    first = allocate(state([policy("a"), policy("b")], gws))
    moved = allocate(state([policy("a", gw="west"), policy("b")], gws), first)
    assert eips(moved) == {"shop/a": "192.0.2.220", "shop/b": "192.0.2.201"}
    assert moved.eip("192.0.2.220").gateway == "west"


def test_an_address_in_use_cannot_leave_the_pool():
    first = allocate(state([policy("a"), policy("b")]))
    assert eips(first) == {"shop/a": "192.0.2.200", "shop/b": "192.0.2.201"}
    # The pool shrinks past both EIPs: they stay with their policies, the gateway says why.
    shrunk = [gateway(v4="192.0.2.205-192.0.2.210")]
    after = allocate(state([policy("a"), policy("b"), policy("c")], shrunk), first)
    assert eips(after) == {"shop/a": "192.0.2.200", "shop/b": "192.0.2.201", "shop/c": "192.0.2.205"}
    assert after.policies["shop/a"].ready
    pool = after.gateways["edge"].condition("PoolValid")
    assert (pool.status, pool.reason) == ("False", "InUseAddressRemoved")
    assert [str(e) for e in after.errors] == [
        "EgressGateway edge: spec.ippools.ipv4: 192.0.2.200 left the pool while EgressPolicy shop/a uses it: "
        "an address in use stays until its policy releases it",
        "EgressGateway edge: spec.ippools.ipv4: 192.0.2.201 left the pool while EgressPolicy shop/b uses it: "
        "an address in use stays until its policy releases it"]
    # Only the holder's going frees it; then it is gone from the pool for good.
    later = allocate(state([policy("b"), policy("c"), policy("d")], shrunk), after)
    assert eips(later) == {"shop/b": "192.0.2.201", "shop/c": "192.0.2.205", "shop/d": "192.0.2.206"}
    assert [e.message.split(" left")[0] for e in later.errors] == ["192.0.2.201"]
    final = allocate(state([policy("c"), policy("d")], shrunk), later)
    assert final.errors == () and final.gateways["edge"].condition("PoolValid").status == "True"


def test_default_and_round_robin_allocation():
    def rr(name):
        return replace(policy(name), allocator="rr")

    first = allocate(state([policy("a"), policy("b"), policy("c")]))
    assert eips(first) == {"shop/a": "192.0.2.200", "shop/b": "192.0.2.201", "shop/c": "192.0.2.202"}
    # "a" goes and frees .200: a default newcomer takes the lowest free (.200),
    # a round-robin one the next after the last handed out (.202 -> .203).
    second = allocate(state([policy("b"), policy("c"), policy("d"), rr("e")]), first)
    assert eips(second) == {"shop/b": "192.0.2.201", "shop/c": "192.0.2.202", "shop/d": "192.0.2.200",
                            "shop/e": "192.0.2.203"}
    assert second.rr_last == {("edge", 4): IP("192.0.2.203")}
    # Round robin wraps around to the lowest free address at the pool's end.
    small = [gateway(v4="192.0.2.200-192.0.2.203")]
    third = allocate(state([policy("b"), policy("c"), rr("e"), rr("f")], small), second)
    assert eips(third)["shop/f"] == "192.0.2.200"
    # The cursor survives the store (allocation.json).
    assert Allocation.from_json(third.to_json()).rr_last == {("edge", 4): IP("192.0.2.200")}


def test_dual_stack_eips_come_in_pairs():
    dual = [gateway(v4="192.0.2.200-192.0.2.203", v6="2001:db8::10-2001:db8::13")]
    alloc = allocate(state([policy("a"), policy("b", eip="192.0.2.202"), policy("c")], dual))
    pairs = {k: (str(s.eip_v4), str(s.eip_v6)) for k, s in alloc.policies.items()}
    assert pairs == {"shop/a": ("192.0.2.200", "2001:db8::10"),
                     "shop/b": ("192.0.2.202", "2001:db8::12"),  # an explicit IPv4 EIP brings its pair
                     "shop/c": ("192.0.2.201", "2001:db8::11")}
    # Both halves given, but not a pair: refused whole.
    bad = allocate(state([policy("d", eip="192.0.2.200", eip6="2001:db8::11")], dual))
    d = bad.policies["shop/d"]
    assert (d.eip_v4, d.eip_v6, d.condition("IPAllocated").reason) == (None, None, "NotPaired")
    assert str(bad.errors[0]) == ('EgressPolicy shop/d: spec.egressIP.ipv6: "2001:db8::11" does not pair with '
                                  "192.0.2.200 in EgressGateway edge: 192.0.2.200 pairs with 2001:db8::10")
    # An explicit IPv4 whose pair is held elsewhere: no half pair, the holder named.
    held = allocate(state([policy("a"), policy("e", eip6="2001:db8::10")], dual), alloc)
    e = held.policies["shop/e"]
    assert (e.eip_v4, e.eip_v6, e.condition("IPAllocated").reason) == (None, None, "EIPInUse")
    assert "already the egress IP of EgressPolicy shop/a" in e.condition("IPAllocated").message
    # Exhaustion: no pair left.
    full = allocate(state([policy(n) for n in "vwxyz"], dual))
    z = full.policies["shop/z"]
    assert (z.eip_v4, z.condition("IPAllocated").reason) == (None, "PoolExhausted")
    assert z.condition("IPAllocated").message == (
        "no free IPv4/IPv6 pair left in the pool of EgressGateway edge (192.0.2.200-192.0.2.203; "
        "2001:db8::10-2001:db8::13)")
    assert full.gateways["edge"].ipv4_free == 0 and full.gateways["edge"].ipv6_total == 4


def test_namespace_default_overrides_the_cluster_default_and_sticks():
    gws = [gateway("edge"), replace(gateway("shared", v4="192.0.2.240-192.0.2.247"), cluster_default=True)]
    namespaces = [Namespace("shop", (("sdn-egress.io/default-gateway", "edge"),)), Namespace("other")]
    pols = [policy("a", gw=""), policy("b", ns="other", gw=""),
            replace(policy("all", ns="", gw=""), cluster=True)]
    first = allocate(state(pols, gws, namespaces=namespaces))
    got = {k: (s.gateway, str(s.eip_v4)) for k, s in first.policies.items()}
    assert got == {"shop/a": ("edge", "192.0.2.200"),  # the namespace's default
                   "other/b": ("shared", "192.0.2.241"),  # no namespace default: the cluster default
                   "all": ("shared", "192.0.2.240")}  # cluster policies: the cluster default only
    # The namespace's label moves to "shared": the policy keeps the gateway it got.
    relabelled = [Namespace("shop", (("sdn-egress.io/default-gateway", "shared"),)), Namespace("other")]
    again = allocate(state(pols, gws, namespaces=relabelled), first)
    assert again.policies["shop/a"].gateway == "edge" and again.eips == first.eips
    # A new policy there gets the new default.
    newer = allocate(state(pols + [policy("n", gw="")], gws, namespaces=relabelled), again)
    assert newer.policies["shop/n"].gateway == "shared"


def test_no_default_gateway_is_a_clear_condition():
    namespaces = [Namespace("shop", (("sdn-egress.io/default-gateway", "gone"),))]
    alloc = allocate(state([policy("a", gw=""), policy("b", ns="other", gw="")], namespaces=namespaces))
    assert [str(e) for e in alloc.errors] == [
        "EgressPolicy other/b: spec.egressGatewayName: names no EgressGateway and there is no default gateway: "
        "name one, label namespace other with sdn-egress.io/default-gateway=NAME, or set clusterDefault: true "
        "on one EgressGateway",
        'EgressPolicy shop/a: spec.egressGatewayName: namespace shop names EgressGateway "gone" as its default '
        "(label sdn-egress.io/default-gateway), and there is none"]
    assert alloc.policies["shop/a"].condition("IPAllocated").reason == "GatewayNotFound"


def test_a_gateway_being_deleted_keeps_its_users_and_takes_no_new_ones():
    first = allocate(state([policy("a")]))
    deleting = [replace(gateway(), deleting=True)]
    blocked = allocate(state([policy("a"), policy("b")], deleting), first)
    assert eips(blocked) == {"shop/a": "192.0.2.200", "shop/b": None}
    assert blocked.policies["shop/b"].condition("IPAllocated").reason == "GatewayDeleting"
    in_use = blocked.gateways["edge"].condition("InUse")
    assert (in_use.status, in_use.reason, in_use.message) == (
        "True", "DeletionBlocked",
        "deletion waits for EgressPolicy shop/a: delete them or point them at another gateway")
    assert blocked.gateways["edge"].policies == ("shop/a",)
    free = allocate(state([policy("b")], deleting), blocked)
    assert free.gateways["edge"].condition("InUse").reason == "Unused"
    assert free.gateways["edge"].policies == ()


def test_gateway_status_nodes_and_usage():
    nodes = [node("alpha", 0), node("beta", 1, ready=False), node("gamma", 2, egress=False)]
    alloc = allocate(state([policy("a"), policy("b")], nodes=nodes))
    g = alloc.gateways["edge"]
    assert [(n.name, n.ready, [str(ip) for ip in n.eips]) for n in g.nodes] == [
        ("alpha", True, ["192.0.2.200", "192.0.2.201"]), ("beta", False, [])]
    assert (g.ipv4_total, g.ipv4_free, g.ipv6_total, g.ipv6_free) == (11, 9, 0, 0)
    assert [(c.type, c.status, c.reason) for c in g.conditions] == [
        ("Ready", "True", "NodesSelected"), ("PoolValid", "True", "Valid"), ("InUse", "True", "PoliciesUse")]
    assert Allocation.from_json(alloc.to_json()) == alloc


def test_use_node_ip_leaves_with_the_address_of_the_least_loaded_gateway_node():
    alloc = allocate(state([replace(policy("a"), use_node_ip=True), policy("b"),
                            replace(policy("c"), use_node_ip=True)]))
    a = alloc.policies["shop/a"]
    # alpha already holds b's EIP: beta, with its own address, no pool address taken.
    assert (str(a.eip_v4), a.node, a.ready) == ("192.0.2.12", "beta", True)
    assert [(c.type, c.status, c.reason) for c in a.conditions] == [
        ("IPAllocated", "True", "NodeIP"), ("Ready", "True", "GatewayNodeSelected")]
    assert eips(alloc)["shop/b"] == "192.0.2.200"
    # c is balanced too (alpha and beta have one each: by name); no standby,
    # another node is another address.
    assert {str(x.ip): (x.nodes, x.policies) for x in alloc.eips if x.node_ip} == {
        "192.0.2.11": (("alpha",), ("shop/c",)), "192.0.2.12": (("beta",), ("shop/a",))}
    assert [str(x.ip) for x in alloc.eips if not x.node_ip] == ["192.0.2.200"]
    assert keys(alloc) == {"192.0.2.11": 1, "192.0.2.12": 2, "192.0.2.200": 3}
    assert Allocation.from_json(alloc.to_json()) == alloc
    # Policies on one node share its address: one assignment, one tunnel key.
    shared = allocate(state([replace(policy("a"), use_node_ip=True), replace(policy("c"), use_node_ip=True)],
                            nodes=[node("alpha", 0, egress=False), node("beta", 1)]))
    assert [(str(x.ip), x.policies) for x in shared.eips] == [("192.0.2.12", ("shop/a", "shop/c"))]
    assert alloc.gateways["edge"].ipv4_free == 10  # the node address is not from the pool
    # The node stays while it qualifies; when it goes, the address goes with the policy.
    again = allocate(state([replace(policy("a"), use_node_ip=True), policy("b")]), alloc)
    assert str(again.policies["shop/a"].eip_v4) == "192.0.2.12" and again.eip("192.0.2.12").tunnel_key == 2
    moved = allocate(state([replace(policy("a"), use_node_ip=True), policy("b")],
                           nodes=[node("alpha", 0), node("beta", 1, ready=False)]), again)
    assert (str(moved.policies["shop/a"].eip_v4), moved.policies["shop/a"].node) == ("192.0.2.11", "alpha")
    assert moved.eip("192.0.2.12") is None


def test_use_node_ip_without_an_eligible_node_is_not_ready_and_takes_nothing():
    alloc = allocate(state([replace(policy("a"), use_node_ip=True)], nodes=[node("alpha", 0, egress=False)]))
    a = alloc.policies["shop/a"]
    assert (a.eip_v4, a.node, a.ready) == (None, None, False)
    assert a.condition("Ready").reason == "NoGatewayNode" and alloc.eips == ()


def test_dual_stack_and_unknown_gateway():
    gws = [gateway(v6="2001:db8::100-2001:db8::1ff")]
    alloc = allocate(state([policy("a"), policy("b", gw="nowhere")], gws))
    a = alloc.policies["shop/a"]
    assert (str(a.eip_v4), str(a.eip_v6)) == ("192.0.2.200", "2001:db8::100")
    assert keys(alloc) == {"192.0.2.200": 1, "2001:db8::100": 2}
    b = alloc.policies["shop/b"]
    assert b.condition("IPAllocated").reason == "GatewayNotFound" and b.eip_v4 is None


def test_deterministic():
    st = state([policy(n) for n in "dcba"], nodes=[node("beta", 1), node("alpha", 0)])
    st2 = state([policy(n) for n in "abcd"], nodes=[node("alpha", 0), node("beta", 1)])
    assert allocate(st).to_json() == allocate(st2).to_json()
    prev = allocate(st)
    assert allocate(st, prev).to_json() == allocate(st2, prev).to_json()


def test_state_errors_come_first_in_the_allocation():
    err = ObjectError(ObjectRef("EgressPolicy", "shop", "bad"), "spec.priority", "must be an integer", "f.yaml")
    alloc = allocate(state([policy("a", eip="192.0.2.99")], errors=[err]))
    assert alloc.errors[0] == err
    assert str(alloc.errors[1]) == ('EgressPolicy shop/a: spec.egressIP.ipv4: "192.0.2.99" is not in the pool '
                                    "of EgressGateway edge (192.0.2.200-192.0.2.210)")


def test_store_round_trip(tmp_path):
    err = ObjectError(ObjectRef("EgressPolicy", "shop", "bad"), "spec.priority", "must be an integer", "f.yaml")
    alloc = allocate(state([policy("a"), policy("b", eip6="2001:db8::5")],
                           [gateway(v6="2001:db8::-2001:db8::ff")], errors=[err]))
    store = FileAllocationStore(str(tmp_path / "status"))
    assert store.load() is None
    assert store.save(alloc)
    assert store.load() == alloc
    assert Allocation.from_json(alloc.to_json()) == alloc
    with open(tmp_path / "status" / "errors.json") as f:
        assert json.load(f) == [err.to_dict()]
    assert sorted(os.listdir(tmp_path / "status")) == ["allocation.json", "errors.json"]
    mtime = os.stat(store.allocation_file).st_mtime_ns
    assert not store.save(alloc)  # unchanged: not rewritten
    assert os.stat(store.allocation_file).st_mtime_ns == mtime


@pytest.mark.parametrize("text, message", [
    ("{", "not valid JSON"),
    ('{"eips": [{"ip": "192.0.2.1", "gateway": "edge", "policies": [], "tunnel_key": 0, "nodes": []}]}',
     "eips[0].tunnel_key: must be an integer in 1..16777215"),
    ('{"policies": {"shop/a": {"eip_v4": "2001:db8::1"}}}',
     "policies[shop/a].eip_v4: '2001:db8::1' is not an IPv4 address"),
    ('{"eipz": []}', "top level: unknown key 'eipz'"),
])
def test_store_refuses_a_damaged_file(tmp_path, text, message):
    (tmp_path / "allocation.json").write_text(text)
    with pytest.raises(ValueError) as info:
        FileAllocationStore(str(tmp_path)).load()
    assert str(info.value).startswith(f"{tmp_path / 'allocation.json'}: {message}")


# -- the per-object records (sdn_egress.allocation.records: the Kubernetes store's shape) ---------

def _rich_allocation() -> Allocation:
    """Dual stack, useNodeIP, a cluster policy, refusals of the source and of
    the allocation, round-robin cursors and incumbency records."""
    err = ObjectError(ObjectRef("Pod", "shop", "web-1"), "metadata.labels", "not a label", "f.yaml")
    dual = gateway("dual", v4="192.0.2.200-192.0.2.203", v6="2001:db8::10-2001:db8::13")
    edge = replace(gateway("edge", v4="198.51.100.10-198.51.100.12"), cluster_default=True)
    rr = replace(policy("rr", gw="edge"), allocator="rr")
    cluster = replace(policy("everyone", ns="", gw=""), cluster=True)
    pols = [policy("a", gw="dual"), policy("b", gw="dual", eip="192.0.2.202"), rr, cluster,
            replace(policy("host", gw="edge"), use_node_ip=True), replace(policy("host2", gw="edge"), use_node_ip=True),
            policy("taken", gw="edge", eip="198.51.100.99")]
    s = state(pols, [dual, edge], errors=[err])
    accepted = {str(p.ref): Accepted(source=f"/apis/{p.key}", gateway=p.gateway, eip_v4=p.eip_v4) for p in pols}
    accepted[str(edge.ref)] = Accepted(source="/apis/edge", cluster_default=True)
    return allocate(replace(s, accepted=accepted))


def test_records_put_together_what_they_cut():
    from sdn_egress.allocation import records

    alloc = _rich_allocation()
    assert alloc.errors and alloc.rr_last and any(a.node_ip for a in alloc.eips) and alloc.accepted
    cut = records.split(alloc)
    assert records.join((r.name, json.loads(json.dumps(r.data))) for r in cut.values()) == alloc
    assert {r.part for r in cut.values()} == {records.EIP, records.OBJECT}
    assert len([r for r in cut.values() if r.part == records.EIP]) == len(alloc.eips)
    for name in cut:  # a ConfigMap's name: a DNS subdomain
        assert len(name) <= 253 and name == name.lower() and name.replace("-", "").replace(".", "").isalnum()
    assert "sdn-egress-eip-v6-2001-db8--10" in cut and "sdn-egress-egressclusterpolicy-everyone" in cut
    # The agents' part (the EIP records alone) is everything their view reads.
    part = records.join((r.name, r.data) for r in cut.values() if r.part == records.EIP)
    assert part.eips == alloc.eips
    assert {k: (s.eip_v4, s.eip_v6, s.gateway) for k, s in part.policies.items()} == {
        k: (s.eip_v4, s.eip_v6, s.gateway) for k, s in alloc.policies.items() if s.eip_v4 or s.eip_v6}
    assert set(part.accepted) == {r for r in alloc.accepted
                                  if any(r.split(" ")[1] in a.policies or r == f"EgressGateway {a.gateway}"
                                         for a in alloc.eips)}
    assert not part.errors and not part.gateways and not part.rr_last  # the controller's alone


def test_a_change_rewrites_only_its_records():
    from sdn_egress.allocation import records

    s = state([policy("a", gw="dual"), policy("b", gw="dual", eip="192.0.2.202")],
              [gateway("dual", v4="192.0.2.200-192.0.2.203", v6="2001:db8::10-2001:db8::13")])
    before = allocate(replace(s, policies={**s.policies, "shop/c": policy("c", gw="dual")}))
    after = allocate(s, before)  # shop/c deleted: its two EIPs and its record go, the gateway's changes
    old, new = records.split(before), records.split(after)
    assert set(old) - set(new) == {"sdn-egress-egresspolicy-shop.c", "sdn-egress-eip-v4-192-0-2-201",
                                                  "sdn-egress-eip-v6-2001-db8--11"}
    assert [n for n in new if new[n] != old[n]] == ["sdn-egress-egressgateway-dual"]


def test_records_name_what_cannot_be_read():
    from sdn_egress.allocation import records

    cut = records.split(_rich_allocation())
    name = "sdn-egress-eip-v4-192-0-2-200"
    damaged = [(n, {**r.data, "eip": {**r.data["eip"], "tunnel_key": 0}} if n == name else r.data)
               for n, r in cut.items()]
    with pytest.raises(ValueError, match=rf"^{name}\.eip\.tunnel_key: must be an integer in 1\.\.16777215"):
        records.join(damaged)
