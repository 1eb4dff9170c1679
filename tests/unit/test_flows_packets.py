"""Packets through the flows of the lab's three nodes (fake switches, real
flow sets from ``flows.build``): where they leave and with which headers."""
from __future__ import annotations

from dataclasses import replace

import netaddr

import flows
from fakeswitch import Fabric, FakeNode, arp_request, ip_packet, reply_to
from flows import cookie as C
from flows.records import Controller
from flows.view import GW_MAC, EipRoute, HeldEip, ReturnRoute, Steer

HOST_MAC = "02:00:00:00:01:aa"  # the node's host side sending into egw0


def from_pod(lab, node: str, pod_ip, dst=None, **kw) -> dict:
    """What the host hands to egw0 for a steered pod packet."""
    return ip_packet(lab.PORTS[node].egw, pod_ip, dst or lab.EXTERNAL, eth_src=lab.EGW_MAC[node],
                     eth_dst=GW_MAC, **kw)


def from_uplink(lab, node: str, pkt: dict, **kw) -> dict:
    """``pkt``'s reply as the router delivers it to ``node``'s uplink."""
    return reply_to(pkt, lab.PORTS[node].uplink, eth_src=lab.ROUTER_MAC, eth_dst=lab.BREX_MAC[node], **kw)


def only(exits):
    assert len(exits) == 1, exits
    return exits[0]


def nothing_leaves_the_uplink(exits):
    return not [e for e in exits if e.where in ("uplink", "NORMAL")]


# -- the worker ------------------------------------------------------------------

def test_selected_pod_leaves_worker_on_gateway_tunnel_with_eip_key(lab, fabric):
    fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A))
    out = only(fabric.hops("n1", "br-int"))
    assert out.port == lab.PORTS["n1"].tunnel("n0")
    assert out.packet["tunnel_id"] == lab.EIP_KEY
    assert out.packet["ipv4_src"] == str(lab.POD_A)  # not NATed on the worker


def test_pod_to_eip_and_back_across_the_fabric(lab, fabric):
    sent = from_pod(lab, "n1", lab.POD_A, sport=40001, dport=443)
    gone = only(fabric.send("n1", "br-int", sent))
    assert (gone.node, gone.where) == ("n0", "uplink")
    p = gone.packet
    assert p["ipv4_src"] == str(lab.EIP)
    assert p["ipv4_dst"] == str(lab.EXTERNAL)
    assert p["tcp_dst"] == 443
    assert p["eth_src"] == lab.BREX_MAC["n0"]
    assert p["eth_dst"] == lab.ROUTER_MAC
    # the gateway received it on gnv-flow (it has no port to n1) with the key
    assert gone.hops[1] == ("n0", "br-int", lab.PORTS["n0"].tun_flow)

    back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", p)))
    tunnelled = only(fabric.hops("n0", "br-int"))
    assert tunnelled.port == lab.PORTS["n0"].tun_flow
    assert tunnelled.packet["tun_ipv4_dst"] == str(lab.NODE_IP["n1"])
    assert tunnelled.packet["tunnel_id"] == 0
    assert tunnelled.packet["ipv4_dst"] == str(lab.POD_A)  # de-NATed on the gateway
    assert (back.node, back.where) == ("n1", "egw")
    assert back.packet["ipv4_src"] == str(lab.EXTERNAL)
    assert back.packet["ipv4_dst"] == str(lab.POD_A)
    assert back.packet["tcp_dst"] == 40001
    assert back.packet["eth_src"] == GW_MAC
    assert back.packet["eth_dst"] == lab.EGW_MAC["n1"]


def test_later_packets_of_the_connection_keep_their_translation(lab, fabric):
    first = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)))
    fabric.send("n0", "br-ex", from_uplink(lab, "n0", first.packet))
    again = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)))
    assert again.packet["ipv4_src"] == str(lab.EIP)
    assert again.packet["tcp_src"] == first.packet["tcp_src"]
    assert len(fabric.nodes["n0"].conntrack.conns) == 1


def test_selected_pod_on_the_gateway_is_snatted_without_a_tunnel(lab, fabric):
    gone = only(fabric.send("n0", "br-int", from_pod(lab, "n0", lab.POD_G)))
    assert (gone.node, gone.where) == ("n0", "uplink")
    assert gone.packet["ipv4_src"] == str(lab.EIP)
    assert "tunnel_id" not in gone.packet
    assert [h[0] for h in gone.hops] == ["n0", "n0"]  # br-int, br-ex: never left the node
    back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", gone.packet)))
    assert (back.node, back.where) == ("n0", "egw")
    assert back.packet["ipv4_dst"] == str(lab.POD_G)
    assert back.packet["eth_src"] == GW_MAC


def test_conntrack_entry_is_marked_with_the_eip_key(lab, fabric):
    fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A))
    (conn,) = fabric.nodes["n0"].conntrack.conns
    assert conn.mark == lab.EIP_KEY
    assert conn.zone == flows.fields.CT_ZONE_SNAT


def test_two_pods_same_source_port_get_distinct_translations(lab, fabric):
    a = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A, sport=5000)))
    g = only(fabric.send("n0", "br-int", from_pod(lab, "n0", lab.POD_G, sport=5000)))
    assert a.packet["ipv4_src"] == g.packet["ipv4_src"] == str(lab.EIP)
    assert a.packet["tcp_src"] != g.packet["tcp_src"]
    back_a = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", a.packet)))
    back_g = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", g.packet)))
    assert (back_a.node, back_a.packet["ipv4_dst"], back_a.packet["tcp_dst"]) == ("n1", str(lab.POD_A), 5000)
    assert (back_g.node, back_g.packet["ipv4_dst"], back_g.packet["tcp_dst"]) == ("n0", str(lab.POD_G), 5000)


def test_udp_and_icmp_are_snatted_and_returned(lab, fabric):
    for proto in (17, 1):
        gone = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A, proto=proto, sport=77)))
        assert gone.packet["ipv4_src"] == str(lab.EIP)
        back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", gone.packet)))
        assert (back.node, back.where, back.packet["ipv4_dst"]) == ("n1", "egw", str(lab.POD_A))


# -- never leak ------------------------------------------------------------------

def test_unselected_source_is_dropped(lab, fabric):
    other = lab.IP("203.0.113.40")  # a pod of n1 no policy selects
    exits = fabric.send("n1", "br-int", from_pod(lab, "n1", other))
    assert exits == [] and fabric.emitted == []
    flow = fabric.nodes["n1"].bridges["br-int"].lookup("classify", from_pod(lab, "n1", other))
    assert C.decode(flow.cookie).feature == C.Feature.UNSTEERED


def test_destination_outside_the_policy_is_dropped(lab, fabric):
    exits = fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A, dst="192.0.2.99"))
    assert exits == [] and fabric.emitted == []


def test_non_ip_from_egw_is_dropped(lab, fabric):
    pkt = arp_request(lab.PORTS["n1"].egw, lab.EGW_MAC["n1"], lab.POD_A, "169.254.0.1")
    assert fabric.send("n1", "br-int", pkt) == []


def test_no_live_gateway_drops_and_says_so(lab, fabric):
    pkt = from_pod(lab, "n1", lab.POD_B)
    assert fabric.send("n1", "br-int", pkt) == [] and fabric.emitted == []
    br = fabric.nodes["n1"].bridges["br-int"]
    flow = br.lookup("eip_out", {**pkt, "reg0": lab.DARK_KEY})
    assert C.decode(flow.cookie).feature == C.Feature.NO_GATEWAY


def test_all_gateways_gone_drops_steered_traffic(lab):
    views = lab.views()
    views["n1"] = lab.view_n1(eip_routes=(lab.web_route("n1", gateways=()),
                                          EipRoute(lab.DARK_EIP, lab.DARK_KEY, ())))
    fabric = lab.make_fabric(views)
    assert fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)) == []
    assert fabric.emitted == []


def test_gateway_without_tunnel_port_yet_drops(lab):
    views = lab.views()
    views["n1"] = lab.view_n1(ports=replace(lab.PORTS["n1"], tunnels=(("n2", 4),)))
    fabric = lab.make_fabric(views)
    assert fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)) == []


def test_unresolved_next_hop_drops_on_the_gateway(lab):
    views = lab.views()
    views["n0"] = lab.view_n0(next_hop_mac=None)
    fabric = lab.make_fabric(views)
    exits = fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A))
    assert exits == []
    assert [h.node for h in fabric.emitted] == ["n1"]  # it reached n0 by tunnel, and died there


def test_new_inbound_connection_to_the_eip_is_dropped(lab, fabric):
    pkt = ip_packet(lab.PORTS["n0"].uplink, lab.EXTERNAL, lab.EIP, sport=5555, dport=22,
                    eth_src=lab.ROUTER_MAC, eth_dst=lab.BREX_MAC["n0"])
    exits = fabric.send("n0", "br-ex", pkt)
    assert exits == []
    assert [h.bridge for h in fabric.emitted] == ["br-ex"]  # to br-int, then nothing
    assert fabric.nodes["n0"].conntrack.conns == []  # and nothing was committed


def test_inbound_spoofing_a_reply_tuple_of_another_eip_is_dropped(lab, fabric):
    gone = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)))
    forged = from_uplink(lab, "n0", gone.packet)
    forged["ipv4_src"] = "198.51.100.66"  # not the host the pod talked to
    assert fabric.send("n0", "br-ex", forged) == []


def test_packet_from_the_wrong_tunnel_key_is_dropped(lab, fabric):
    pkt = from_pod(lab, "n1", lab.POD_A)
    pkt.update(in_port=lab.PORTS["n0"].tun_flow, tunnel_id=4242, tun_ipv4_src=str(lab.NODE_IP["n1"]))
    assert fabric.send("n0", "br-int", pkt) == []


def test_worker_ignores_eip_keys_it_does_not_hold(lab, fabric):
    pkt = from_pod(lab, "n1", lab.POD_A)
    pkt.update(in_port=lab.PORTS["n1"].tun_flow, tunnel_id=lab.EIP_KEY)
    assert fabric.send("n1", "br-int", pkt) == []


# -- failover in the view ---------------------------------------------------------------

def test_traffic_follows_the_active_gateway(lab):
    views = lab.views()
    views["n1"] = lab.view_n1(eip_routes=(lab.web_route("n1", gateways=("n2", "n0")),
                                          EipRoute(lab.DARK_EIP, lab.DARK_KEY, ())))
    views["n2"] = lab.view_n2(
        eip_routes=(), held=(HeldEip(lab.EIP, lab.EIP_KEY, lab.ROUTER_MAC, ("default/web",)),),
        return_routes=lab.return_routes("n2"))
    views["n0"] = lab.view_n0(held=(), return_routes=(),
                              eip_routes=(lab.web_route("n0", gateways=("n2", "n0")),))
    fabric = lab.make_fabric(views)
    gone = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)))
    assert (gone.node, gone.where, gone.packet["ipv4_src"]) == ("n2", "uplink", str(lab.EIP))
    assert gone.packet["eth_src"] == lab.BREX_MAC["n2"]
    assert only(fabric.hops("n1", "br-int")).port == lab.PORTS["n1"].tunnel("n2")
    # n0's own pod now goes to n2 as well (by n2's gnv-n0? n2 has a port for n0)
    g = only(fabric.send("n0", "br-int", from_pod(lab, "n0", lab.POD_G)))
    assert (g.node, g.where) == ("n2", "uplink")
    assert g.hops[1] == ("n2", "br-int", lab.PORTS["n2"].tunnel("n0"))
    back = only(fabric.send("n2", "br-ex", from_uplink(lab, "n2", g.packet)))
    assert (back.node, back.where, back.packet["ipv4_dst"]) == ("n0", "egw", str(lab.POD_G))
    # the old gateway no longer answers for the EIP: nothing comes back through it
    assert fabric.send("n0", "br-ex", from_uplink(lab, "n0", gone.packet))[0].where == "NORMAL"


def test_the_switch_fails_over_to_the_standby_when_the_active_tunnel_dies(lab, fabric):
    """Workers list every gateway of an EIP in a bundle(active_backup): the
    first tunnel whose BFD is up carries the traffic, with the same EIP key."""
    worker = fabric.nodes["n1"].bridges["br-int"]
    active, standby = lab.PORTS["n1"].tunnel("n0"), lab.PORTS["n1"].tunnel("n2")
    out = only(worker.process(from_pod(lab, "n1", lab.POD_A)))
    assert out.port == active
    worker.dead_ports.add(active)  # BFD declares the active gateway down
    out = only(worker.process(from_pod(lab, "n1", lab.POD_A)))
    assert (out.port, out.packet["tunnel_id"]) == (standby, lab.EIP_KEY)
    worker.dead_ports.add(standby)  # every gateway down: nothing leaves, never a leak
    assert worker.process(from_pod(lab, "n1", lab.POD_A)) == []


# -- br-ex ------------------------------------------------------------------------

def test_arp_request_for_held_eip_is_answered(lab, fabric):
    asker = "02:00:00:00:ff:01"
    out = only(fabric.send("n0", "br-ex", arp_request(lab.PORTS["n0"].uplink, asker,
                                                         "192.0.2.1", lab.EIP)))
    assert (out.where, out.port) == ("in_port", lab.PORTS["n0"].uplink)
    p = out.packet
    assert p["arp_op"] == 2
    assert (p["eth_src"], p["eth_dst"]) == (lab.BREX_MAC["n0"], asker)
    assert (p["arp_sha"], p["arp_spa"]) == (lab.BREX_MAC["n0"], str(lab.EIP))
    assert (p["arp_tha"], p["arp_tpa"]) == (asker, "192.0.2.1")


def test_arp_for_other_addresses_goes_to_normal(lab, fabric):
    for node, target in (("n0", lab.NODE_IP["n0"]), ("n1", lab.EIP), ("n0", lab.DARK_EIP)):
        out = only(fabric.send(node, "br-ex", arp_request(lab.PORTS[node].uplink,
                                                           lab.ROUTER_MAC, "192.0.2.1", target)))
        assert out.where == "NORMAL"
        assert out.packet["arp_op"] == 1


def test_nodes_own_traffic_is_normal_switched(lab, fabric):
    to_node = ip_packet(lab.PORTS["n1"].uplink, lab.EXTERNAL, lab.NODE_IP["n1"],
                        eth_dst=lab.BREX_MAC["n1"])
    assert only(fabric.send("n1", "br-ex", to_node)).where == "NORMAL"
    # and traffic to an EIP at a node that does not hold it is not taken in
    to_eip = ip_packet(lab.PORTS["n1"].uplink, lab.EXTERNAL, lab.EIP)
    assert only(fabric.send("n1", "br-ex", to_eip)).where == "NORMAL"


# -- useNodeIP: SNAT to the gateway node's own address ---------------------------------

def node_ip_views(lab):
    """n0 serves policy default/own with its own address (key 13); n1's pod a uses it."""
    key, own = 13, lab.NODE_IP["n0"]
    views = lab.views()
    views["n1"] = lab.view_n1(steers=(Steer("default/a", lab.POD_A, lab.DEST, "default/own", own),),
                              eip_routes=(EipRoute(own, key, ("n0",)),))
    views["n0"] = lab.view_n0(steers=(), eip_routes=(),
                              held=(HeldEip(own, key, lab.ROUTER_MAC, ("default/own",), node_ip=True),))
    return views


def test_use_node_ip_snats_to_the_gateways_address_in_its_port_range_and_returns(lab):
    fabric = lab.make_fabric(node_ip_views(lab))
    for proto in (6, 17):
        sent = from_pod(lab, "n1", lab.POD_A, proto=proto, sport=40001, dport=443)
        gone = only(fabric.send("n1", "br-int", sent))
        assert (gone.node, gone.where) == ("n0", "uplink")
        p = gone.packet
        sport = p["tcp_src" if proto == 6 else "udp_src"]
        assert p["ipv4_src"] == str(lab.NODE_IP["n0"]) and 61440 <= sport <= 65535
        back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", p)))
        assert (back.node, back.where, back.packet["ipv4_dst"]) == ("n1", "egw", str(lab.POD_A))
        assert back.packet["tcp_dst" if proto == 6 else "udp_dst"] == 40001


def test_use_node_ip_leaves_the_hosts_own_traffic_to_its_address_alone(lab):
    fabric = lab.make_fabric(node_ip_views(lab))
    own, uplink = lab.NODE_IP["n0"], lab.PORTS["n0"].uplink
    # Below the SNAT's ports (the host's ephemeral range, its services), ICMP,
    # ARP: the host's, NORMAL as ever; the address is not answered by the switch.
    for pkt in (ip_packet(uplink, lab.EXTERNAL, own, proto=6, sport=443, dport=45000),
                ip_packet(uplink, lab.EXTERNAL, own, proto=17, sport=53, dport=22),
                ip_packet(uplink, lab.EXTERNAL, own, proto=1, sport=7),
                arp_request(uplink, lab.ROUTER_MAC, "192.0.2.1", own)):
        assert only(fabric.send("n0", "br-ex", pkt)).where == "NORMAL", pkt
    # A packet to the SNAT's ports that is no reply goes in and dies there.
    stray = ip_packet(uplink, lab.EXTERNAL, own, proto=6, sport=443, dport=62000)
    assert fabric.send("n0", "br-ex", stray) == []


# -- IPv6 is the same pipeline -----------------------------------------------------------

def test_ipv6_pod_is_snatted_to_the_v6_eip_and_gets_its_reply(lab):
    eip6, key6 = lab.IP("2001:db8::200"), 11
    pod6, dest6, ext6 = lab.IP("2001:db8:1:1::5"), lab.NET("2001:db8:ff::/48"), lab.IP("2001:db8:ff::10")
    cidr = {"n0": lab.NET("2001:db8:1::/64"), "n1": lab.NET("2001:db8:1:1::/64")}
    views = lab.views()
    views["n1"] = lab.view_n1(
        steers=(Steer("default/a6", pod6, dest6, "default/web6", eip6),),
        eip_routes=(EipRoute(eip6, key6, ("n0",)),), pod_cidrs=(cidr["n1"],))
    views["n0"] = lab.view_n0(
        steers=(), eip_routes=(), held=(HeldEip(eip6, key6, lab.ROUTER_MAC, ("default/web6",)),),
        return_routes=tuple(ReturnRoute(n, lab.NODE_IP[n], c, local=n == "n0") for n, c in cidr.items()))
    fabric = lab.make_fabric(views)
    gone = only(fabric.send("n1", "br-int", from_pod(lab, "n1", pod6, dst=ext6)))
    assert (gone.node, gone.where) == ("n0", "uplink")
    assert gone.packet["ipv6_src"] == str(eip6)
    back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", gone.packet)))
    assert (back.node, back.where, back.packet["ipv6_dst"]) == ("n1", "egw", str(pod6))
    assert back.packet["eth_src"] == GW_MAC


# -- switch state ----------------------------------------------------------------------

def test_applying_the_same_flows_twice_gives_the_same_tables(lab):
    built = flows.build(lab.view_n0())
    node = FakeNode("n0", lab.NODE_IP["n0"], lab.PORTS["n0"])
    for b, fs in built.items():
        node.bridges[b].apply(fs)
    first = {b: node.bridges[b].contents() for b in built}
    for b, fs in built.items():
        node.bridges[b].apply(sorted(fs, key=repr))
    assert {b: node.bridges[b].contents() for b in built} == first == built


def test_change_then_revert_gives_the_same_tables(lab):
    node = FakeNode("n1", lab.NODE_IP["n1"], lab.PORTS["n1"])
    original = flows.build(lab.view_n1())
    node.sync(original)
    changed = lab.view_n1(steers=(Steer("default/a", lab.POD_A, lab.NET("198.51.100.0/25"),
                                        "default/web", lab.EIP),),
                          pod_cidrs=(lab.NET("203.0.113.32/28"),))
    node.sync(flows.build(changed))
    assert node.bridges["br-int"].contents() != original["br-int"]
    node.sync(flows.build(lab.view_n1()))
    assert {b: node.bridges[b].contents() for b in original} == original
    assert node.bridges["br-int"].sync(original["br-int"]) == (0, 0)


def test_behaviour_after_revert_is_the_original(lab):
    views = lab.views()
    fabric = lab.make_fabric(views)
    n1 = fabric.nodes["n1"]
    n1.sync(flows.build(lab.view_n1(steers=())))
    assert fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)) == []
    n1.sync(flows.build(views["n1"]))
    assert only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A))).where == "uplink"


def test_fabric_wiring_sanity(lab):
    # a bare fabric (no flows) drops everything: nothing above passes by accident
    nodes = [FakeNode(n, lab.NODE_IP[n], lab.PORTS[n]) for n in ("n0", "n1")]
    fabric = Fabric(nodes)
    assert fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)) == []
    assert netaddr.IPAddress(fabric.node_by_ip("192.0.2.11").ip) == lab.NODE_IP["n0"]


# -- full-size packets -------------------------------------------------------------------

def test_a_reply_that_fits_the_tunnel_reaches_the_pod(lab, fabric):
    gone = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)))
    # 1450 bytes of IP: exactly what the tunnel carries
    back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", gone.packet, frame_len=1450 + 14)))
    assert (back.node, back.where) == ("n1", "egw")


def test_a_reply_too_big_for_the_tunnel_goes_to_the_agent_as_sent(lab, fabric):
    """Never silently lost in the tunnel: the agent gets it, before the
    de-NAT, to answer frag-needed or cut it."""
    gone = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)))
    back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", gone.packet, frame_len=1514)))
    assert (back.node, back.where) == ("n0", "controller")
    assert back.packet["ipv4_dst"] == str(lab.EIP)  # as the outside sender sent it
    assert back.packet["eth_src"] == lab.ROUTER_MAC
    punt = [f for f in flows.build(lab.view_n0())["br-int"] if Controller() in f.actions]
    assert [C.decode(f.cookie).feature for f in punt] == [C.Feature.MTU]


def test_without_the_size_check_the_tunnel_would_drop_it(lab, fabric):
    """The fake fabric's tunnels drop what does not fit, as the underlay
    does: the check above is what saves the packet."""
    gone = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)))
    n0 = fabric.nodes["n0"]
    view = lab.view_n0(tunnel_mtu=1500)  # a gateway that thinks its tunnel takes 1500 bytes
    n0.sync(flows.build(view))
    back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", gone.packet, frame_len=1514)))
    assert back.where == "dropped: too big for the tunnel"


def test_the_threshold_follows_the_views_tunnel_mtu(lab):
    fabric = lab.make_fabric({"n0": lab.view_n0(tunnel_mtu=1400)})
    gone = only(fabric.send("n1", "br-int", from_pod(lab, "n1", lab.POD_A)))
    for size, where in ((1400, "egw"), (1401, "controller")):
        back = only(fabric.send("n0", "br-ex", from_uplink(lab, "n0", gone.packet, frame_len=size + 14)))
        assert back.where == where, size
