"""Pods come and go: the host rules that steer, release and hold a node's pod
addresses, and the lab's bookkeeping of pods it adds, deletes and moves."""
from __future__ import annotations

import json

import netaddr
import pytest

from flows.view import Steer
from sdn_egress.agent.routing import (ANY, EXEMPT_PRIORITY, HOLD_PRIORITY, MAIN_TABLE, RELEASE_PRIORITY,
                                      STEER_PRIORITY, STEER_TABLE, Hold, HostRouting, Rule, desired_rules,
                                      hold_rules)
from sdn_egress.lab.lab import Lab, LabError
from sdn_egress.lab.pods import _check_labels, _split_key, parse_labels

N = netaddr.IPNetwork
POD_CIDR = N("203.0.113.32/27")
HOLD = Hold(pod_cidrs=(POD_CIDR,), exempt=(N("203.0.113.0/24"), N("192.0.2.0/24")), bound=5.0)


def steer(ip: str, dest: str = "198.51.100.0/24", pod: str = "shop/cart-0") -> Steer:
    return Steer(pod=pod, pod_ip=netaddr.IPAddress(ip), dest=N(dest), policy="shop/cart",
                 eip=netaddr.IPAddress("192.0.2.205"))


def test_steering_rules_are_bound_to_the_pods_interface():
    rules = desired_rules((steer("203.0.113.34"),), {"203.0.113.34": "cali7"})
    assert {str(r) for r in rules} == {"7100: from 203.0.113.34/32 to 198.51.100.0/24 iif cali7 lookup 7100"}
    # A pod whose route is gone (its network deleted, its object not yet) is
    # not steered: the next pod that gets the address has another interface.
    assert desired_rules((steer("203.0.113.34"), steer("203.0.113.35", pod="shop/cart-1")),
                         {"203.0.113.35": "cali9"}) == {
        Rule(STEER_PRIORITY, N("203.0.113.35/32"), N("198.51.100.0/24"), "cali9", STEER_TABLE)}
    # No per-pod routes at all (a bridge CNI): the address alone, as before.
    assert desired_rules((steer("203.0.113.34"),), {}) == {
        Rule(STEER_PRIORITY, N("203.0.113.34/32"), N("198.51.100.0/24"), "", STEER_TABLE)}


def test_the_hold_releases_classified_pods_exempts_the_cluster_and_drops_the_rest():
    rules = hold_rules(HOLD, {"203.0.113.34": "cali7"})
    assert {str(r) for r in rules} == {
        "7200: from 203.0.113.34/32 iif cali7 lookup main",
        "7210: from 203.0.113.32/27 to 203.0.113.0/24 lookup main",
        "7210: from 203.0.113.32/27 to 192.0.2.0/24 lookup main",
        "7220: from 203.0.113.32/27 blackhole",
    }
    # Added in priority order (the hold last), removed in reverse (the hold first).
    assert [r.priority for r in sorted(rules)] == [RELEASE_PRIORITY, EXEMPT_PRIORITY, EXEMPT_PRIORITY,
                                                   HOLD_PRIORITY]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_an_unclassified_address_is_held_until_classified_or_for_at_most_the_bound():
    clock = Clock()
    r = HostRouting(clock=clock)
    routes = {"203.0.113.34": "cali7", "203.0.113.35": "cali8"}
    a = {"shop/a": "203.0.113.34"}
    # .34 is classified; .35's route has just appeared: held.
    assert r._released(HOLD, routes, a) == {("203.0.113.34", "cali7")}
    assert r.hold_state == {"held": ["203.0.113.35"], "released_unclassified": []}
    clock.now += 4.9
    assert ("203.0.113.35", "cali8") not in r._released(HOLD, routes, a)
    clock.now += 0.2  # past the bound: released, unclassified
    assert r._released(HOLD, routes, a) == set(routes.items())
    assert r.hold_state["released_unclassified"] == ["203.0.113.35"]
    # The address goes (its route), then comes back on another interface: a
    # new pod, held again from the start.
    r._released(HOLD, {"203.0.113.34": "cali7"}, a)
    assert r._released(HOLD, {"203.0.113.34": "cali7", "203.0.113.35": "cali9"}, a) == {("203.0.113.34", "cali7")}


def test_an_address_on_a_new_interface_is_another_pod_until_the_bound():
    """The old pod's object is still there (terminating), its network gone;
    its address is a new pod's on another interface: not steered with the
    old pod's policy, not released either (held), until the route is as old
    as the bound (then taken as the pod's own: recreated under its name)."""
    clock = Clock()
    r = HostRouting(clock=clock)
    steers = (steer("203.0.113.34"),)  # shop/cart-0's
    pods = {"shop/cart-0": "203.0.113.34"}
    bound = r.bind({"203.0.113.34": "cali7"}, pods, 5.0)
    assert desired_rules(steers, {"203.0.113.34": "cali7"}, bound) == {
        Rule(STEER_PRIORITY, N("203.0.113.34/32"), N("198.51.100.0/24"), "cali7", STEER_TABLE)}
    new = {"203.0.113.34": "cali9"}  # cali7 is gone, the address is on cali9
    clock.now += 1
    bound = r.bind(new, pods, 5.0)
    assert bound == {} and desired_rules(steers, new, bound) == set()
    assert r._released(HOLD, new, pods, bound) == set()  # held
    clock.now += 5
    bound = r.bind(new, pods, 5.0)
    assert bound == {"shop/cart-0": "cali9"}
    assert {str(x) for x in desired_rules(steers, new, bound)} == {
        "7100: from 203.0.113.34/32 to 198.51.100.0/24 iif cali9 lookup 7100"}
    # Two objects name one address (the old one lingering, the new one
    # there): each keeps its own binding, the old one's rules name its gone interface.
    r2 = HostRouting(clock=Clock())
    r2.bind({"203.0.113.34": "cali7"}, pods, 5.0)
    both = {"shop/cart-0": "203.0.113.34", "other/reuse": "203.0.113.34"}
    assert r2.bind(new, both, 5.0) == {"other/reuse": "cali9"}
    assert desired_rules(steers, new, r2.bind(new, both, 5.0)) == set()


def test_a_classified_address_without_per_pod_routes_is_released_by_address():
    r = HostRouting(clock=Clock())
    assert r._released(HOLD, {}, {"other/x": "203.0.113.34", "x/y": "198.51.100.5"}) == {("203.0.113.34", "")}


def test_lab_pod_names_labels_and_errors():
    assert _split_key("shop/cart-0") == ("shop", "cart-0")
    with pytest.raises(LabError, match="give it as NAMESPACE/NAME"):
        _split_key("cart-0")
    with pytest.raises(LabError, match="name 'Cart_0' is not a lower-case DNS label"):
        _split_key("shop/Cart_0")
    assert parse_labels("app=cart,tier=web") == {"app": "cart", "tier": "web"}
    with pytest.raises(LabError, match="--labels: 'app': use KEY=VALUE"):
        parse_labels("app")
    with pytest.raises(LabError, match=r"pod shop/x: labels.app: 'a b' is not a label value"):
        _check_labels("pod shop/x", {"app": "a b"})


@pytest.fixture
def paper_lab(tmp_path):
    """A lab's state file alone (no namespaces): the bookkeeping of addresses."""
    topo = {"nodes": [{"name": "alpha"}, {"name": "bravo"}],
            "pods": [{"name": "a-0", "namespace": "ns1", "node": "bravo"}], "externals": []}
    lab = Lab(str(tmp_path))
    lab._state = {"prefix": "x", "topology": topo, "pids": {}, "namespaces": [], "kube": False,
                  "pods": [{"namespace": "ns1", "name": "a-0", "node": "bravo", "index": 0,
                            "ip": "203.0.113.34", "labels": {}}], "next_pod_index": 1}
    (tmp_path / "lab.json").write_text(json.dumps(lab._state))
    return lab


def test_a_new_pods_address_is_the_lowest_free_one_of_its_node(paper_lab):
    bravo = paper_lab.topology().node("bravo")
    assert paper_lab._pod_address("pod s/p", bravo, None) == "203.0.113.35"
    assert paper_lab._pod_address("pod s/p", paper_lab.topology().node("alpha"), None) == "203.0.113.2"
    assert paper_lab._pod_address("pod s/p", bravo, "203.0.113.40") == "203.0.113.40"
    with pytest.raises(LabError, match=r"pod s/p: --ip: 203.0.113.34 is pod ns1/a-0's address"):
        paper_lab._pod_address("pod s/p", bravo, "203.0.113.34")
    with pytest.raises(LabError, match=r"--ip: 203.0.113.2 is not a pod address of node bravo "
                                       r"\(203.0.113.34-203.0.113.62 of 203.0.113.32/27\)"):
        paper_lab._pod_address("pod s/p", bravo, "203.0.113.2")
    with pytest.raises(LabError, match="--ip: 'nope' is not an IPv4 address"):
        paper_lab._pod_address("pod s/p", bravo, "nope")


def test_adding_a_pod_names_what_is_wrong(paper_lab):
    with pytest.raises(LabError, match="pod ns1/a-0: exists already"):
        paper_lab.add_pod("ns1/a-0", "alpha")
    with pytest.raises(LabError, match="pod ns1/b-0: --node: no node named 'zulu' \\(nodes: alpha, bravo\\)"):
        paper_lab.add_pod("ns1/b-0", "zulu")
    with pytest.raises(LabError, match="pod ns1/a-0: is on bravo already"):
        paper_lab.move_pod("ns1/a-0", "bravo")


def test_the_lab_pod_command_names_the_pod_and_the_flag(paper_lab, capsys):
    from sdn_egress.cli import main

    state = ["lab", "--state-dir", paper_lab.state_dir, "pod"]
    assert main(state + ["add", "ns1/b-0", "--node", "zulu"]) == 1
    assert "sdn-egress lab pod: pod ns1/b-0: --node: no node named 'zulu'" in capsys.readouterr().err
    assert main(state + ["add", "ns1/b-0", "--node", "bravo", "--labels", "app"]) == 1
    assert "--labels: 'app': use KEY=VALUE" in capsys.readouterr().err
    assert main(state + ["add", "ns1/b-0", "--node", "bravo", "--ip", "203.0.113.34"]) == 1
    assert "--ip: 203.0.113.34 is pod ns1/a-0's address" in capsys.readouterr().err
    assert main(state + ["move", "ns1/zz", "--node", "alpha"]) == 1
    assert "no pod 'ns1/zz' in the lab" in capsys.readouterr().err
    assert main(state + ["delete", "ns1/zz"]) == 1
    # Nothing was made by the refused commands.
    assert [p.key for p in paper_lab.pods()] == ["ns1/a-0"]


class Msg(dict):
    def __init__(self, fields: dict, attrs: dict):
        super().__init__(fields)
        self.attrs = attrs

    def get_attr(self, name):
        return self.attrs.get(name)


class FakeIpr:
    def get_links(self):
        return [Msg({"index": i}, {"IFLA_IFNAME": n}) for i, n in ((2, "eth0"), (7, "cali7"), (9, "cali9"))]

    def get_routes(self, family, table):
        return [Msg({"dst_len": 32}, {"RTA_DST": "203.0.113.34", "RTA_OIF": 7}),
                Msg({"dst_len": 32}, {"RTA_DST": "198.51.100.77", "RTA_OIF": 9}),  # outside the podCIDR
                Msg({"dst_len": 32}, {"RTA_DST": "203.0.113.40", "RTA_OIF": 2, "RTA_GATEWAY": "192.0.2.1"}),
                Msg({"dst_len": 27}, {"RTA_DST": "203.0.113.64", "RTA_OIF": 2}),
                Msg({"dst_len": 0}, {"RTA_OIF": 2, "RTA_GATEWAY": "192.0.2.1"})]


def test_a_pods_interface_is_that_of_its_own_route():
    from sdn_egress.agent.routing import pod_interfaces

    assert pod_interfaces(FakeIpr(), (POD_CIDR,)) == {"203.0.113.34": "cali7"}
    # An address outside the Node's podCIDR (a CNI's own IPAM) is found by its /32.
    assert pod_interfaces(FakeIpr(), (POD_CIDR, N("198.51.100.77/32"))) == {
        "203.0.113.34": "cali7", "198.51.100.77": "cali9"}
    assert pod_interfaces(FakeIpr(), ()) == {}
