"""``flows.build``: the flow set is a function of the view, and a bad view is
refused with the object and field named."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest

import flows
from fakeswitch import FakeBridge, ip_packet
from flows import cookie as C
from flows import fields as F
from flows.records import Drop, Normal
from flows.view import EipRoute, HeldEip, ReturnRoute, Steer


def shuffled(view, seed):
    rnd = random.Random(seed)
    fields = {}
    for name in ("steers", "eip_routes", "held", "return_routes", "pod_cidrs"):
        items = list(getattr(view, name))
        rnd.shuffle(items)
        fields[name] = tuple(items)
    tunnels = list(view.ports.tunnels)
    rnd.shuffle(tunnels)
    return replace(view, ports=replace(view.ports, tunnels=tuple(tunnels)), **fields)


def test_same_view_same_flows(lab):
    assert flows.build(lab.rich_view()) == flows.build(lab.rich_view())


def test_order_of_view_entries_does_not_matter(lab):
    want = flows.build(lab.rich_view())
    for seed in range(5):
        assert flows.build(shuffled(lab.rich_view(), seed)) == want


def test_every_flow_carries_the_current_generation_and_a_feature(lab):
    for fs in flows.build(lab.rich_view()).values():
        for f in fs:
            ck = C.decode(f.cookie)
            assert ck.generation == C.GENERATION
            assert isinstance(ck.feature, C.Feature)


def test_a_worker_holds_no_gateway_flows(lab):
    got = flows.build(lab.view_n1())
    tables_used = {f.table for f in got["br-int"] if f.priority > 0}
    assert tables_used == {"classify", "eip_out", "to_host"}
    assert {f.priority for f in got["br-ex"]} == {0, 100}  # NORMAL, patch -> uplink


def test_the_gateway_flows_grow_per_eip_and_per_node(lab):
    n = len(flows.build(lab.view_n0())["br-int"])
    extra = lab.view_n0(held=lab.view_n0().held + (HeldEip(lab.IP("192.0.2.210"), 40, lab.ROUTER_MAC),))
    # one more EIP: classify (its key, whatever the tunnel ports), snat, snat_out, from_uplink
    assert len(flows.build(extra)["br-int"]) == n + 4
    node = ReturnRoute("n3", lab.IP("192.0.2.14"), lab.NET("203.0.113.96/27"))
    extra = lab.view_n0(return_routes=lab.return_routes("n0") + (node,))
    # one more node: one reply route for its pod CIDR (the reply states are checked once)
    assert len(flows.build(extra)["br-int"]) == n + 1


def test_the_gateway_flows_are_eips_plus_nodes_not_their_product(lab):
    """1,000 tunnel ports and 200 held EIPs: the EIP flows do not multiply by
    the ports (the scale issue measured 1.2 M flows at 5,000 nodes)."""
    def gateway(eips: int, peers: int):
        ports = replace(lab.PORTS["n0"], tunnels=tuple((f"w{i}", 10 + i) for i in range(peers)))
        held = tuple(HeldEip(lab.IP(f"192.0.2.{1 + i}") if i < 250 else lab.IP(f"198.51.100.{i - 249}"),
                             100 + i, lab.ROUTER_MAC) for i in range(eips))
        return len(flows.build(lab.view_n0(ports=ports, held=held, steers=(), eip_routes=()))["br-int"])

    base = gateway(1, 1)
    assert gateway(201, 1) - base == 200 * 4  # 4 flows per EIP
    # a port to a node that is no gateway of this node's pods brings no reply flow
    assert gateway(1, 1001) - base == 0
    assert gateway(201, 1001) - base == 200 * 4


def test_a_gateway_within_two_flows_per_eip_and_node(lab):
    """The issue 15 bound, with a tunnel port and a return route for every
    node: a held EIP costs 6 flows on both bridges (classify, snat, snat_out,
    from_uplink; ARP, uplink), a node 1 (its pod CIDR's reply route), so even
    a gateway that held every EIP of the L cluster (250 EIPs, 5,000 nodes)
    stays under 2 x (EIPs + nodes) + a constant."""
    def gateway(eips: int, nodes: int) -> int:
        ports = replace(lab.PORTS["n0"], tunnels=tuple((f"w{i}", 10 + i) for i in range(nodes)))
        held = tuple(HeldEip(lab.IP(f"192.0.2.{1 + i}"), 100 + i, lab.ROUTER_MAC) for i in range(eips))
        routes = tuple(ReturnRoute(f"w{i}", lab.IP(f"198.51.100.{1 + i % 250}"),
                                   lab.NET(f"2001:db8:100:{i:x}::/64")) for i in range(nodes))
        view = lab.view_n0(ports=ports, held=held, return_routes=routes, steers=(), eip_routes=())
        return sum(len(fs) for fs in flows.build(view).values())

    base = gateway(1, 1)
    assert gateway(11, 1) - base == 10 * 6
    assert gateway(1, 1001) - base == 1000
    constant = base - 2 * (1 + 1)
    assert gateway(250, 5000) <= 2 * (250 + 5000) + constant


def test_replies_are_taken_only_from_the_gateways_of_this_nodes_routes(lab):
    """A worker or gateway node takes tun_id=0 replies on the ports of the
    gateways its own pods' EIPs use (and on gnv-flow), not on every port."""
    view = lab.view_n1()
    gateways = {g for r in view.eip_routes for g in r.gateways} - {view.node}
    assert gateways
    ports = replace(view.ports, tunnels=view.ports.tunnels + tuple((f"w{i}", 500 + i) for i in range(50)))
    got = flows.build(replace(view, ports=ports))["br-int"]
    reply_in = {f.match_dict()["in_port"][0] for f in got
                if f.table == "classify" and f.match_dict().get("tunnel_id", (None,))[0] == F.TUNNEL_KEY_REPLY}
    assert reply_in == {p for peer, p in view.ports.tunnels if peer in gateways} | {view.ports.tun_flow}


def test_without_uplink_br_ex_only_switches_normally(lab):
    view = lab.view_n0(ports=replace(lab.PORTS["n0"], uplink=0, ex_patch=0))
    got = flows.build(view)
    assert [(f.priority, f.actions) for f in got["br-ex"]] == [(0, (Normal(),))]


def test_without_patch_eip_traffic_is_dropped_not_normal(lab):
    view = lab.view_n0(ports=replace(lab.PORTS["n0"], ex_patch=0))
    br = FakeBridge("br-ex")
    br.apply(flows.build(view)["br-ex"])
    pkt = ip_packet(lab.PORTS["n0"].uplink, lab.EXTERNAL, lab.EIP)
    assert br.process(pkt) == []
    assert br.lookup("classify", pkt).actions == (Drop(),)


def test_snat_out_without_patch_drops(lab):
    view = lab.view_n0(ports=replace(lab.PORTS["n0"], int_patch=0))
    got = {f.table: f for f in flows.build(view)["br-int"] if f.priority > 0}
    assert got["snat_out"].actions == (Drop(),)
    assert "from_uplink" not in got


def test_reply_route_lets_no_new_connection_through(lab):
    br = FakeBridge("br-int")
    br.apply(flows.build(lab.view_n0())["br-int"])
    pkt = ip_packet(lab.PORTS["n0"].int_patch, lab.EXTERNAL, lab.POD_A)
    for state, passes in ((F.CT_TRK | F.CT_NEW, False), (F.CT_TRK | F.CT_EST | F.CT_RPL, True),
                          (F.CT_TRK | F.CT_REL | F.CT_RPL, True), (F.CT_TRK | F.CT_INV, False),
                          (F.CT_EST, False)):
        flow = br.lookup("reply_route", {**pkt, "ct_state": state})
        assert (flow.actions != (Drop(),)) == passes, hex(state)


def test_no_arp_answers_for_ipv6_eips(lab):
    got = flows.build(lab.rich_view())["br-ex"]
    arp = [f for f in got if C.decode(f.cookie).feature == C.Feature.ARP]
    assert sorted(f.match_dict()["arp_tpa"][0] for f in arp) == ["192.0.2.200", "192.0.2.202"]


def test_steer_priority_grows_with_prefix_length(lab):
    view = lab.view_n1(steers=(
        Steer("default/a", lab.POD_A, lab.NET("198.51.100.0/24"), "default/web", lab.EIP),
        Steer("default/a", lab.POD_A, lab.NET("198.51.100.128/25"), "default/dark", lab.DARK_EIP)))
    br = FakeBridge("br-int")
    br.apply(flows.build(view)["br-int"])
    pkt = ip_packet(lab.PORTS["n1"].egw, lab.POD_A, "198.51.100.200")
    assert br.lookup("classify", pkt).actions[0].value == lab.DARK_KEY
    pkt = ip_packet(lab.PORTS["n1"].egw, lab.POD_A, "198.51.100.20")
    assert br.lookup("classify", pkt).actions[0].value == lab.EIP_KEY


# -- refused views -----------------------------------------------------------------------

@pytest.mark.parametrize("change,message", [
    (lambda lab: dict(eip_routes=(replace(lab.web_route("n1"), tunnel_key=0),)),
     r"EipRoute 192.0.2.200: tunnel_key: 0 outside 1..16777215"),
    (lambda lab: dict(eip_routes=(replace(lab.web_route("n1"), tunnel_key=2**24),)),
     r"EipRoute 192.0.2.200: tunnel_key"),
    (lambda lab: dict(egw_mac="zz"), r"NodeView n1: egw_mac: 'zz' is not a MAC address"),
    (lambda lab: dict(ports=replace(lab.PORTS["n1"], egw=0)), r"NodeView n1: ports.egw: missing"),
    (lambda lab: dict(eip_routes=(lab.web_route("n1"),)),
     r"Steer default/b -> 198.51.100.0/24 \(policy default/dark\): eip: 192.0.2.201 has no EipRoute"),
    (lambda lab: dict(steers=(Steer("default/a", lab.POD_A, lab.NET("2001:db8::/32"), "default/web",
                                    lab.EIP),)),
     r"Steer default/a -> 2001:db8::/32 .*not all of one IP family"),
    (lambda lab: dict(eip_routes=(replace(lab.web_route("n1"), local=True, gateways=("n0",)),
                                  EipRoute(lab.DARK_EIP, lab.DARK_KEY, ()))),
     r"EipRoute 192.0.2.200: local: True, but this node 'n1' is not among its gateways \['n0'\]"),
    (lambda lab: dict(eip_routes=(lab.web_route("n1"), EipRoute(lab.DARK_EIP, lab.EIP_KEY, ()))),
     r"EipRoute 192.0.2.201: tunnel_key: 7 is already the key of EIP 192.0.2.200"),
    (lambda lab: dict(held=(HeldEip(lab.EIP, 8, None),)),
     r"HeldEip 192.0.2.200: tunnel_key: 8, but EIP 192.0.2.200 has key 7 elsewhere"),
    (lambda lab: dict(held=(HeldEip(lab.EIP, 7, "nope"),)),
     r"HeldEip 192.0.2.200: next_hop_mac: 'nope' is not a MAC address"),
    (lambda lab: dict(return_routes=(ReturnRoute("n0", lab.NODE_IP["n0"], lab.POD_CIDR["n0"],
                                                 local=True),)),
     r"ReturnRoute n0 203.0.113.0/27: local: True, but this node is 'n1'"),
    (lambda lab: dict(pod_cidrs=("203.0.113.32/27",)), r"NodeView n1: pod_cidrs: .* not a netaddr"),
])
def test_malformed_views_are_refused_naming_object_and_field(lab, change, message):
    with pytest.raises(flows.ViewError, match=message):
        flows.build(lab.view_n1(**change(lab)))


def test_two_objects_wanting_one_match_with_different_actions_are_refused(lab):
    # two pods sharing an IP (one terminating, one starting) steered to different EIPs
    view = lab.view_n1(steers=(
        Steer("default/a", lab.POD_A, lab.DEST, "default/web", lab.EIP),
        Steer("default/a2", lab.POD_A, lab.DEST, "default/dark", lab.DARK_EIP)))
    with pytest.raises(flows.ViewError, match="two objects of the view want br-int/classify"):
        flows.build(view)


def test_same_match_same_actions_is_one_flow(lab):
    steer = Steer("default/a", lab.POD_A, lab.DEST, "default/web", lab.EIP)
    once = flows.build(lab.view_n1(steers=(steer,)))
    twice = flows.build(lab.view_n1(steers=(steer, steer)))
    assert once == twice
