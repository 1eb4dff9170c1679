"""Policy semantics at a node: which pods, which destinations, which EIPs."""
from __future__ import annotations

import netaddr
import pytest

from flows.view import Ports
from sdn_egress.allocation import allocate
from sdn_egress.model import (ClusterState, EgressGateway, EgressPolicy, LabelSelector, Node, Pod,
                              frozen_labels)
from sdn_egress.view import NodeFacts, build_view, tunnel_peers
from tests.support.objects import model_node

IP = netaddr.IPAddress
NET = netaddr.IPNetwork
FACTS = NodeFacts(ports=Ports(egw=1, tun_flow=2, tunnels=(("alpha", 5),), int_patch=3, uplink=1, ex_patch=2),
                  egw_mac="02:00:00:00:00:01", brex_mac="02:00:00:00:00:02",
                  next_hop_macs=(("192.0.2.200", "02:00:00:00:00:fe"),))


def node(name, i, **labels):
    return model_node(name, i, labels)


def pod(ns, name, node_name, ip, **labels):
    return Pod(namespace=ns, name=name, node=node_name, labels=frozen_labels(labels), ips=(IP(ip),))


def policy(ns, name, *, dest=(), exclude=(), priority=0, eip=None, **sel):
    return EgressPolicy(namespace=ns, name=name, gateway="edge",
                        pod_selector=LabelSelector(match_labels=frozen_labels(sel)),
                        eip_v4=IP(eip) if eip else None,
                        dest_subnets=tuple(NET(d) for d in dest),
                        exclude_subnets=tuple(NET(x) for x in exclude), priority=priority)


def state(*policies, pods=None):
    nodes = {n.name: n for n in (node("alpha", 0, egress="true"), node("bravo", 1))}
    pods = pods or [pod("shop", "cart-0", "bravo", "203.0.113.34", app="cart"),
                    pod("shop", "web-0", "bravo", "203.0.113.35", app="web"),
                    pod("other", "cart-0", "bravo", "203.0.113.36", app="cart"),
                    pod("shop", "cart-1", "alpha", "203.0.113.2", app="cart")]
    gw = EgressGateway(name="edge", node_selector=LabelSelector(match_labels=(("egress", "true"),)),
                       pool_v4=(netaddr.IPRange("192.0.2.200", "192.0.2.210"),))
    return ClusterState(nodes=nodes, pods={p.key: p for p in pods}, gateways={"edge": gw},
                        policies={p.key: p for p in policies})


def view(st, node_name="bravo"):
    return build_view(node_name, st, allocate(st), FACTS)


def test_selected_pod_is_steered_to_the_policy_destination_only():
    st = state(policy("shop", "cart", dest=["198.51.100.0/24"], app="cart"))
    v = view(st)
    assert [(s.pod, str(s.dest), s.policy) for s in v.steers] == [("shop/cart-0", "198.51.100.0/24", "shop/cart")]
    assert [str(r.eip) for r in v.eip_routes] == ["192.0.2.200"]
    assert v.eip_routes[0].gateways == ("alpha",) and not v.eip_routes[0].local
    assert v.held == ()  # bravo is no gateway


def test_namespaced_policy_never_selects_another_namespace():
    v = view(state(policy("shop", "cart", app="cart")))
    assert {s.pod for s in v.steers} == {"shop/cart-0"}


def test_empty_destination_means_everything_outside_the_cluster():
    v = view(state(policy("shop", "cart", app="cart")))
    steered = netaddr.IPSet(s.dest for s in v.steers)
    assert IP("198.51.100.10") in steered and IP("8.8.8.8") in steered
    for inside in ("203.0.113.2", "203.0.113.40", "192.0.2.11", "192.0.2.12", "127.0.0.1", "169.254.0.1",
                   "224.0.0.5"):
        assert IP(inside) not in steered, inside
    # Only node IPs are cluster addresses on the underlay: an EIP neighbour is not.
    assert IP("192.0.2.1") in steered


def test_excluded_subnets_are_not_steered():
    v = view(state(policy("shop", "cart", dest=["198.51.100.0/24"], exclude=["198.51.100.128/25"], app="cart")))
    assert [str(s.dest) for s in v.steers] == ["198.51.100.0/25"]


def test_pods_of_one_policy_get_its_destinations_and_an_edited_policy_its_new_ones():
    """A policy's destinations minus its exclusions are computed once for all
    its pods (sdn_egress.view.destinations); an edit of the policy is seen
    at the next pass, never the destinations of its old version."""
    pods = [pod("shop", f"cart-{i}", "bravo", f"203.0.113.{40 + i}", app="cart") for i in range(3)]
    scattered = [f"198.51.100.{4 * i}/32" for i in range(1, 40)]
    st = state(policy("shop", "cart", exclude=scattered, app="cart"), pods=pods)
    v = view(st)
    by_pod = {p.key: [(str(s.dest), s.rank, s.exclude) for s in v.steers if s.pod == p.key] for p in pods}
    assert len(by_pod["shop/cart-0"]) > 39 and by_pod["shop/cart-0"] == by_pod["shop/cart-1"] == by_pod["shop/cart-2"]
    assert {str(s.pod_ip) for s in v.steers if s.pod == "shop/cart-2"} == {"203.0.113.42"}
    excluded = {s.dest for s in v.steers if s.exclude}
    assert NET("198.51.100.8/32") in excluded

    edited = state(policy("shop", "cart", exclude=scattered[2:], app="cart"), pods=pods)
    v2 = view(edited)
    assert NET("198.51.100.8/32") not in {s.dest for s in v2.steers if s.exclude}
    steered = netaddr.IPSet(s.dest for s in v2.steers if not s.exclude) - netaddr.IPSet(
        s.dest for s in v2.steers if s.exclude)
    assert IP("198.51.100.8") in steered and IP("198.51.100.12") not in steered


def test_higher_priority_policy_wins_the_overlap():
    st = state(policy("shop", "wide", dest=["198.51.100.0/24"], app="cart"),
               policy("shop", "narrow", dest=["198.51.100.10/32"], priority=10, app="cart"))
    v = view(st)
    owners = {str(s.dest): s.policy for s in v.steers}
    assert owners["198.51.100.10/32"] == "shop/narrow"
    assert all(p == "shop/wide" for d, p in owners.items() if d != "198.51.100.10/32")
    wide = netaddr.IPSet(NET(d) for d, p in owners.items() if p == "shop/wide")
    assert wide == netaddr.IPSet(["198.51.100.0/24"]) - netaddr.IPSet(["198.51.100.10/32"])
    assert len({str(s.eip) for s in v.steers}) == 2


def test_ties_are_broken_by_namespace_and_name():
    st = state(policy("shop", "b", dest=["198.51.100.0/24"], app="cart"),
               policy("shop", "a", dest=["198.51.100.0/24"], app="cart"))
    assert {s.policy for s in view(st).steers} == {"shop/a"}


def test_gateway_node_holds_its_eip_and_routes_replies_to_every_pod_cidr():
    st = state(policy("shop", "cart", dest=["198.51.100.0/24"], app="cart"))
    v = view(st, "alpha")
    assert [(str(h.eip), h.next_hop_mac) for h in v.held] == [("192.0.2.200", "02:00:00:00:00:fe")]
    assert {(r.node, str(r.pod_cidr), r.local) for r in v.return_routes} == {
        ("alpha", "203.0.113.0/27", True), ("bravo", "203.0.113.32/27", False)}
    # The gateway's own selected pod goes to the local SNAT, no tunnel.
    assert v.eip_routes[0].local
    assert tunnel_peers("alpha", st, allocate(st)) == {}  # it has heard no BFD yet
    # bravo's BFD came: a port back (a session needs both ends).
    assert tunnel_peers("alpha", st, allocate(st), senders={"bravo"}) == {"bravo": "192.0.2.12"}
    assert tunnel_peers("bravo", st, allocate(st)) == {"alpha": "192.0.2.11"}


@pytest.mark.parametrize("labels", [{"app": "web"}, {}])
def test_unselected_pod_gets_nothing(labels):
    st = state(policy("shop", "cart", app="cart"),
               pods=[pod("shop", "x", "bravo", "203.0.113.34", **labels)])
    v = view(st)
    assert v.steers == () and v.eip_routes == ()


def test_a_standby_holds_the_eip_only_while_bfd_sees_every_node_before_it_dead():
    st = state(policy("shop", "cart", dest=["198.51.100.0/24"], app="cart"),
               pods=[pod("shop", "cart-0", "charlie", "203.0.113.66", app="cart")])
    nodes = {n.name: n for n in (node("alpha", 0, egress="true"), node("bravo", 1, egress="true"),
                                 node("charlie", 2))}
    st = ClusterState(nodes=nodes, pods=st.pods, gateways=st.gateways, policies=st.policies)
    alloc = allocate(st)
    (eip,) = alloc.eips
    active, standby = eip.nodes
    assert {active, standby} == {"alpha", "bravo"}

    def held(name, dead=frozenset()):
        return [str(h.eip) for h in build_view(name, st, alloc, FACTS, dead=dead).held]

    assert held(active) == [str(eip.ip)] and held(standby) == []
    # BFD says the active is down: the standby takes the EIP over, same address.
    assert held(standby, dead=frozenset({active})) == [str(eip.ip)]
    # A node that considers itself cut off (itself among the dead) holds nothing.
    assert held(active, dead=frozenset({standby, "charlie", active})) == []
    # The worker keeps every gateway, in order, whatever it sees dead: the
    # switch's bundle skips dead members by BFD, the view does not reorder.
    (route,) = build_view("charlie", st, alloc, FACTS, dead=frozenset({active})).eip_routes
    assert route.gateways == (active, standby) and not route.local
    assert tunnel_peers("charlie", st, alloc) == {"alpha": "192.0.2.11", "bravo": "192.0.2.12"}
    assert tunnel_peers(standby, st, alloc).keys() == {active}
    assert tunnel_peers(standby, st, alloc, senders={"charlie"}).keys() == {"charlie", active}


def test_a_worker_keeps_tunnels_only_to_the_gateways_of_the_eips_its_pods_use():
    """Issue 15: a worker with no selected pod has no tunnel (no BFD); one
    with a selected pod has one to every gateway node of that EIP, standbys
    included (failover must not wait for a port), and none to the gateways of
    EIPs only other nodes use.  A gateway node keeps one to every other
    gateway node and to the nodes it heard BFD from (``senders``)."""
    edge2 = EgressGateway(name="edge2", node_selector=LabelSelector(match_labels=(("egress", "two"),)),
                          pool_v4=(netaddr.IPRange("192.0.2.220", "192.0.2.230"),))
    nodes = {n.name: n for n in (node("alpha", 0, egress="true"), node("bravo", 1, egress="true"),
                                 node("charlie", 2), node("delta", 3), node("echo", 4, egress="two"))}
    other = EgressPolicy(namespace="shop", name="web", gateway="edge2",
                         pod_selector=LabelSelector(match_labels=(("app", "web"),)))
    pods = [pod("shop", "cart-0", "charlie", "203.0.113.66", app="cart"),
            pod("shop", "web-0", "echo", "203.0.113.130", app="web"),
            pod("shop", "idle-0", "delta", "203.0.113.98", app="idle")]
    st = ClusterState(nodes=nodes, pods={p.key: p for p in pods},
                      gateways={"edge": state().gateways["edge"], "edge2": edge2},
                      policies={p.key: p for p in (policy("shop", "cart", app="cart"), other)})
    alloc = allocate(st)
    assert {str(a.ip): a.nodes for a in alloc.eips}["192.0.2.200"] in (("alpha", "bravo"), ("bravo", "alpha"))
    assert tunnel_peers("charlie", st, alloc) == {"alpha": "192.0.2.11", "bravo": "192.0.2.12"}
    assert tunnel_peers("delta", st, alloc) == {}  # nothing selected: no tunnel, no BFD
    assert tunnel_peers("alpha", st, alloc).keys() == {"bravo", "echo"}
    assert tunnel_peers("alpha", st, alloc, senders={"charlie", "gone"}).keys() == {"bravo", "charlie", "echo"}
    # The pod relabelled into the policy: delta now needs both gateway nodes.
    relabelled = dict(st.pods, **{"shop/idle-0": pod("shop", "idle-0", "delta", "203.0.113.98", app="cart")})
    st2 = ClusterState(nodes=st.nodes, pods=relabelled, gateways=st.gateways, policies=st.policies)
    assert tunnel_peers("delta", st2, alloc).keys() == {"alpha", "bravo"}
    # Its pod unselected again, delta keeps the ports it has (their BFD up for
    # the next one), but only to nodes that are still gateway nodes.
    kept = tunnel_peers("delta", st, alloc, keep={"alpha", "bravo", "charlie"})
    assert kept == {"alpha": "192.0.2.11", "bravo": "192.0.2.12"}


def test_a_new_node_is_never_steered_to_from_the_next_pass_on():
    """The never-steered set is computed once per pass and kept while the
    nodes stay the same objects: a node that joins (or changes) counts at once."""
    st = state(policy("shop", "cart", app="cart"))
    assert IP("198.51.100.7") in netaddr.IPSet(s.dest for s in view(st).steers)
    grown = dict(st.nodes, charlie=Node(name="charlie", labels=(), addresses=(IP("198.51.100.7"),),
                                        pod_cidrs=(NET("198.51.100.64/26"),)))
    after = view(ClusterState(nodes=grown, pods=st.pods, gateways=st.gateways, policies=st.policies)).steers
    covered = netaddr.IPSet(s.dest for s in after)
    assert IP("198.51.100.7") not in covered and not covered & netaddr.IPSet(["198.51.100.64/26"])
    assert IP("198.51.100.8") in covered


def test_a_views_steer_groups_are_its_steers_in_runs_of_one_pod_even_after_replace():
    import dataclasses
    from itertools import groupby

    pods = [pod("shop", f"cart-{i}", "bravo", f"203.0.113.{40 + i}", app="cart") for i in range(3)]
    pods.append(pod("shop", "web-0", "bravo", "203.0.113.50", app="web"))
    st = state(policy("shop", "cart", exclude=["198.51.100.4/32", "198.51.100.9/32"], app="cart"), pods=pods)
    v = view(st)
    cut = tuple(tuple(g) for _, g in groupby(v.steers, key=lambda s: s.pod))
    assert v.steer_groups == cut and [g[0].pod for g in cut] == ["shop/cart-0", "shop/cart-1", "shop/cart-2"]
    fewer = dataclasses.replace(v, steers=v.steers[:1])
    assert fewer.steer_groups == ((v.steers[0],),)
