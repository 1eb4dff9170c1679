"""The lab topology's ``ipFamilies`` (issue 12): Kubernetes' spelling, checked
strictly, and the address plan of each family (documentation ranges only)."""
from __future__ import annotations

import ipaddress

import pytest

from sdn_egress.lab import topology as t
from sdn_egress.lab.topology import TopologyError, parse

NODES = [{"name": "alpha"}, {"name": "bravo"}]
PODS = [{"name": "a-0", "namespace": "ns", "node": "alpha"}, {"name": "b-0", "namespace": "ns", "node": "bravo"},
        {"name": "b-1", "namespace": "ns", "node": "bravo"}]


ABSENT = object()


def topo(families=ABSENT):
    doc = {"nodes": NODES, "pods": PODS, "externals": [{"name": "ext-1"}, {"name": "ext-2", "mtu": 1400}]}
    if families is not ABSENT:
        doc["ipFamilies"] = families
    return parse(doc)


def test_without_ip_families_a_topology_is_ipv4_as_before():
    x = topo()
    assert x.families == ("IPv4",) and not x.dual_stack
    assert [(n.ip, n.pod_cidr, n.ips) for n in x.nodes] == [
        ("192.0.2.11", "203.0.113.0/27", ("192.0.2.11",)), ("192.0.2.12", "203.0.113.32/27", ("192.0.2.12",))]
    assert [p.addresses for p in x.pods] == [("203.0.113.2",), ("203.0.113.34",), ("203.0.113.35",)]
    assert x.externals[0].ips == ("198.51.100.10",)


def test_dual_stack_gives_every_host_both_families_ipv4_first():
    x = topo(["IPv4", "IPv6"])
    assert x.dual_stack
    bravo = x.node("bravo")
    assert bravo.ips == ("192.0.2.12", "2001:db8::12") and bravo.ip == "192.0.2.12"
    assert bravo.pod_cidrs == ("203.0.113.32/27", "2001:db8:113:1::/64")
    assert [p.addresses for p in x.pods] == [("203.0.113.2", "2001:db8:113::2"),
                                             ("203.0.113.34", "2001:db8:113:1::2"),
                                             ("203.0.113.35", "2001:db8:113:1::3")]
    assert x.pods[1].ip_of("IPv6") == "2001:db8:113:1::2" and x.pods[1].ip_of("IPv4") == "203.0.113.34"
    assert [e.ips for e in x.externals] == [("198.51.100.10", "2001:db8:100::10"),
                                            ("198.51.100.11", "2001:db8:100::11")]


def test_ipv6_only_has_no_ipv4_anywhere():
    x = topo(["IPv6"])
    assert x.node("alpha").ips == ("2001:db8::11",) and x.node("alpha").ip_of("IPv4") is None
    assert [p.addresses for p in x.pods] == [("2001:db8:113::2",), ("2001:db8:113:1::2",), ("2001:db8:113:1::3",)]
    assert x.externals[1].ip == "2001:db8:100::11"


def test_every_address_is_canonical_and_in_its_documented_range():
    x = topo(["IPv4", "IPv6"])
    for n in x.nodes:
        for ip, net in zip(n.ips, (t.UNDERLAY, t.UNDERLAY6), strict=True):
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(net)
        for cidr, net in zip(n.pod_cidrs, (t.CLUSTER_POD_CIDR, t.CLUSTER_POD_CIDR6), strict=True):
            assert ipaddress.ip_network(cidr).subnet_of(ipaddress.ip_network(net)) and str(
                ipaddress.ip_network(cidr)) == cidr
    for p in x.pods:
        node = x.node(p.node)
        for ip, cidr in zip(p.addresses, node.pod_cidrs, strict=True):
            assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidr) and str(ipaddress.ip_address(ip)) == ip
    lo, hi = (ipaddress.ip_address(a) for a in t.EIP_RANGE6.split("-"))
    assert lo in ipaddress.ip_network(t.UNDERLAY6) and hi in ipaddress.ip_network(t.UNDERLAY6)
    for net in (t.UNDERLAY6, t.EXTERNAL_LAN6, t.CLUSTER_POD_CIDR6):
        assert ipaddress.ip_network(net).subnet_of(ipaddress.ip_network("2001:db8::/32"))


@pytest.mark.parametrize("value, message", [
    ("IPv4", "ipFamilies: must be a list of one or two of IPv4, IPv6"),
    ([], "ipFamilies: must be a list of one or two"),
    (None, "ipFamilies: must be a list"),
    (["ipv6"], "ipFamilies[0]: 'ipv6' is not IPv4 or IPv6 (spelled IPv6)"),
    (["IPv4", "Ipv6"], "ipFamilies[1]: 'Ipv6' is not IPv4 or IPv6 (spelled IPv6)"),
    ([6], "ipFamilies[0]: 6 is not IPv4 or IPv6"),
    (["IPv4", "IPv4"], "ipFamilies[1]: IPv4 is listed twice"),
    (["IPv6", "IPv4"], "the lab's dual stack is IPv4-primary"),
    (["IPv4", "IPv6", "IPv4"], "ipFamilies: at most two families"),
])
def test_bad_ip_families_name_the_field(value, message):
    with pytest.raises(TopologyError) as err:
        topo(value)
    assert message in str(err.value)


def test_an_external_link_narrower_than_ipv6s_minimum_is_refused_in_an_ipv6_lab():
    doc = {"nodes": NODES, "externals": [{"name": "x", "mtu": 1000}]}
    assert parse(doc).externals[0].mtu == 1000  # IPv4 only: fine
    with pytest.raises(TopologyError, match=r"externals\[0\].mtu: 1000 is below IPv6's minimum link MTU 1280"):
        parse({**doc, "ipFamilies": ["IPv4", "IPv6"]})


def test_the_bundled_default_topology_is_dual_stack():
    assert t.load(t.default_topology_path()).families == ("IPv4", "IPv6")


def test_an_ipv6_only_lab_in_kubernetes_mode_is_refused_before_anything_is_made(tmp_path):
    import yaml

    from sdn_egress.lab import Lab, LabError

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"ipFamilies": ["IPv6"], "nodes": NODES}))
    lab = Lab(str(tmp_path / "state"), prefix="x")
    with pytest.raises(LabError, match=r"lab up --kube: the API server listens on the router's IPv4 underlay"):
        lab.up(str(path), kube=True)
    assert not (tmp_path / "state").exists()


def paper_lab(tmp_path, families):
    """A lab's state file alone (no namespaces): the bookkeeping of addresses."""
    import json

    from sdn_egress.lab import Lab

    topo = {"ipFamilies": families, "nodes": NODES, "pods": [{"name": "a-0", "namespace": "ns1", "node": "bravo"}]}
    pod = parse(topo).pods[0]
    lab = Lab(str(tmp_path))
    lab._state = {"prefix": "x", "topology": topo, "pids": {}, "namespaces": [], "kube": False,
                  "pods": [{"namespace": "ns1", "name": "a-0", "node": "bravo", "index": 0, "ip": pod.ip,
                            "ips": list(pod.addresses), "labels": {}}], "next_pod_index": 1}
    (tmp_path / "lab.json").write_text(json.dumps(lab._state))
    return lab


def test_a_new_pod_in_a_dual_stack_lab_gets_both_families_at_the_same_offset(tmp_path):
    from sdn_egress.lab import LabError

    lab = paper_lab(tmp_path, ["IPv4", "IPv6"])
    bravo = lab.topology().node("bravo")
    ip = lab._pod_address("pod s/p", bravo, None)
    assert ip == "203.0.113.35"
    assert lab._pod_addresses(bravo, ip) == ("203.0.113.35", "2001:db8:113:1::3")
    assert lab._pod_addresses(bravo, "203.0.113.62") == ("203.0.113.62", "2001:db8:113:1::1e")
    assert [p.addresses for p in lab.pods()] == [("203.0.113.34", "2001:db8:113:1::2")]
    assert lab.address("ns1/a-0", "IPv6") == "2001:db8:113:1::2" and lab.address("bravo", "IPv6") == "2001:db8::12"
    with pytest.raises(LabError, match="--ip: '2001:db8:113:1::5' is not an IPv4 address"):
        lab._pod_address("pod s/p", bravo, "2001:db8:113:1::5")


def test_a_new_pod_in_an_ipv6_lab_takes_the_lowest_free_ipv6_address(tmp_path):
    from sdn_egress.lab import LabError

    lab = paper_lab(tmp_path, ["IPv6"])
    bravo = lab.topology().node("bravo")
    assert lab._pod_address("pod s/p", bravo, None) == "2001:db8:113:1::3"
    assert lab._pod_address("pod s/p", bravo, "2001:db8:113:1::1e") == "2001:db8:113:1::1e"
    with pytest.raises(LabError, match=r"--ip: 2001:db8:113:1::2 is pod ns1/a-0's address"):
        lab._pod_address("pod s/p", bravo, "2001:db8:113:1::2")
    with pytest.raises(LabError, match=r"--ip: 2001:db8:113:1::1f is not a pod address of node bravo "
                                       r"\(2001:db8:113:1::2-2001:db8:113:1::1e of 2001:db8:113:1::/64\)"):
        lab._pod_address("pod s/p", bravo, "2001:db8:113:1::1f")
    with pytest.raises(LabError, match="this lab has no IPv4"):
        lab.address("bravo", "IPv4")
