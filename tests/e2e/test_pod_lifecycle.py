"""Pods come and go while a policy is in force (issue 13), with real packets
and what the external host captured: a new selected pod's first packet leaves
with the EIP, a rescheduled pod keeps its EIP and its old node keeps nothing
of its old address, an address a selected pod had is never steered for the
unselected pod of another namespace that gets it next, and after churn no
node keeps a stale rule or flow.  Both state modes: one lab each."""
from __future__ import annotations

import os
import random
import time

import pytest
import yaml

from tests.support.waiting import wait_for

from .conftest import lab_up, policy_doc

EXT = "198.51.100.10"
EIP = "192.0.2.205"
NODE_IPS = {"alpha": "192.0.2.11", "bravo": "192.0.2.12", "charlie": "192.0.2.13"}
NODES = tuple(NODE_IPS)
TOPOLOGY = {
    "ipFamilies": ["IPv4"],  # written for IPv4 (issue 12: the family each test runs on is named)
    "nodes": [{"name": "alpha", "labels": {"egress": "true"}}, {"name": "bravo"}, {"name": "charlie"}],
    "pods": [{"name": "idle-0", "namespace": "shop", "node": "bravo", "labels": {"app": "idle"}}],
    "externals": [{"name": "ext-1"}],
}
GATEWAY = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
           "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                    "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"]}}}

@pytest.fixture(scope="module", params=["manifests", "kube"])
def lab(request, tmp_path_factory):
    with lab_up(TOPOLOGY, "sepl", kube=request.param == "kube") as lab:
        docs = tmp_path_factory.mktemp("pl") / "objects.yaml"
        docs.write_text(yaml.safe_dump_all([GATEWAY, policy_doc("cart", "shop", eip=EIP, dest=["198.51.100.0/24"])]))
        lab.apply(str(docs))
        wait_for(lambda: (lab.status().get("allocation") or {}).get("policies", {}).get("shop/cart", {}).get("node"),
                 "the policy's EIP on a gateway", timeout=60)
        wait_for(lambda: all(lab.agent_passes(n) for n in NODES), "every agent's first pass", timeout=60)
        wait_for(lab.bfd_sessions_up, "BFD up on every tunnel", timeout=60)
        yield lab


@pytest.fixture
def pods(lab):
    """The pods a test adds, deleted afterwards (also on failure)."""
    made: list[str] = []
    yield made
    live = {p.key for p in lab.pods()}
    for key in made:
        if key in live:
            lab.delete_pod(key)
        else:
            lab.delete_pod_object(key)  # its network went already; its object may not have


@pytest.fixture
def capture(lab, tmp_path):
    caps = []

    def start():
        caps.append(lab.capture("ext-1", str(tmp_path / f"cap{len(caps)}.pcap")))
        return caps[-1]
    yield start
    for c in caps:
        c.close()


def node_rules(lab, node: str) -> list[str]:
    return [l for l in lab.exec(node, ["ip", "rule"]).stdout.splitlines() if l.split(":")[0] in
            ("7100", "7200")]


def steer_flows(lab, node: str) -> list[str]:
    return [l for l in lab.ovs(node).ofctl("dump-flows", "br-int", "--no-stats").splitlines() if "nw_src=" in l]


def first_packets(lab, capture, pods, key: str, node: str, labels: dict, want: str, ip: str | None = None,
                  delay: float = 0.3, before_publish=None) -> tuple[list[str], str]:
    """Create pod ``key``: its network, a sender in it from its first packet
    on, and only ``delay`` later its Pod object (the kubelet's report), as
    in a cluster.  Returns the sources the external host saw and the pod's IP."""
    cap = capture()
    pod = lab.add_pod(key, node, labels, ip=ip, publish=False)
    pods.append(key)
    sender = lab.first_answer_sender(key, EXT, want, 20)  # its first packet is out
    time.sleep(delay)
    if before_publish:
        before_publish()
    lab.publish_pod(key)
    out, err = sender.communicate(timeout=30)
    assert out.split()[-1] == "done", f"{key} never got an answer naming {want}: {out} {err}"
    return cap.sources(), pod.ip


def test_a_gateway_has_a_port_and_bfd_only_to_the_nodes_that_send_to_it(lab, pods):
    """Issue 15: no selected pod on bravo or charlie (the module's first
    test): the gateway has no port to them and sends them no BFD.  A
    selected pod on charlie: charlie makes its port to alpha, alpha hears
    charlie's BFD on gnv-flow and makes the port back, the session comes up
    at both ends and the pod leaves with the EIP; bravo still has none."""
    assert lab.tunnel_ports("alpha") == {} and lab.tunnel_ports("charlie") == {}, \
        "the module's labs start without a selected pod on a worker"
    pods.append("shop/cart-t")
    lab.add_pod("shop/cart-t", "charlie", {"app": "cart"})
    wait_for(lambda: lab.udp_source("shop/cart-t", EXT) == EIP, "cart-t out with its EIP", timeout=30)
    wait_for(lambda: lab.tunnel_ports("alpha") == {NODE_IPS["charlie"]: True}
             and lab.tunnel_ports("charlie") == {NODE_IPS["alpha"]: True}, "one session, both ends up")
    assert "BFD from charlie (192.0.2.13), which has no port here" in lab.agent_log("alpha")
    assert lab.tunnel_ports("bravo") == {}


def test_a_new_selected_pods_first_packet_leaves_with_the_eip(lab, capture, pods):
    seen, _ = first_packets(lab, capture, pods, "shop/cart-new", "charlie", {"app": "cart"}, EIP)
    assert EIP in seen
    # Not one packet with a node address, from the very first one on.
    assert not set(seen) & set(NODE_IPS.values()), sorted(set(seen))
    assert set(seen) == {EIP}


def test_a_new_unselected_pod_leaves_the_cnis_way_once_classified(lab, capture, pods):
    seen, _ = first_packets(lab, capture, pods, "shop/web-new", "charlie", {"app": "web"}, NODE_IPS["charlie"])
    assert set(seen) == {NODE_IPS["charlie"]}  # never the EIP


def test_a_rescheduled_pod_keeps_its_eip_and_its_old_node_keeps_nothing_of_it(lab, pods):
    pods.append("shop/cart-s")
    old = lab.add_pod("shop/cart-s", "bravo", {"app": "cart"})
    wait_for(lambda: lab.udp_source("shop/cart-s", EXT) == EIP, "cart-s on bravo out with its EIP")
    assert any(f"from {old.ip} " in r for r in node_rules(lab, "bravo"))
    new = lab.move_pod("shop/cart-s", "charlie")
    assert new.ip != old.ip and new.node == "charlie"
    wait_for(lambda: lab.udp_source("shop/cart-s", EXT) == EIP, "cart-s on charlie out with its EIP")
    # The old node: no rule, no flow of the old address.
    wait_for(lambda: not [r for r in node_rules(lab, "bravo") if old.ip in r]
             and not [f for f in steer_flows(lab, "bravo") if f"nw_src={old.ip}," in f],
             "bravo forgets the old address")
    assert [r.split(":", 1)[1].split() for r in node_rules(lab, "charlie") if f"from {new.ip} " in r] == [
        ["from", new.ip, "to", "198.51.100.0/24", "iif", f"cali{new.index}", "lookup", "7100"],
        ["from", new.ip, "iif", f"cali{new.index}", "lookup", "main"]]
    st = {p["namespace"] + "/" + p["name"]: p for p in lab.status()["pods"]}
    assert (st["shop/cart-s"]["node"], st["shop/cart-s"]["ip"]) == ("charlie", new.ip)


def test_an_address_reused_by_an_unselected_pod_of_another_namespace_is_never_steered(lab, capture, pods):
    pods.append("shop/cart-r")
    old = lab.add_pod("shop/cart-r", "bravo", {"app": "cart"})
    wait_for(lambda: lab.udp_source("shop/cart-r", EXT) == EIP, "cart-r out with its EIP")
    # Its network goes, its address is given at once to another namespace's
    # pod, which sends from its first moment, while the old pod's object is
    # still there (terminating): the agent still steers the address.  Labels
    # app=cart, but policy shop/cart is not its namespace's.
    lab.delete_pod("shop/cart-r", object_too=False)
    seen, ip = first_packets(lab, capture, pods, "other/reuse", "bravo", {"app": "cart"}, NODE_IPS["bravo"],
                             ip=old.ip, delay=0.5, before_publish=lambda: lab.delete_pod_object("shop/cart-r"))
    assert ip == old.ip
    assert EIP not in seen, "the new pod's packets left with the old pod's EIP"
    assert set(seen) == {NODE_IPS["bravo"]}


CHURN_PODS = int(os.environ.get("SDN_EGRESS_CHURN_PODS", "200"))  # the figure; ~20 s


def test_churn_leaves_no_stale_rule_route_or_flow(lab):
    """CHURN_PODS pods, selected (shop, app=cart) and not, created and
    deleted across the nodes, a few alive at any time, addresses reused as
    they come free; afterwards every node holds rules, routes and flows of
    its live pods only, and each live pod's source is right."""
    rng = random.Random(13)
    live: dict[str, str] = {}  # pod -> the source the external host must see
    made = 0
    started = time.monotonic()
    try:
        while made < CHURN_PODS:
            if len(live) >= 6 or (live and rng.random() < 0.4):
                gone = rng.choice(sorted(live))
                del live[gone]
                lab.delete_pod(gone)
                continue
            node, app = NODES[made % 3], rng.choice(["cart", "web"])
            key = f"shop/churn-{made}" if rng.random() < 0.7 else f"churn/p-{made}"
            lab.add_pod(key, node, {"app": app})
            live[key] = EIP if key.startswith("shop/") and app == "cart" else NODE_IPS[node]
            made += 1
        churn_time = time.monotonic() - started
        pods_now = {p.key: p for p in lab.pods()}

        def stale() -> dict:
            out = {}
            for node in NODES:
                ips = {p.ip for p in pods_now.values() if p.node == node}
                rules = [r for r in lab.exec(node, ["ip", "rule"]).stdout.splitlines()
                         if r.split(":")[0] in ("7100", "7200") and r.split()[2] not in ips]
                routes = [r for r in lab.exec(node, ["ip", "route"]).stdout.splitlines()
                          if r.startswith("203.0.113.") and "/" not in r.split()[0] and r.split()[0] not in ips]
                flows_ = [f for f in steer_flows(lab, node) if not any(f"nw_src={ip}," in f for ip in ips)]
                if rules or routes or flows_:
                    out[node] = rules + routes + flows_
            return out
        wait_for(lambda: not stale(), "no stale rule, route or flow after the churn")
        for key, want in sorted(live.items()):
            assert wait_for(lambda: lab.udp_source(key, EXT), f"{key} answered") == want, key
        assert churn_time < 60, f"churn of {CHURN_PODS} pods took {churn_time:.0f} s"
    finally:
        for key in live:
            lab.delete_pod(key)
