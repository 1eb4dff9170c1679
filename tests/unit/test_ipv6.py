"""IPv6 and dual stack from the cluster state to packets: the view a node
builds (steers per family, exclusions as entries), the flows it gives (NAT66,
neighbour discovery for held EIPs, de-NAT and the tunnel back), pushed through
the fake switches of three nodes built by ``sdn_egress.view.build_view``.

n0 and n2 are the gateway nodes of the dual-stack policy shop/cart (the
allocation spreads its two EIPs: each node is active for one and standby for
the other), n1 a worker; every node and pod has both families."""
from __future__ import annotations

import netaddr
import pytest
from fakeswitch import ip_packet, reply_to

import flows
from flows import cookie as C
from flows import worker
from flows.records import Controller, Drop
from flows.view import GW_MAC, Ports, deciding
from sdn_egress.allocation import allocate
from sdn_egress.model import ClusterState, EgressGateway, EgressPolicy, LabelSelector, Node, Pod, frozen_labels
from sdn_egress.view import NodeFacts, build_view, pod_steers

from tests.support.objects import scattered

IP, NET = netaddr.IPAddress, netaddr.IPNetwork
ROUTER_MAC = "02:00:00:00:ff:01"
EXT4, EXT6 = IP("198.51.100.10"), IP("2001:db8:ff::10")
PORTS = {
    "n0": Ports(egw=1, tun_flow=2, tunnels=(("n1", 4), ("n2", 3)), int_patch=9, uplink=1, ex_patch=2),
    "n1": Ports(egw=1, tun_flow=2, tunnels=(("n0", 3), ("n2", 4)), int_patch=9, uplink=1, ex_patch=2),
    "n2": Ports(egw=1, tun_flow=2, tunnels=(("n0", 3), ("n1", 4)), int_patch=9, uplink=1, ex_patch=2),
}


def egw_mac(n):
    return f"02:00:00:00:0{n[1]}:e0"


def brex_mac(n):
    return f"02:00:00:00:0{n[1]}:b0"


def node(i: int, **labels) -> Node:
    return Node(name=f"n{i}", labels=frozen_labels(labels),
                addresses=(IP(f"192.0.2.{11 + i}"), IP(f"2001:db8::{11 + i:x}")),
                pod_cidrs=(NET(f"203.0.113.{32 * i}/27"), NET(f"2001:db8:1:{i}::/64")))


def pod(name: str, n: int, host: int, **labels) -> Pod:
    return Pod(namespace="shop", name=name, node=f"n{n}", labels=frozen_labels(labels),
               ips=(IP(f"203.0.113.{32 * n + host}"), IP(f"2001:db8:1:{n}::{host:x}")))


def policy(name="cart", *, dest=(), exclude=(), priority=0, **sel) -> EgressPolicy:
    return EgressPolicy(namespace="shop", name=name, gateway="edge",
                        pod_selector=LabelSelector(match_labels=frozen_labels(sel or {"app": "cart"})),
                        dest_subnets=tuple(NET(d) for d in dest),
                        exclude_subnets=tuple(NET(x) for x in exclude), priority=priority)


def cluster(*policies, pods=None) -> ClusterState:
    nodes = [node(0, egress="true"), node(1), node(2, egress="true")]
    pods = pods or [pod("cart-1", 1, 2, app="cart"), pod("web-1", 1, 3, app="web"),
                    pod("cart-0", 0, 2, app="cart")]
    gw = EgressGateway(name="edge", node_selector=LabelSelector(match_labels=(("egress", "true"),)),
                       pool_v4=(netaddr.IPRange("192.0.2.200", "192.0.2.210"),),
                       pool_v6=(netaddr.IPRange("2001:db8::200", "2001:db8::210"),))
    return ClusterState(nodes={n.name: n for n in nodes}, pods={p.key: p for p in pods},
                        gateways={"edge": gw}, policies={p.key: p for p in policies or [policy()]})


def views(st: ClusterState, dead=frozenset()):
    alloc = allocate(st)
    out = {}
    for n in st.nodes:
        hops = tuple((str(a.ip), ROUTER_MAC) for a in alloc.eips)
        facts = NodeFacts(ports=PORTS[n], egw_mac=egw_mac(n), brex_mac=brex_mac(n), next_hop_macs=hops)
        out[n] = build_view(n, st, alloc, facts, dead=dead)
    return alloc, out


@pytest.fixture
def dual(lab):
    st = cluster()
    alloc, vs = views(st)
    return st, alloc, vs, lab.make_fabric(vs)


def eips(alloc, key="shop/cart"):
    status = alloc.policies[key]
    return str(status.eip_v4), str(status.eip_v6)


def holder(alloc, eip) -> str:
    return alloc.eip(IP(eip)).nodes[0]


def from_pod(n: str, src, dst, **kw) -> dict:
    return ip_packet(PORTS[n].egw, src, dst, eth_src=egw_mac(n), eth_dst=GW_MAC, **kw)


def only(exits):
    assert len(exits) == 1, exits
    return exits[0]


# -- the view ---------------------------------------------------------------------------------

def test_a_dual_stack_policy_steers_each_family_to_its_own_eip(dual):
    st, alloc, vs, _ = dual
    v4, v6 = eips(alloc)
    assert (v4, v6) == ("192.0.2.200", "2001:db8::200")  # the n-th IPv4 with the n-th IPv6
    got = {(str(s.pod_ip), str(s.eip)) for s in vs["n1"].steers}
    assert got == {("203.0.113.34", v4), ("2001:db8:1:1::2", v6)}
    assert {str(r.eip) for r in vs["n1"].eip_routes} == {v4, v6}
    held = {str(h.eip): n for n in vs for h in vs[n].held}
    assert held == {v4: holder(alloc, v4), v6: holder(alloc, v6)} and holder(alloc, v6) in ("n0", "n2")


def test_cluster_addresses_of_both_families_are_never_steered(dual):
    st, alloc, vs, _ = dual
    steers = pod_steers(st, alloc, st.pods["shop/cart-1"], 6)
    for cluster_ip in ("2001:db8:1:2::5", "2001:db8::d", "fe80::1", "ff02::1"):
        decided = deciding(steers, cluster_ip)
        assert decided is None or decided.exclude, cluster_ip
    assert deciding(steers, EXT6).eip == IP("2001:db8::200")


def test_a_policy_with_only_ipv6_destinations_steers_only_ipv6():
    st = cluster(policy(dest=["2001:db8:ff::/48"]))
    _, vs = views(st)
    assert {s.pod_ip.version for s in vs["n1"].steers} == {6}
    assert [str(s.dest) for s in vs["n1"].steers] == ["2001:db8:ff::/48"]


def test_excludes_and_priority_work_per_family():
    st = cluster(policy(dest=["2001:db8:ff::/48", "198.51.100.0/24"], exclude=["2001:db8:ff:1::/64"]),
                 policy("all", priority=5, dest=["2001:db8:ff:1::/64"], app="cart"))
    alloc, _ = views(st)
    p = st.pods["shop/cart-1"]
    s6 = pod_steers(st, alloc, p, 6)
    assert deciding(s6, "2001:db8:ff:1::9").policy == "shop/all"  # the better policy
    assert deciding(s6, "2001:db8:ff:2::9").policy == "shop/cart"
    assert deciding(pod_steers(st, alloc, p, 4), "198.51.100.7").policy == "shop/cart"


def test_an_unselected_pod_has_no_steer_of_either_family(dual):
    _, _, vs, fabric = dual
    assert not [s for s in vs["n1"].steers if s.pod == "shop/web-1"]
    # and should the host hand one to egw0, it dies there
    for src, dst in (("203.0.113.35", EXT4), ("2001:db8:1:1::3", EXT6)):
        assert fabric.send("n1", "br-int", from_pod("n1", src, dst)) == []


# -- packets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("proto", [6, 17, 58])
def test_ipv6_leaves_the_gateway_with_the_ipv6_eip_and_the_reply_comes_back(dual, proto):
    st, alloc, vs, fabric = dual
    v4, v6 = eips(alloc)
    gw = holder(alloc, v6)
    sent = from_pod("n1", "2001:db8:1:1::2", EXT6, proto=proto, sport=40001, dport=443)
    gone = only(fabric.send("n1", "br-int", sent))
    assert (gone.node, gone.where) == (gw, "uplink")
    assert (gone.packet["ipv6_src"], gone.packet["ipv6_dst"]) == (v6, str(EXT6))
    assert (gone.packet["eth_src"], gone.packet["eth_dst"]) == (brex_mac(gw), ROUTER_MAC)
    back = reply_to(gone.packet, PORTS[gw].uplink, eth_src=ROUTER_MAC, eth_dst=brex_mac(gw))
    home = only(fabric.send(gw, "br-ex", back))
    assert (home.node, home.where) == ("n1", "egw")  # de-NATed and tunnelled by n1's IPv6 pod CIDR
    assert (home.packet["ipv6_src"], home.packet["ipv6_dst"]) == (str(EXT6), "2001:db8:1:1::2")
    assert home.packet["eth_dst"] == egw_mac("n1")


def test_a_dual_stack_pod_uses_both_eips_at_once(dual):
    st, alloc, vs, fabric = dual
    v4, v6 = eips(alloc)
    a = only(fabric.send("n1", "br-int", from_pod("n1", "203.0.113.34", EXT4)))
    b = only(fabric.send("n1", "br-int", from_pod("n1", "2001:db8:1:1::2", EXT6)))
    assert (a.packet["ipv4_src"], b.packet["ipv6_src"]) == (v4, v6)
    assert (a.node, b.node) == (holder(alloc, v4), holder(alloc, v6))


def test_a_pod_on_the_gateway_and_one_on_the_standby_get_their_replies(dual):
    st, alloc, vs, fabric = dual
    v6 = eips(alloc)[1]
    gw = holder(alloc, v6)
    for n, src in (("n0", "2001:db8:1:0::2"), ("n2", "2001:db8:1:2::2")):
        st2 = st
        if not any(p.node == n for p in st2.pods.values() if p.labels == (("app", "cart"),)):
            continue
        gone = only(fabric.send(n, "br-int", from_pod(n, src, EXT6)))
        assert (gone.node, gone.where, gone.packet["ipv6_src"]) == (gw, "uplink", v6)
        back = reply_to(gone.packet, PORTS[gw].uplink, eth_src=ROUTER_MAC, eth_dst=brex_mac(gw))
        home = only(fabric.send(gw, "br-ex", back))
        assert (home.node, home.where, IP(home.packet["ipv6_dst"])) == (n, "egw", IP(src))


def test_a_new_inbound_connection_to_the_ipv6_eip_goes_nowhere(dual):
    _, alloc, _, fabric = dual
    gw = holder(alloc, eips(alloc)[1])
    probe = ip_packet(PORTS[gw].uplink, EXT6, eips(alloc)[1], eth_src=ROUTER_MAC, eth_dst=brex_mac(gw))
    assert not [e for e in fabric.send(gw, "br-ex", probe) if e.where in ("egw", "uplink")]


def solicitation(n: str, target) -> dict:
    return {"in_port": PORTS[n].uplink, "eth_src": ROUTER_MAC, "eth_dst": "33:33:ff:00:02:00",
            "eth_type": 0x86DD, "ip_proto": 58, "ipv6_src": "2001:db8::1", "ipv6_dst": "ff02::1:ff00:200",
            "icmpv6_type": 135, "ipv6_nd_target": str(target)}


def test_only_the_holder_sends_solicitations_for_the_ipv6_eip_to_its_agent(dual):
    _, alloc, vs, fabric = dual
    v4, v6 = eips(alloc)
    gw = holder(alloc, v6)
    up = only(fabric.send(gw, "br-ex", solicitation(gw, v6)))
    assert up.where == "controller"
    flow = fabric.nodes[gw].bridges["br-ex"].lookup("classify", solicitation(gw, v6))
    assert C.decode(flow.cookie).feature == C.Feature.ND and flow.actions == (Controller(),)
    # the standby and the worker leave it to NORMAL: they do not claim the address
    for n in sorted(set(PORTS) - {gw}):
        assert only(fabric.send(n, "br-ex", solicitation(n, v6))).where == "NORMAL"
    # another address, even on the holder: NORMAL too
    assert only(fabric.send(gw, "br-ex", solicitation(gw, "2001:db8::99"))).where == "NORMAL"


def test_after_failover_only_the_standby_claims_the_ipv6_eip(lab):
    st = cluster()
    alloc, _ = views(st)
    v6 = eips(alloc)[1]
    active, standby = alloc.eip(IP(v6)).nodes
    alloc, vs = views(st, dead=frozenset({active}))
    vs = {n: v for n, v in vs.items() if n != active}  # the dead node is gone from the fabric
    fabric = lab.make_fabric({**vs, active: build_view(active, st, alloc, NodeFacts(
        ports=PORTS[active], egw_mac=egw_mac(active), brex_mac=brex_mac(active)), dead=frozenset({active}))})
    assert only(fabric.send(standby, "br-ex", solicitation(standby, v6))).where == "controller"
    assert only(fabric.send(active, "br-ex", solicitation(active, v6))).where == "NORMAL"
    fabric.nodes["n1"].bridges["br-int"].dead_ports.add(PORTS["n1"].tunnel(active))
    gone = only(fabric.send("n1", "br-int", from_pod("n1", "2001:db8:1:1::2", EXT6)))
    assert (gone.node, gone.packet["ipv6_src"]) == (standby, v6)


# -- issue 11, item 7: exclusions without multiplying ------------------------------------------

def test_256_scattered_excludes_cost_one_entry_each_and_are_still_not_steered(lab):
    excluded = [x for x in scattered(300) if not x.startswith(("192.0.2.", "203.0.113.", "127.", "169.254."))][:256]
    st = cluster(policy(exclude=excluded))
    alloc, vs = views(st)
    entries = [s for s in vs["n1"].steers if s.pod == "shop/cart-1" and s.pod_ip.version == 4]
    from sdn_egress.view import NEVER_STEERED
    cluster_pieces = len(list((netaddr.IPSet(["0.0.0.0/0"]) - netaddr.IPSet(st.cluster_cidrs(4))
                               - NEVER_STEERED[4]).iter_cidrs()))
    holes = len(list(netaddr.IPSet(excluded).iter_cidrs()))  # two adjacent /32s are one /31
    assert holes > 250
    assert len(entries) == holes + cluster_pieces  # was 5,712 and more: every exclusion cut holes
    fabric = lab.make_fabric(vs)
    for dst in excluded[:40]:
        assert deciding(entries, dst).exclude
        # the host does not steer it ...
        from sdn_egress.agent.routing import desired_rules
        rules = desired_rules(tuple(entries))
        rule = min((r for r in rules if IP(dst) in r.dst), key=lambda r: r.priority)
        assert rule.table == 254, rule  # lookup main: the node's own way out
        # ... and br-int drops it, should it come
        assert not [e for e in fabric.send("n1", "br-int", from_pod("n1", "203.0.113.34", dst))
                    if e.where == "uplink"]
    gone = only(fabric.send("n1", "br-int", from_pod("n1", "203.0.113.34", EXT4)))
    assert (gone.where, gone.packet["ipv4_src"]) == ("uplink", eips(alloc)[0])


def test_a_lower_policy_still_fills_a_better_policys_exclusions(lab):
    excluded = ["198.51.100.7/32", "198.51.100.9/32", "198.51.100.77/32", "198.51.100.199/32"]
    st = cluster(policy("wide", priority=9, dest=["198.51.100.0/24"], exclude=excluded),
                 policy("narrow", dest=["198.51.100.0/25"]))
    alloc, vs = views(st)
    entries = [s for s in vs["n1"].steers if s.pod == "shop/cart-1" and s.pod_ip.version == 4]
    assert sum(s.exclude for s in entries) == 4  # entries, not holes
    fabric = lab.make_fabric(vs)

    def source(dst):
        e = [e for e in fabric.send("n1", "br-int", from_pod("n1", "203.0.113.34", dst)) if e.where == "uplink"]
        return e[0].packet["ipv4_src"] if e else None

    wide, narrow = eips(alloc, "shop/wide")[0], eips(alloc, "shop/narrow")[0]
    assert source("198.51.100.8") == wide
    assert source("198.51.100.7") == narrow  # excluded by wide, inside narrow
    assert source("198.51.100.199") is None  # excluded by wide, outside narrow: not steered
    assert deciding(entries, "198.51.100.199").exclude
    from sdn_egress.agent.routing import desired_rules
    rules = sorted(desired_rules(tuple(entries)))

    def first(dst):
        return next(r for r in rules if IP(dst) in r.dst)

    assert first("198.51.100.7").table == 7100 and first("198.51.100.199").table == 254
    assert first("198.51.100.8").table == 7100


def test_exclusion_flows_rank_above_steers_and_drop(lab):
    st = cluster(policy(exclude=scattered(20)))
    _, vs = views(st)
    fl = worker.steers(vs["n1"])
    ex = [f for f in fl if f.actions == (Drop(),) and f.priority > worker.PRIO_STEER
          and "ipv4_dst" in f.match_dict()]
    assert len(ex) == 2 * 20 // 2  # one per exclusion and pod address of its family (pod cart-1)
    assert min(f.priority for f in ex) > max(f.priority for f in fl if f.actions != (Drop(),)
                                              and "ipv4_dst" in f.match_dict())
    assert all(C.decode(f.cookie).feature == C.Feature.UNSTEERED for f in ex)
    flows.build(vs["n1"])  # no two objects want one flow


def test_256_scattered_excludes_pass_the_bound_that_counts_entries():
    from sdn_egress.model.manifests import MAX_STEERING_CIDRS, steering_cidrs

    excluded = tuple(NET(x) for x in scattered(256))
    assert steering_cidrs((), excluded, 4) == 257 <= MAX_STEERING_CIDRS
    assert steering_cidrs((), excluded, 6) == 1
    # a policy of IPv6 destinations only costs nothing in IPv4
    assert steering_cidrs((NET("2001:db8:ff::/48"),), excluded, 4) == 0


@pytest.mark.parametrize("dest", [(), ("198.51.100.0/24",), ("2001:db8:ff::/48",),
                                  ("198.51.100.0/24", "2001:db8:ff::/48")])
def test_explain_says_steered_exactly_when_a_steering_flow_takes_the_packet(lab, dest):
    """What ``sdn-egress trace`` tells (its policy part) is what the switch does, per family."""
    from sdn_egress.debug.explain import explain
    st = cluster(policy(dest=dest, exclude=["198.51.100.7", "2001:db8:ff::7"]))
    alloc, vs = views(st)
    fabric = lab.make_fabric(vs)
    for src, dst in (("203.0.113.34", "198.51.100.10"), ("203.0.113.34", "198.51.100.7"),
                     ("2001:db8:1:1::2", "2001:db8:ff::10"), ("2001:db8:1:1::2", "2001:db8:ff::7"),
                     ("2001:db8:1:1::2", "2001:db8:1:2::5")):
        why = explain(st, alloc, "shop/cart-1", dst)
        out = [e for e in fabric.send("n1", "br-int", from_pod("n1", src, dst)) if e.where == "uplink"]
        assert why.steered == bool(out), (dest, dst, why.reasons)
        if out:
            assert out[0].packet["ipv6_src" if ":" in dst else "ipv4_src"] == why.eip


def test_ipv6_cluster_ranges_are_entries_not_a_hundred_holes_each(lab):
    st = cluster()
    alloc, vs = views(st)
    v6 = pod_steers(st, alloc, st.pods["shop/cart-1"], 6)
    from sdn_egress.view import NEVER_STEERED
    never = netaddr.IPSet(st.cluster_cidrs(6)) | NEVER_STEERED[6]
    cut = len(list((netaddr.IPSet(["::/0"]) - never).iter_cidrs()))
    assert cut > 250  # what cutting would cost
    assert len(v6) == 1 + len(list(never.iter_cidrs())) < 15
    fabric = lab.make_fabric(vs)
    for dst in ("2001:db8:1:2::5", "2001:db8::d", "fe80::1"):  # another node's pod, a node, link-local
        assert fabric.send("n1", "br-int", from_pod("n1", "2001:db8:1:1::2", dst)) == []
        from sdn_egress.agent.routing import desired_rules
        rule = min((r for r in desired_rules(tuple(v6)) if IP(dst) in r.dst), key=lambda r: r.priority)
        assert rule.table == 254, rule
    assert only(fabric.send("n1", "br-int", from_pod("n1", "2001:db8:1:1::2", EXT6))).where == "uplink"


def test_status_lists_the_ipv6_eip_with_its_gateways_and_holder_under_the_ipv4_one():
    from sdn_egress.debug import status
    st = cluster()
    alloc = allocate(st)
    v4, v6 = eips(alloc)
    held = {v4: holder(alloc, v4), v6: holder(alloc, v6)}
    out = status.summarize(alloc, {"n0": {"time": 100.0, "mss": 1410, "mss_v6": 1390, "tunnel_mtu": 1450}},
                           held, st, now=101.0)
    [p] = out["policies"]
    assert (p["eip"], p["ipv6"]["eip"], p["ipv6"]["held_by"]) == (v4, v6, holder(alloc, v6))
    assert p["ipv6"]["standbys"] == list(alloc.eip(IP(v6)).nodes[1:])
    text = status.render(out)
    rows = [line.split() for line in text.splitlines() if v4 in line or v6 in line]
    assert rows[0][:2] == ["shop/cart", v4] and rows[1][0] == v6
    assert "1450/1410 (v6 1390)" in text
    assert "2001:db8:1::/63" in text  # never steered, IPv6 too (pod CIDRs merged)
