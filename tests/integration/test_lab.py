"""The lab itself: addressing, the CNI-like behaviour without any policy,
status, and that down removes everything, also after a crash."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest
import yaml

from sdn_egress.lab import Lab, LabError
from sdn_egress.lab.topology import TopologyError, parse

pytestmark = pytest.mark.integration

TOPO = {"nodes": [{"name": "alpha", "labels": {"egress": "true"}}, {"name": "bravo"}],
        "pods": [{"name": "a-0", "namespace": "ns1", "node": "alpha", "labels": {"app": "a"}},
                 {"name": "b-0", "namespace": "ns1", "node": "bravo"}],
        "externals": [{"name": "ext-1"}]}


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [l.split()[0] for l in out.splitlines() if l.split() and l.split()[0].startswith(prefix + "-")]


@pytest.fixture
def lab(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    topo = tmp_path / "topo.yaml"
    topo.write_text(yaml.safe_dump(TOPO))
    the_lab = Lab(str(tmp_path / "state"), prefix="selt" + uuid.uuid4().hex[:3])
    try:
        the_lab.up(str(topo), agents=False)
        yield the_lab
    finally:
        the_lab.down()


def test_without_policies_the_lab_behaves_like_a_cni(lab):
    st = lab.status()
    assert [(n["name"], n["ip"], n["pod_cidr"]) for n in st["nodes"]] == [
        ("alpha", "192.0.2.11", "203.0.113.0/27"), ("bravo", "192.0.2.12", "203.0.113.32/27")]
    assert {f"{p['namespace']}/{p['name']}": p["ip"] for p in st["pods"]} == {
        "ns1/a-0": "203.0.113.2", "ns1/b-0": "203.0.113.34"}
    assert st["externals"][0]["ip"] == "198.51.100.10"
    assert st["eip_range"] == "192.0.2.200-192.0.2.250" and st["underlay"] == "192.0.2.0/24"
    # natOutgoing: the external host sees the node IP.
    assert lab.tcp_source("ns1/a-0", "198.51.100.10") == "192.0.2.11"
    assert lab.udp_source("ns1/b-0", "198.51.100.10") == "192.0.2.12"
    assert lab.icmp_source("ns1/b-0", "ext-1") == "192.0.2.12"
    # Pod to pod across nodes: routed, pod IPs untouched.
    assert lab.udp_source_of("ns1/a-0", "ns1/b-0") == "203.0.113.2"
    # The node IP lives on br-ex (moved there from the uplink by ovs setup).
    addrs = lab.exec("alpha", ["ip", "-br", "addr", "show", "br-ex"]).stdout
    assert "192.0.2.11/24" in addrs


def test_label_apply_delete_edit_the_manifests(lab, tmp_path):
    lab.label("ns1/b-0", "app", "b")
    assert lab.pod_labels("b-0") == {"app": "b"}
    lab.label("ns1/b-0", "app", None)
    assert lab.pod_labels("b-0") == {}
    doc = tmp_path / "gw.yaml"
    doc.write_text("apiVersion: sdn-egress.io/v1alpha1\nkind: EgressGateway\nmetadata: {name: edge}\n"
                   "spec: {nodeSelector: {matchLabels: {egress: 'true'}}}\n")
    lab.apply(str(doc))
    assert os.path.exists(os.path.join(lab.manifests, "user", "gw.yaml"))
    assert lab.delete(str(doc)) == 1
    assert not os.path.exists(os.path.join(lab.manifests, "user", "gw.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    with pytest.raises(LabError, match="bad.yaml: not valid YAML"):
        lab.apply(str(bad))
    with pytest.raises(LabError, match="ambiguous|no pod"):
        lab.pod("nope")


def test_down_after_a_crash_removes_everything(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    topo = tmp_path / "topo.yaml"
    topo.write_text(yaml.safe_dump(TOPO))
    prefix = "selc" + uuid.uuid4().hex[:3]
    state = tmp_path / "state"
    # Bring the lab up from a separate process and kill it -9 mid-way: the
    # namespaces and OVS daemons it made so far must still be found and removed.
    code = ("import sys; from sdn_egress.lab import Lab;"
            f"Lab({str(state)!r}, prefix={prefix!r}).up({str(topo)!r}, agents=False)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        import time
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("n-bravo" in n for n in namespaces(prefix)):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert namespaces(prefix), "the lab had made nothing before the kill"
    finally:
        Lab(str(state), prefix=prefix).down()
    assert namespaces(prefix) == []
    assert not state.exists()
    ovs = subprocess.run(["pgrep", "-af", str(state)], capture_output=True, text=True).stdout
    assert ovs.strip() == ""


def test_a_dual_stack_lab_behaves_like_a_cni_in_both_families(tmp_path):
    """ipFamilies [IPv4, IPv6] (issue 12): every host has both families'
    addresses (status --json gives them all), pods are routed with their
    /32 and /128, the CNI masquerades both, the router forwards both without
    NAT, and the echo service answers TCP, UDP and ICMPv6 with the source."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    topo = tmp_path / "topo.yaml"
    topo.write_text(yaml.safe_dump({**TOPO, "ipFamilies": ["IPv4", "IPv6"],
                                    "externals": [{"name": "ext-1"}, {"name": "ext-2", "mtu": 1400}]}))
    lab = Lab(str(tmp_path / "state"), prefix="seld" + uuid.uuid4().hex[:3])
    try:
        lab.up(str(topo), agents=False)
        cli = os.path.join(os.path.dirname(sys.executable), "sdn-egress")
        st = yaml.safe_load(subprocess.run([cli, "lab", "--state-dir", lab.state_dir, "status", "--json"],
                                           capture_output=True, text=True, check=True).stdout)
        assert st["ip_families"] == ["IPv4", "IPv6"]
        assert [(n["name"], n["ips"], n["pod_cidrs"]) for n in st["nodes"]] == [
            ("alpha", ["192.0.2.11", "2001:db8::11"], ["203.0.113.0/27", "2001:db8:113::/64"]),
            ("bravo", ["192.0.2.12", "2001:db8::12"], ["203.0.113.32/27", "2001:db8:113:1::/64"])]
        assert {f"{p['namespace']}/{p['name']}": p["ips"] for p in st["pods"]} == {
            "ns1/a-0": ["203.0.113.2", "2001:db8:113::2"], "ns1/b-0": ["203.0.113.34", "2001:db8:113:1::2"]}
        assert [x["ips"] for x in st["externals"]] == [["198.51.100.10", "2001:db8:100::10"],
                                                      ["198.51.100.11", "2001:db8:100::11"]]
        assert st["families"]["IPv6"]["router"] == {"underlay_ip": "2001:db8::1", "external_ip": "2001:db8:100::1"}
        for ext in ("2001:db8:100::10", "2001:db8:100::11"):  # on the LAN, and behind its own narrow link
            assert lab.tcp_source("ns1/a-0", ext) == "2001:db8::11"
            assert lab.udp_source("ns1/b-0", ext) == "2001:db8::12"
        assert lab.icmp_source("ns1/b-0", "ext-1", family="IPv6") == "2001:db8::12"
        assert lab.icmp_source("ns1/b-0", "ext-1", family="IPv4") == "192.0.2.12"
        assert lab.tcp_source("ns1/a-0", "198.51.100.10") == "192.0.2.11"
        # Pod to pod across nodes, IPv6: routed by the nodes' /64 routes, the pod's address untouched.
        assert lab.udp_source_of("ns1/a-0", "ns1/b-0", family="IPv6") == "2001:db8:113::2"
        # The router forwards without NAT: an external host reaching a node sees the external's address.
        assert lab.udp_source_of("ext-1", "alpha", family="IPv6") == "2001:db8:100::10"
        # The node IPs live on br-ex (moved there by ovs setup), and exactly that node answers NS for its own.
        assert "2001:db8::11/64" in lab.exec("alpha", ["ip", "-br", "addr", "show", "br-ex"]).stdout
        mac = lab.exec("alpha", ["cat", "/sys/class/net/br-ex/address"]).stdout.strip()
        assert lab.nd_answers("2001:db8::11") == [mac]
        assert lab.nd_answers("2001:db8::250") == []  # nobody claims an unused EIP
    finally:
        lab.down()
    assert namespaces(lab.prefix) == []


@pytest.mark.parametrize("doc, message", [
    ({"nodes": []}, "nodes: at least one node"),
    ({"nodes": [{"name": "Alpha"}]}, "nodes[0].name: required, a lower-case DNS label"),
    ({"nodes": [{"name": "a"}], "pods": [{"name": "p", "namespace": "n", "node": "zz"}]},
     "pods[0].node: no node named 'zz'"),
    ({"nodes": [{"name": "a", "labels": {"egress": True}}]}, "nodes[0].labels.egress: label values must be strings"),
    ({"nodes": [{"name": "a", "colour": "red"}]}, "nodes[0]: unknown field 'colour'"),
    ({"nodes": [{"name": "a"}], "ipFamilies": ["IPv4", "ipv6"]}, "ipFamilies[1]: 'ipv6' is not IPv4 or IPv6"),
])
def test_bad_topology_names_the_field(doc, message):
    with pytest.raises(TopologyError) as err:
        parse(doc)
    assert message in str(err.value)


def test_lab_cli_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text(yaml.safe_dump({"nodes": [{"name": "a"}], "pods": [{"name": "p", "namespace": "n", "node": "q"}]}))
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "sdn-egress"), "lab", "--state-dir",
                           str(tmp_path / "s"), "up", "--topology", str(bad), "--prefix", "selx"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "pods[0].node: no node named 'q'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert namespaces("selx") == []
