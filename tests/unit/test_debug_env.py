"""The debugging commands against an environment that is not the lab: a
cluster seen from one node (fakes for its switch and its kernel), and the
standalone status directory of a real node."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from test_view import policy, state  # noqa: E402

from sdn_egress.allocation import Allocation, allocate  # noqa: E402
from sdn_egress.debug import env as env_mod  # noqa: E402
from sdn_egress.debug import status as status_mod  # noqa: E402
from sdn_egress.debug.trace import render, trace  # noqa: E402

NOW = 1_800_000_000.0

# What ovs-appctl ofproto/trace prints on bravo for the steered packet (OVS 3.1 format).
BRAVO_TRACE = """\
Flow: udp,in_port=1,vlan_tci=0x0000,dl_src=aa:aa:aa:aa:aa:aa,dl_dst=0a:58:a9:fe:00:01,nw_src=203.0.113.34

bridge("br-int")
----------------
 0. ip,in_port=1,nw_src=203.0.113.34,nw_dst=198.51.100.0/24, priority 1024, cookie 0x10000000001
    set_field:0x1->reg0
    goto_table:1
 1. reg0=0x1, priority 100, cookie 0x20000000001
    set_field:0x1->tun_id
    output:4

Final flow: unchanged
Megaflow: recirc_id=0,ip,in_port=1
Datapath actions: tnl_push(header(size=50,type=6)),out_port(4)),5
"""
ALPHA_TRACE = """\
bridge("br-int")
----------------
 0. tun_id=0x1,in_port=4, priority 100, cookie 0x30000000001
    goto_table:2

Datapath actions: ct(commit,zone=7100,nat(src=192.0.2.200)),recirc(0x1)
"""


class FakeSwitch:
    def __init__(self, traces: dict[str, str], ports=("egw0", "gnv-flow", "gnv-bravo")):
        self.traces, self.ports, self.asked = traces, ports, []

    def vsctl(self, *args):
        if args[:1] == ("get",):
            return '"aa:aa:aa:aa:aa:aa"\n'
        if args[:1] == ("list-ports",):
            return "\n".join(self.ports) + "\n"
        raise AssertionError(args)

    def appctl(self, cmd, bridge, flow):
        self.asked.append(flow)
        return self.traces[bridge]


class FakeNode(env_mod.ClusterEnv):
    """A ClusterEnv whose cluster is given and whose local node's kernel
    and switch are fakes; every other node is as far away as on a real
    cluster."""

    def __init__(self, st, alloc, local, reports, switch, routes):
        super().__init__(status_dir="/nonexistent", local=local, clock=lambda: NOW)
        self._state, self._alloc, self._reports = st, alloc, reports
        self.fake_switch, self.routes = switch, routes

    def switch(self, node):
        self._here(node, "the switch")
        return self.fake_switch

    def run(self, node, argv):
        self._here(node, "the routing")
        return subprocess.CompletedProcess(argv, 0, self.routes.get(tuple(argv[:3]), ""), "")

    def desired_flows(self, node):
        self._here(node, "the agent's flow record")
        return {"owners": {"0x10000000001": "policy shop/cart, pod shop/cart-0"}}


ROUTES = {("ip", "route", "show"): "203.0.113.34 dev cali1 scope link\n",
          ("ip", "route", "get"): "198.51.100.10 from 203.0.113.34 via 169.254.0.1 dev egw0 table 7100 \n"}


def cart_cluster():
    st = state(policy("shop", "cart", dest=["198.51.100.0/24"], app="cart"))
    return st, allocate(st)


def test_trace_on_the_pods_node_follows_its_switch_and_says_where_the_gateway_hop_runs():
    st, alloc = cart_cluster()
    sw = FakeSwitch({"br-int": BRAVO_TRACE})
    reports = {"alpha": {"time": NOW - 2, "held_eips": ["192.0.2.200"]}, "bravo": {"time": NOW - 1}}
    t = trace(FakeNode(st, alloc, "bravo", reports, sw, ROUTES), "shop/cart-0", "198.51.100.10:53", "udp")
    assert t["policy"]["policy"] == "shop/cart" and t["policy"]["eip"] == "192.0.2.200"
    assert [h["where"] for h in t["hops"]] == ["bravo kernel", "bravo br-int", "alpha (gateway)"]
    assert t["hops"][1]["steps"][0]["owner"] == "policy shop/cart, pod shop/cart-0"
    assert sw.asked == ["in_port=egw0,dl_src=aa:aa:aa:aa:aa:aa,dl_dst=0a:58:a9:fe:00:01,udp,nw_src=203.0.113.34,"
                        "nw_dst=198.51.100.10,nw_ttl=64,udp_src=40000,udp_dst=53"]
    gw = t["hops"][2]["explain"]
    assert gw.startswith("not traced from here: the switch of node alpha is on alpha, and this is node bravo")
    assert gw.endswith("--field-selector spec.nodeName=alpha) -- sdn-egress trace --src shop/cart-0 "
                       "--dst 198.51.100.10:53 --proto udp --gateway-hop")
    assert "[alpha (gateway)]\n  => not traced from here" in render(t)


def ipv6_cluster():
    """The cart cluster on IPv6 only: the tunnels run over the IPv6 underlay."""
    import netaddr

    from sdn_egress.model import ClusterState, EgressGateway, EgressPolicy, LabelSelector, Node, Pod, frozen_labels
    ip, net = netaddr.IPAddress, netaddr.IPNetwork
    nodes = [Node(name=n, labels=frozen_labels(lb), addresses=(ip(f"2001:db8::{11 + i}"),),
                  pod_cidrs=(net(f"2001:db8:1:{i}::/64"),)) for i, (n, lb) in
             enumerate((("alpha", {"egress": "true"}), ("bravo", {})))]
    cart = Pod(namespace="shop", name="cart-0", node="bravo", labels=frozen_labels({"app": "cart"}),
               ips=(ip("2001:db8:1:1::2"),))
    gw = EgressGateway(name="edge", node_selector=LabelSelector(match_labels=(("egress", "true"),)),
                       pool_v6=(netaddr.IPRange("2001:db8::200", "2001:db8::210"),))
    pol = EgressPolicy(namespace="shop", name="cart", gateway="edge",
                       pod_selector=LabelSelector(match_labels=frozen_labels({"app": "cart"})),
                       dest_subnets=(net("2001:db8:100::/64"),))
    st = ClusterState(nodes={n.name: n for n in nodes}, pods={cart.key: cart}, gateways={"edge": gw},
                      policies={pol.key: pol})
    return st, allocate(st)


# IPv4, and the cart cluster on an IPv6 underlay: tun_src/tun_dst take IPv4
# only (ofproto/trace refuses an IPv6 address there), tun_ipv6_src/dst the rest.
GATEWAY_HOPS = {
    "IPv4": ("192.0.2.200", "198.51.100.10:53",
             "in_port=gnv-bravo,tun_id={key:#x},tun_src=192.0.2.12,tun_dst=192.0.2.11,dl_dst=0a:58:a9:fe:00:01,"
             "udp,nw_src=203.0.113.34,nw_dst=198.51.100.10,nw_ttl=64,udp_src=40000,udp_dst=53"),
    "IPv6": ("2001:db8::200", "[2001:db8:100::10]:53",
             "in_port=gnv-bravo,tun_id={key:#x},tun_ipv6_src=2001:db8::12,tun_ipv6_dst=2001:db8::11,"
             "dl_dst=0a:58:a9:fe:00:01,udp6,ipv6_src=2001:db8:1:1::2,ipv6_dst=2001:db8:100::10,nw_ttl=64,"
             "udp_src=40000,udp_dst=53"),
}


@pytest.mark.parametrize("family", sorted(GATEWAY_HOPS))
def test_trace_gateway_hop_on_the_gateway_uses_the_eips_tunnel_key_and_the_underlays_family(family):
    st, alloc = cart_cluster() if family == "IPv4" else ipv6_cluster()
    eip, dst, asked = GATEWAY_HOPS[family]
    sw = FakeSwitch({"br-int": ALPHA_TRACE})
    reports = {"alpha": {"time": NOW - 2, "held_eips": [eip]}}
    t = trace(FakeNode(st, alloc, "alpha", reports, sw, {}), "shop/cart-0", dst, "udp", gateway_hop=True)
    key = alloc.eip(eip).tunnel_key
    assert sw.asked == [asked.format(key=key)]
    (hop,) = t["hops"]
    assert hop["where"] == f"alpha br-int (gateway, over Geneve tun_id={key:#x})"
    if family == "IPv4":
        assert hop["datapath_actions"].startswith("ct(commit,zone=7100,nat(src=192.0.2.200))")


def test_trace_gateway_hop_for_an_unsteered_pod_says_there_is_none():
    st, alloc = cart_cluster()
    t = trace(FakeNode(st, alloc, "alpha", {}, FakeSwitch({}), {}), "shop/web-0", "198.51.100.10", "udp",
              gateway_hop=True)
    assert t["hops"][0]["explain"] == "not steered to a gateway: there is no gateway hop to trace"


def test_status_from_reports_alone_shows_liveness_by_age_and_bfd_from_the_report():
    st, alloc = cart_cluster()
    reports = {"alpha": {"time": NOW - 3, "held_eips": ["192.0.2.200"], "bfd": {"gnv-bravo": "up"},
                         "switches": {"br-int": {"connected": True, "flows": 25}}},
               "bravo": {"time": NOW - 95, "bfd": {"gnv-alpha": "down (not forwarding)"},
                         "error": "[Errno 30] Read-only file system: '/proc/sys/net/ipv4/conf/egw0/rp_filter'"}}
    env = FakeNode(st, alloc, None, reports, FakeSwitch({}), {})
    out = status_mod.summarize(alloc, reports, env.held(), st, env, now=NOW)
    by = {n["node"]: n for n in out["nodes"]}
    assert (by["alpha"]["agent_alive"], by["bravo"]["agent_alive"]) == (True, False)
    assert out["policies"][0]["held_by"] == "alpha"
    text = status_mod.render(out)
    assert "alpha      up (3s)" in text and "bravo      DOWN (95s)" in text
    assert "gnv-alpha=down (not forwarding)" in text and "gnv-bravo=up" in text
    assert "    error: [Errno 30] Read-only file system: '/proc/sys/net/ipv4/conf/egw0/rp_filter'" in text


def test_a_stale_report_holds_no_eip():
    st, alloc = cart_cluster()
    env = FakeNode(st, alloc, None, {"alpha": {"time": NOW - 31, "held_eips": ["192.0.2.200"]}}, None, {})
    assert env.held() == {}


def test_status_directory_of_a_standalone_node(tmp_path):
    st, alloc = cart_cluster()
    (tmp_path / "allocation.json").write_text(alloc.to_json())
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "alpha.json").write_text(json.dumps(
        {"node": "alpha", "time": NOW - 1, "held_eips": ["192.0.2.200"], "bfd": {"gnv-bravo": "up"}}))
    env = env_mod.ClusterEnv(status_dir=str(tmp_path), clock=lambda: NOW)
    assert env.allocation().eip("192.0.2.200").nodes == ("alpha",)
    assert env.held() == {"192.0.2.200": "alpha"}
    assert env.bfd("alpha", env.reports()["alpha"]) == {"gnv-bravo": "up"}
    with pytest.raises(FileNotFoundError):
        env.desired_flows("alpha")  # the agent wrote no flow record


def test_no_switch_here_is_a_clear_error(tmp_path):
    env = env_mod.ClusterEnv(status_dir=str(tmp_path), ovs_rundir=str(tmp_path / "ovs"))
    with pytest.raises(env_mod.EnvError, match=f"no Open vSwitch here: {tmp_path}/ovs/db.sock does not exist"):
        env.switch("alpha")


def parse(*argv):
    p = argparse.ArgumentParser()
    env_mod.add_arguments(p, "x")
    return p.parse_args(list(argv))


def test_flags_choose_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("NODE_NAME", "bravo")
    e = env_mod.from_args(parse("--status", str(tmp_path), "--ovs-rundir", "/run/x"))
    assert isinstance(e, env_mod.ClusterEnv) and e.local == "bravo" and e.ovs_rundir == "/run/x"
    assert e.records == str(tmp_path)  # standalone: the agent's records are in its --status directory
    from sdn_egress.lab import LabError
    with pytest.raises(LabError, match="no lab is up"):
        env_mod.from_args(parse("--lab-state", str(tmp_path / "nolab")))
    with pytest.raises(SystemExit):
        parse("--status", "a", "--kubeconfig", "b")  # one place to look, not two


def test_in_the_agents_pod_no_flag_means_in_cluster(monkeypatch, tmp_path):
    monkeypatch.setattr(env_mod, "in_pod", lambda: True)
    seen = {}

    def fake_client(kubeconfig, context):
        seen["args"] = (kubeconfig, context)
        raise RuntimeError("Service host/port is not set.")
    monkeypatch.setattr("sdn_egress.kube.client.api_client", fake_client)
    args = parse()
    with pytest.raises(env_mod.EnvError, match="no Kubernetes API client: Service host/port is not set."):
        env_mod.from_args(args)
    assert args.in_cluster and seen["args"] == (None, None)


def test_lease_times():
    assert env_mod.lease_time("2026-12-01T08:00:00.000000Z") == env_mod.lease_time("2026-12-01T08:00:00+00:00")
    assert env_mod.lease_time("") == 0.0 and env_mod.lease_time(None) == 0.0


def test_empty_allocation_is_no_policy():
    env = FakeNode(state(), Allocation(), None, {}, None, {})
    assert status_mod.summarize(env.allocation(), {}, {}, env.cluster_state(), env)["policies"] == []


def unanswered_kubeconfig(tmp_path, monkeypatch):
    """A kubeconfig naming an API server nobody answers for (not in a pod)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                          "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
                          "users: [{name: u, user: {token: t}}]\n"
                          "contexts: [{name: c, context: {cluster: c, user: u}}]\n")
    return kubeconfig


def test_this_nodes_records_need_no_api_server(tmp_path, monkeypatch):
    """`flows` in the agent's pod reads only this node's switch and records:
    making the environment asks nothing of the API server (here: nobody
    listens at its address)."""
    kubeconfig = unanswered_kubeconfig(tmp_path, monkeypatch)
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "alpha.flows.json").write_text(json.dumps({"node": "alpha", "owners": {"0x1": "x"}}))
    e = env_mod.from_args(parse("--kubeconfig", str(kubeconfig), "--records", str(tmp_path), "--here", "alpha"))
    assert e.desired_flows("alpha")["owners"] == {"0x1": "x"}
    with pytest.raises(env_mod.EnvError, match="the agent's flow record of node bravo is on bravo"):
        e.desired_flows("bravo")


def test_an_api_server_that_does_not_answer_is_named(tmp_path, monkeypatch):
    kubeconfig = unanswered_kubeconfig(tmp_path, monkeypatch)
    args = ["status", "--kubeconfig", str(kubeconfig)]
    from sdn_egress.cli import main
    import io
    import contextlib
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(args) == 1
    assert err.getvalue().startswith("status: the API server http://127.0.0.1:9 does not answer (ConfigMap "
                                     "sdn-egress/sdn-egress-allocation): "), err.getvalue()


def test_a_kubeconfig_on_a_machine_that_is_no_node_traces_only_the_policies():
    """An administrator's machine: the policies' answer from the API, and for
    the node's hops the command to run on the pod's node."""
    st, alloc = cart_cluster()
    e = FakeNode(st, alloc, None, {}, FakeSwitch({}), ROUTES)
    e.api = object()  # the cluster through the API: this machine is no node until told
    t = trace(e, "shop/cart-0", "198.51.100.10:53", "udp")
    assert t["policy"]["policy"] == "shop/cart"
    (hop,) = t["hops"]
    assert hop["where"] == "bravo kernel"
    assert hop["explain"].startswith("not traced from here: the routing of node bravo is on bravo, and this "
                                     "machine is no node it knows of ($NODE_NAME and --here unset)")
    assert hop["explain"].endswith("--field-selector spec.nodeName=bravo) -- sdn-egress trace --src shop/cart-0 "
                                   "--dst 198.51.100.10:53 --proto udp")
