"""The agent's flow record read against a switch's dump: a flow the agent
wants reads the same from its record (``to_ofctl``) as from the dump, where
ovs-ofctl prints it in its own shorthand (``udp``, ``tp_dst``, ``icmp6``,
``icmp_type``); ``ovs-ofctl parse-flow`` is the judge of that shorthand."""
from __future__ import annotations

import shutil
import subprocess

import netaddr
import pytest

from flows import gateway, nd, uplink
from flows.render import to_ofctl
from flows.view import HeldEip, NodeView, Ports
from sdn_egress.reports.flowrecords import flow_key, parse_ofctl

VIEW = NodeView(node="alpha", node_ip=netaddr.IPAddress("192.0.2.11"),
                ports=Ports(egw=1, tun_flow=2, int_patch=3, uplink=1, ex_patch=2),
                egw_mac="02:00:00:00:00:01", brex_mac="02:00:00:00:00:02", gateway_node=True,
                held=(HeldEip(eip=netaddr.IPAddress("2001:db8::200"), tunnel_key=1, next_hop_mac="02:00:00:00:00:fe"),
                      HeldEip(eip=netaddr.IPAddress("192.0.2.11"), tunnel_key=2, next_hop_mac="02:00:00:00:00:fe",
                              node_ip=True)))


def key(parsed: dict) -> tuple:
    return flow_key(parsed["table"], parsed["priority"], parsed["match"])


def as_ovs_prints_it(text: str) -> str:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "parse-flow", text], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    rest = out.partition(" ADD ")[2]
    table = text.split(",", 1)[0]  # parse-flow leaves table 0 out, and says cookie:X (a dump: cookie=X)
    return f"{table}," + " ".join(t for t in rest.split(" ") if not t.startswith("cookie:"))


@pytest.mark.skipif(shutil.which("ovs-ofctl") is None, reason="needs ovs-ofctl (the bootstrap installs it)")
@pytest.mark.parametrize("flows", [gateway.senders, nd.flows, uplink.flows], ids=["sender", "nd", "uplink"])
def test_a_wanted_flow_reads_the_same_from_the_record_and_from_the_dump(flows):
    wanted = flows(VIEW)
    assert wanted
    for f in wanted:
        record = to_ofctl(f)
        assert key(parse_ofctl(record)) == key(parse_ofctl(as_ovs_prints_it(record))), record


def test_the_shorthand_is_the_long_form():
    dump = parse_ofctl("table=0,priority=110,udp,tun_id=0,in_port=2,nw_dst=169.254.1.0,tp_dst=3784 actions=drop")
    record = parse_ofctl("table=0,priority=110,ip,in_port=2,nw_proto=0x11,nw_dst=169.254.1.0,tun_id=0x0,"
                         "udp_dst=0xec8,actions=drop")
    assert key(dump) == key(record)
    other = parse_ofctl("table=0,priority=110,tcp,tun_id=0,in_port=2,nw_dst=169.254.1.0,tp_dst=3784 actions=drop")
    assert key(other) != key(record)
