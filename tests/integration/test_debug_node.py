"""`sdn-egress flows`, `trace` and `status` on a node that is not a lab:
one real OVS in a namespace, its agent in standalone mode, the commands
given only the node's OVS run directory and the agent's directories (as on
a real node), never the Lab object."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.test_agent import GATEWAY, POLICY, SDN_EGRESS, manifests, node, sh  # noqa: F401 (fixture)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def cli(node, *args) -> subprocess.CompletedProcess:
    where = ["--status", str(node.sdir), "--manifests", str(node.mdir), "--ovs-rundir", node.ovs.rundir]
    return subprocess.run(["ip", "netns", "exec", node.ns, SDN_EGRESS, *args, *where],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, NODE_NAME=""))


@pytest.fixture
def steered(node):
    node.write("cluster.yaml", manifests(
        [("alpha", {"egress": "true"})],
        [("shop", "cart-1", "alpha", "203.0.113.2", {"app": "cart"}),
         ("shop", "web-1", "alpha", "203.0.113.3", {"app": "web"})], [GATEWAY]))
    node.write("policy.yaml", [POLICY])
    node.allocate()
    # The pods' host side, Calico style: a /32 route to each through its veth.
    for i, ip in ((1, "203.0.113.2"), (2, "203.0.113.3")):
        sh("ip", "link", "add", f"cali{i}", "type", "veth", "peer", "name", f"pod{i}", ns=node.ns)
        for dev in (f"cali{i}", f"pod{i}"):
            sh("ip", "link", "set", dev, "up", ns=node.ns)
        sh("ip", "route", "add", f"{ip}/32", "dev", f"cali{i}", ns=node.ns)
    node.start_agent()
    wait_for(lambda: "lookup 7100" in sh("ip", "rule", ns=node.ns)
             and any("->eth_dst,output:3" in f for f in node.flows()), "the steering rule and the SNAT flows")
    return node


def test_trace_on_a_node_names_policy_eip_and_the_flows(steered):
    out = cli(steered, "trace", "--src", "shop/cart-1", "--dst", "198.51.100.10:8080", "--proto", "udp")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.startswith("shop/cart-1 -> 198.51.100.10: steered by policy shop/cart, egress IP 192.0.2.200, "
                           "gateways alpha\n"), text
    assert "[alpha kernel]\n  198.51.100.10 from 203.0.113.2 via 169.254.0.1 dev egw0 table 7100" in text
    assert "[alpha br-int]" in text and "[STEER policy shop/cart, pod shop/cart-1]" in text
    assert "nat(src=192.0.2.200)" in text  # this node is the gateway: SNAT on the same switch

    out = cli(steered, "trace", "--src", "shop/web-1", "--dst", "198.51.100.10", "--proto", "udp")
    assert out.returncode == 0, out.stderr
    assert "shop/web-1 -> 198.51.100.10: not steered: leaves with its node's IP" in out.stdout
    assert "policy shop/cart does not select the pod (selector app=cart; pod labels app=web)" in out.stdout
    assert "=> not steered: the node routes it itself" in out.stdout
    assert "[alpha br-int]" not in out.stdout


def test_flows_on_a_node_show_owners_and_drift(steered):
    out = cli(steered, "flows", "--node", "alpha", "--policy", "shop/cart")
    assert out.returncode == 0, out.stderr
    assert "== alpha br-int" in out.stdout and "STEER policy shop/cart, pod shop/cart-1" in out.stdout
    assert out.stdout.count("no drift: the switch holds exactly what the agent wants") == 2  # br-int, br-ex

    steered.stop_agent()  # nobody repairs the drift we make now
    steered.ovs.ofctl("add-flow", "br-int", "table=0,priority=5000,cookie=0x99,ip,nw_dst=198.51.100.99,actions=drop")
    steered.ovs.ofctl("--strict", "del-flows", "br-int",
                      "table=0,priority=1024,ip,in_port=1,nw_src=203.0.113.2,nw_dst=198.51.100.0/24")
    out = cli(steered, "flows", "--node", "alpha")
    assert out.returncode == 0, out.stderr
    assert "stale (on the switch, owned by nothing the agent wants): 1" in out.stdout
    assert "prio=5000 ip,nw_dst=198.51.100.99 cookie=0x99" in out.stdout
    assert "no object owns it" in out.stdout
    assert "missing (wanted, not on the switch): 1" in out.stdout
    missing = out.stdout.split("missing (wanted, not on the switch): 1\n", 1)[1].splitlines()[0]
    assert "203.0.113.2" in missing and "198.51.100.0/24" in missing


def test_status_on_a_node(steered):
    out = cli(steered, "status")
    assert out.returncode == 0, out.stderr
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("shop/cart ")]
    assert line.split() == ["shop/cart", "192.0.2.200", "alpha", "-", "alpha", "yes"]
    (agent,) = [l for l in out.stdout.splitlines() if l.startswith("alpha ")]
    assert agent.split()[1] == "up" and "br-int up" in agent


def test_the_switch_of_another_node_is_not_here(steered):
    out = subprocess.run(["ip", "netns", "exec", steered.ns, SDN_EGRESS, "flows", "--node", "bravo",
                          "--status", str(steered.sdir), "--ovs-rundir", steered.ovs.rundir],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ, NODE_NAME="alpha"))
    assert out.returncode == 1
    assert out.stderr.startswith("flows: the switch of node bravo is on bravo, and this is node alpha: "
                                 "run the command there"), out.stderr
