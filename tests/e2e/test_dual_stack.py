"""Dual stack end to end (issue 12): one policy, both families of one pod at
once, each leaving through its own EIP (the n-th IPv4 of the pool paired with
the n-th IPv6), tunnels over the IPv4 underlay, and failover of both EIPs
together.  Family: dual stack (``ipFamilies: [IPv4, IPv6]``); the
single-family twins are in ``test_egress.py`` and ``test_failover.py``."""
from __future__ import annotations

import collections
import sys
import time
import uuid

import pytest
import yaml

from .conftest import IPV4, IPV6, Net, Stream, lab_up, policy_doc, wait_for

TOPOLOGY = {
    "ipFamilies": ["IPv4", "IPv6"],
    "nodes": [{"name": "alpha", "labels": {"egress": "true"}}, {"name": "bravo", "labels": {"egress": "true"}},
              {"name": "charlie"}],
    "pods": [{"name": "cart-0", "namespace": "shop", "node": "charlie", "labels": {"app": "cart"}},
             {"name": "cart-1", "namespace": "shop", "node": "alpha", "labels": {"app": "cart"}},
             {"name": "web-0", "namespace": "shop", "node": "charlie", "labels": {"app": "web"}},
             {"name": "cart-0", "namespace": "other", "node": "bravo", "labels": {"app": "cart"}}],
    "externals": [{"name": "ext-1"}],
}
V4, V6 = Net(IPV4), Net(IPV6)
GATEWAY = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
           "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                    # 10 addresses each (IPv6 host numbers are hex: ::200-::209), so they pair.
                    "ippools": {**V4.pool(200, 209), **V6.pool(200, 209)}}}

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with lab_up(TOPOLOGY, "seds") as the_lab:
        path = tmp_path_factory.mktemp("ds") / "gateway.yaml"
        path.write_text(yaml.safe_dump(GATEWAY))
        the_lab.apply(str(path))
        yield the_lab


@pytest.fixture
def policy(lab, tmp_path):
    """Applies one policy document for the test; every node alive and the
    policy removed when it ends."""
    applied = []

    def apply(doc: dict) -> tuple[str | None, str | None]:
        path = tmp_path / f"policy-{len(applied)}.yaml"
        path.write_text(yaml.safe_dump(doc))
        lab.apply(str(path))
        applied.append(str(path))
        key = f"{doc['metadata']['namespace']}/{doc['metadata']['name']}"
        pol = wait_for(lambda: (p := lab.status()["allocation"].get("policies", {}).get(key)) and p.get("node")
                       and p, f"policy {key} allocated")
        return pol.get("eip_v4"), pol.get("eip_v6")

    yield apply
    for node in ("alpha", "bravo"):
        if not lab.ovs(node).running():
            lab.revive(node)
    for path in applied:
        lab.delete(path)


def ext(lab, net: Net) -> str:
    return lab.address("ext-1", net.family)


def seen_as(lab, pod: str, net: Net, want: str) -> None:
    wait_for(lambda: lab.udp_source(pod, ext(lab, net)) == want, f"{pod} over {net.family} seen as {want}")


@pytest.mark.parametrize("pod", ["shop/cart-0", "shop/cart-1"], ids=["worker-pod", "pod-on-the-gateway"])
def test_both_families_of_one_pod_leave_at_once_each_with_its_own_eip(lab, policy, pod):
    eip4, eip6 = policy(policy_doc("cart", "shop"))
    assert eip4 and eip6 and eip6.startswith("2001:db8::")
    seen_as(lab, pod, V4, eip4)
    seen_as(lab, pod, V6, eip6)
    for net, eip in ((V4, eip4), (V6, eip6)):
        assert lab.tcp_source(pod, ext(lab, net)) == eip
        assert lab.udp_source(pod, ext(lab, net)) == eip
        assert lab.icmp_source(pod, "ext-1", family=net.family) == eip  # ICMP and ICMPv6 echo
    # At once: one TCP connection of each family open side by side.
    with lab.tcp_session(pod, ext(lab, V4)) as s4, lab.tcp_session(pod, ext(lab, V6)) as s6:
        assert (s4.greeting, s6.greeting) == (eip4, eip6)
        assert (s4.ask(), s6.ask()) == (eip4, eip6)


def test_unselected_pods_and_cluster_traffic_keep_their_addresses_in_both_families(lab, policy):
    eip4, eip6 = policy(policy_doc("cart", "shop"))
    seen_as(lab, "shop/cart-0", V6, eip6)
    pods = {f"{p['namespace']}/{p['name']}": p for p in lab.status()["pods"]}
    for net in (V4, V6):
        # Unselected (labels, namespace): the node's own address of the family (the CNI's masquerade).
        assert lab.tcp_source("shop/web-0", ext(lab, net)) == net.node_ip(lab, "charlie")
        assert lab.udp_source("other/cart-0", ext(lab, net)) == net.node_ip(lab, "bravo")
        # Inside the cluster nothing is steered: pod to pod the peer sees the pod's address...
        cart0 = next(ip for ip in pods["shop/cart-0"]["ips"] if (":" in ip) == net.v6)
        assert lab.udp_source_of("shop/cart-0", "shop/web-0", family=net.family) == cart0
        # ... pod to another node what the CNI does (masquerade), never an EIP.
        assert lab.udp_source_of("shop/cart-0", "alpha", family=net.family) == net.node_ip(lab, "charlie")


def test_a_policy_of_ipv6_destinations_steers_only_ipv6(lab, policy):
    eip4, eip6 = policy(policy_doc("cart", "shop", dest=[V6.ext_lan]))
    seen_as(lab, "shop/cart-0", V6, eip6)
    seen_as(lab, "shop/cart-0", V4, V4.node_ip(lab, "charlie"))
    assert lab.tcp_source("shop/cart-0", ext(lab, V6)) == eip6
    assert lab.tcp_source("shop/cart-0", ext(lab, V4)) == V4.node_ip(lab, "charlie")
    assert lab.icmp_source("shop/cart-0", "ext-1", family=IPV4) == V4.node_ip(lab, "charlie")


def test_the_tunnels_run_over_the_ipv4_underlay(lab, policy):
    policy(policy_doc("cart", "shop"))

    def remotes() -> list[str]:
        out = lab.ovs("charlie").vsctl("--columns=name,options", "--format=csv", "find", "Interface", "type=geneve")
        return sorted(line.split("remote_ip=")[1].split(",")[0].strip('"}') for line in out.splitlines()[1:]
                      if "remote_ip=flow" not in line)

    # The worker makes its tunnels to the gateway nodes once its pod is selected (its next pass).
    wait_for(lambda: remotes() == ["192.0.2.11", "192.0.2.12"], "charlie's tunnels to both gateway nodes")
    wait_for(lab.bfd_sessions_up, "every BFD session up", timeout=30)
    assert remotes() == ["192.0.2.11", "192.0.2.12"]


def active(lab, eip: str) -> str:
    return next(a["nodes"][0] for a in lab.status()["allocation"]["eips"] if a["ip"] == eip)


def brex_mac(lab, node: str) -> str:
    return lab.exec(node, ["cat", "/sys/class/net/br-ex/address"]).stdout.strip()


def test_killing_the_active_gateway_moves_both_eips_and_neither_leaks(lab, policy):
    eip4, eip6 = policy(policy_doc("cart", "shop"))
    seen_as(lab, "shop/cart-0", V4, eip4)
    seen_as(lab, "shop/cart-0", V6, eip6)
    wait_for(lab.bfd_sessions_up, "every BFD session up", timeout=30)
    victim = active(lab, eip4)  # the IPv6 EIP may be active on the same node or the other one
    survivor = "bravo" if victim == "alpha" else "alpha"
    stream = Stream(lab, "shop/cart-0", [ext(lab, V4), ext(lab, V6)])
    try:
        time.sleep(1.0)
        t_kill = time.time()
        lab.kill(victim)
        wait_for(lambda: {e["src"] for e in stream.seen() if e["t"] > t_kill + 0.05} == {eip4, eip6},
                 "datagrams of both families after the kill", timeout=15)
        time.sleep(1.0)
    finally:
        stream.stop()
    sources = collections.Counter(e["src"] for e in stream.seen())
    assert set(sources) == {eip4, eip6}, sources  # not one datagram with a node address
    wait_for(lambda: active(lab, eip4) == survivor and active(lab, eip6) == survivor, "both EIPs on the survivor")
    # Exactly one node claims each EIP: ARP for the IPv4 one, neighbour solicitation for the IPv6 one.
    assert lab.arp_answers(eip4) == [brex_mac(lab, survivor)]
    assert lab.nd_answers(eip6) == [brex_mac(lab, survivor)]
    lab.revive(victim)
    wait_for(lambda: lab.agent_passes(victim) > 1, "the revived agent at work")
    time.sleep(2.0)  # room for a flap to show: no fail-back
    assert active(lab, eip4) == survivor and active(lab, eip6) == survivor
    assert lab.arp_answers(eip4) == [brex_mac(lab, survivor)]
    assert lab.nd_answers(eip6) == [brex_mac(lab, survivor)]
    assert lab.tcp_source("shop/cart-0", ext(lab, V6)) == eip6
