"""The trace's policy reasoning, on the same model the agent uses."""
from __future__ import annotations

import sys
import os

sys.path.insert(0, os.path.dirname(__file__))

from test_view import policy, state  # noqa: E402

from sdn_egress.allocation import allocate  # noqa: E402
from sdn_egress.debug.explain import explain  # noqa: E402


def run(st, pod_key, dst):
    return explain(st, allocate(st), pod_key, dst)


def test_matched_pod_names_policy_eip_and_gateways():
    st = state(policy("shop", "cart", dest=["198.51.100.0/24"], app="cart"))
    e = run(st, "shop/cart-0", "198.51.100.10")
    assert (e.steered, e.policy, e.eip, e.gateways) == (True, "shop/cart", "192.0.2.200", ("alpha",))


def test_unselected_pod_says_which_selector_missed():
    st = state(policy("shop", "cart", app="cart"))
    e = run(st, "shop/web-0", "198.51.100.10")
    assert not e.steered
    assert "policy shop/cart does not select the pod (selector app=cart; pod labels app=web)" in e.reasons


def test_destination_outside_dest_and_in_exclude():
    st = state(policy("shop", "cart", dest=["198.51.100.0/25"], exclude=["198.51.100.10/32"], app="cart"))
    assert "policy shop/cart selects the pod but 198.51.100.200 is outside its destSubnet 198.51.100.0/25" \
        in run(st, "shop/cart-0", "198.51.100.200").reasons
    assert "policy shop/cart selects the pod but 198.51.100.10 is in its excludeSubnet 198.51.100.10/32" \
        in run(st, "shop/cart-0", "198.51.100.10").reasons


def test_cluster_destinations_and_other_namespaces():
    st = state(policy("shop", "cart", app="cart"))
    e = run(st, "shop/cart-0", "203.0.113.2")
    assert not e.steered and any("cluster address" in r for r in e.reasons)
    e = run(st, "other/cart-0", "198.51.100.10")
    assert not e.steered
    assert any("policy shop/cart would select these labels but is in namespace shop" in r for r in e.reasons)


def test_priority_decides_and_says_so():
    st = state(policy("shop", "wide", dest=["198.51.100.0/24"], app="cart"),
               policy("shop", "vip", dest=["198.51.100.10/32"], priority=10, app="cart"))
    e = run(st, "shop/cart-0", "198.51.100.10")
    assert e.policy == "shop/vip"
    assert "policy shop/wide also matches; shop/vip wins (priority 10 > 0)" in e.reasons
    assert run(st, "shop/cart-0", "198.51.100.11").policy == "shop/wide"


def test_no_live_gateway_is_named():
    st = state(policy("shop", "cart", app="cart"))
    e = explain(st, allocate(st), "shop/cart-0", "198.51.100.10", dead=frozenset({"alpha"}))
    assert e.steered
    assert ("no live gateway for EIP 192.0.2.200: BFD is down to alpha; the packet is dropped on "
            "the pod's node, never sent with the node IP") in e.reasons


def test_a_pod_subnet_policy_is_explained_by_its_subnets():
    import netaddr
    from dataclasses import replace
    base = policy("shop", "net", app="cart")
    st = state(replace(base, pod_selector=None, pod_subnets=(netaddr.IPNetwork("203.0.113.32/30"),)))
    assert run(st, "shop/cart-0", "198.51.100.10").policy == "shop/net"  # 203.0.113.34
    e = run(st, "shop/web-0", "198.51.100.10")  # 203.0.113.35, also in .32/30: labels do not matter
    assert e.policy == "shop/net"
    far = run(st, "shop/cart-1", "198.51.100.10")  # 203.0.113.2
    assert "policy shop/net does not select the pod (podSubnet 203.0.113.32/30; pod IPs 203.0.113.2)" \
        in far.reasons


def test_namespaced_before_cluster_policy_as_the_view_orders_them():
    """Same priority: the view puts a namespaced policy before a cluster
    policy whatever their names; explain used to order (and explain) by key
    alone, naming the cluster policy ``aaa`` as the one that sorts first."""
    from dataclasses import replace

    from sdn_egress.view import selected_policies
    cluster = replace(policy("", "aaa", app="cart"), cluster=True)
    st = state(policy("shop", "zzz", app="cart"), cluster)
    alloc = allocate(st)
    e = explain(st, alloc, "shop/cart-0", "198.51.100.10")
    assert e.policy == "shop/zzz"
    assert [p.key for p in selected_policies(st, alloc, st.pods["shop/cart-0"])] == ["shop/zzz", "aaa"]
    assert ("policy aaa also matches; shop/zzz wins (same priority, a namespaced policy goes before a "
            "cluster policy)") in e.reasons
