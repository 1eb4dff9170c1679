"""Egress end to end: real OVS in node namespaces, real packets, the source
address the external host saw."""
from __future__ import annotations

import pytest

from .conftest import lab_rules, policy_doc, wait_for

EXT1 = "198.51.100.10"
EXT2 = "198.51.100.11"


def node_ip(lab, node: str) -> str:
    return lab.address(node)


def source(lab, pod: str, proto: str, dst: str = EXT1, ext: str = "ext-1") -> str | None:
    if proto == "tcp":
        return lab.tcp_source(pod, dst)
    if proto == "udp":
        return lab.udp_source(pod, dst)
    return lab.icmp_source(pod, ext)


def converge(lab, pod: str, want: str, dst: str = EXT1) -> None:
    """Wait until the data path has caught up with the last change (agents
    reconcile asynchronously), judged by what the external host sees."""
    wait_for(lambda: lab.udp_source(pod, dst) == want, f"{pod} -> {dst} seen as {want}")


@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
def test_selected_pod_on_worker_leaves_with_the_eip(lab, policies, proto):
    policies.apply("egressgateway.yaml", "egresspolicy.yaml")
    eip = policies.eip("shop/cart")
    converge(lab, "shop/cart-0", eip)
    assert source(lab, "shop/cart-0", proto) == eip


@pytest.mark.parametrize("proto", ["tcp", "udp", "icmp"])
def test_selected_pod_on_the_gateway_node_leaves_with_the_eip(lab, policies, proto):
    policies.apply("egressgateway.yaml", "egresspolicy.yaml")
    eip = policies.eip("shop/cart")
    converge(lab, "shop/cart-1", eip)
    assert source(lab, "shop/cart-1", proto) == eip


def test_unselected_pods_and_other_destinations_keep_the_node_ip(lab, policies):
    policies.apply("egressgateway.yaml",
                   policy_doc("cart", "shop", dest=[f"{EXT1}/32"]))
    eip = policies.eip("shop/cart")
    converge(lab, "shop/cart-0", eip)
    # Unselected by labels.
    assert lab.tcp_source("shop/web-0", EXT1) == node_ip(lab, "charlie")
    # Same labels, other namespace: a namespaced policy never selects it.
    assert lab.tcp_source("other/cart-0", EXT1) == node_ip(lab, "charlie")
    # Selected pod, destination outside destSubnet.
    assert lab.tcp_source("shop/cart-0", EXT2) == node_ip(lab, "bravo")
    assert lab.udp_source("shop/cart-0", EXT2) == node_ip(lab, "bravo")
    assert lab.tcp_source("shop/cart-0", EXT1) == eip


def test_cluster_traffic_is_never_steered(lab, policies):
    # destSubnet empty: everything outside the cluster goes via the gateway.
    policies.apply("egressgateway.yaml", policy_doc("cart", "shop"))
    eip = policies.eip("shop/cart")
    converge(lab, "shop/cart-0", eip)
    status = lab.status()
    pods = {f"{p['namespace']}/{p['name']}": p for p in status["pods"]}
    # pod -> pod across nodes: the peer sees the pod's own address.
    seen = lab.udp_source_of("shop/cart-0", "shop/web-0")
    assert seen == pods["shop/cart-0"]["ip"]
    # pod -> another node's IP: what the CNI does without any policy (its
    # masquerade), never the EIP.
    assert lab.udp_source_of("shop/cart-0", "alpha") == node_ip(lab, "bravo")
    # pod -> its own node: the pod's address.
    assert lab.udp_source_of("shop/cart-0", "bravo") == pods["shop/cart-0"]["ip"]


def test_two_policies_two_eips_on_one_gateway(lab, policies):
    policies.apply("egressgateway.yaml",
                   policy_doc("cart", "shop", eip="192.0.2.205"),
                   policy_doc("cart", "other", eip="192.0.2.206"))
    converge(lab, "shop/cart-0", "192.0.2.205")
    converge(lab, "other/cart-0", "192.0.2.206")
    assert lab.tcp_source("shop/cart-0", EXT1) == "192.0.2.205"
    assert lab.tcp_source("shop/cart-1", EXT1) == "192.0.2.205"
    assert lab.tcp_source("other/cart-0", EXT1) == "192.0.2.206"
    assert lab.tcp_source("shop/web-0", EXT1) == node_ip(lab, "charlie")


def test_relabel_moves_a_pod_in_and_out_of_the_selector(lab, policies):
    policies.apply("egressgateway.yaml", "egresspolicy.yaml")
    eip = policies.eip("shop/cart")
    try:
        lab.label("shop/web-0", "app", "cart")
        converge(lab, "shop/web-0", eip)
        assert lab.tcp_source("shop/web-0", EXT1) == eip
    finally:
        lab.label("shop/web-0", "app", "web")
    converge(lab, "shop/web-0", node_ip(lab, "charlie"))
    assert lab.tcp_source("shop/web-0", EXT1) == node_ip(lab, "charlie")


def test_deleting_a_policy_leaves_nothing_behind(lab, policies):
    gw, pol = policies.apply("egressgateway.yaml", "egresspolicy.yaml")
    eip = policies.eip("shop/cart")
    converge(lab, "shop/cart-0", eip)
    assert lab_rules(lab)["bravo"]
    assert eip in lab.ovs("alpha").ofctl("dump-flows", "br-int")
    policies.delete(pol)
    converge(lab, "shop/cart-0", node_ip(lab, "bravo"))
    assert lab.tcp_source("shop/cart-0", EXT1) == node_ip(lab, "bravo")
    wait_for(lambda: not lab_rules(lab), "no steering rule left")
    cart0 = lab.address("shop/cart-0")

    def leftovers():
        found = []
        for node in ("alpha", "bravo", "charlie"):
            for bridge in ("br-int", "br-ex"):
                found += [f"{node} {bridge}: {line.strip()}"
                          for line in lab.ovs(node).ofctl("dump-flows", bridge).splitlines()
                          if eip in line or f"nw_src={cart0}," in line]
        return found

    # Each agent removes its part in its own pass: wait for all of them.
    wait_for(lambda: not leftovers() or None, "every flow of the policy removed", timeout=20)
    assert leftovers() == []


def test_tcp_connection_survives_an_agent_restart(lab, policies):
    policies.apply("egressgateway.yaml", "egresspolicy.yaml")
    eip = policies.eip("shop/cart")
    converge(lab, "shop/cart-0", eip)
    with lab.tcp_session("shop/cart-0", EXT1) as session:
        assert session.ask() == eip
        lab.restart_agent("bravo")
        lab.restart_agent("alpha")
        wait_for(lambda: lab.agent_passes("alpha") > 0 and lab.agent_passes("bravo") > 0,
                 "restarted agents finished a pass")
        assert session.ask() == eip  # same connection, still answered


def test_invalid_policy_is_reported_and_disturbs_nothing(lab, policies, tmp_path):
    policies.apply("egressgateway.yaml", "egresspolicy.yaml")
    eip = policies.eip("shop/cart")
    converge(lab, "shop/cart-0", eip)
    policies.apply(policy_doc("broken", "other", dest=["198.51.100.0/33"]))
    errors = wait_for(lambda: [e for e in lab.status().get("errors", [])
                               if e.get("name") == "broken"], "the broken policy reported")
    assert errors[0]["kind"] == "EgressPolicy"
    assert errors[0]["field"] == "spec.destSubnet[0]"
    assert "198.51.100.0/33" in errors[0]["message"]
    assert lab.tcp_source("shop/cart-0", EXT1) == eip
    assert lab.tcp_source("other/cart-0", EXT1) == node_ip(lab, "charlie")
