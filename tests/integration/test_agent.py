"""The agent against one real OVS (userspace datapath) in a namespace: the
flows it installs are exactly what flows.build() says, a second pass changes
nothing, drift is repaired, a deleted policy leaves nothing, and a restart
does not touch flows that are still right."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid

import pytest
import yaml

from ovs_setup.daemons import OvsInstance
from tests.support import objects
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SDN_EGRESS = os.path.join(os.path.dirname(sys.executable), "sdn-egress")


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    return subprocess.run(full, check=check, capture_output=True, text=True).stdout


def manifests(nodes, pods, extra=()):
    return ([objects.node(name, i, ready=None, labels=labels) for i, (name, labels) in enumerate(nodes)]
            + [objects.pod(ns, name, node, ip, containers=False, **labels) for ns, name, node, ip, labels in pods]
            + list(extra))


GATEWAY = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
           "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                    "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"]}}}
POLICY = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressPolicy",
          "metadata": {"name": "cart", "namespace": "shop"},
          "spec": {"egressGatewayName": "edge", "appliedTo": {"podSelector": {"matchLabels": {"app": "cart"}}},
                   "destSubnet": ["198.51.100.0/24"]}}


class Node:
    """One node namespace with its own OVS and an uplink to a router namespace."""

    def __init__(self, tmp_path, name: str, ip: str):
        tag = uuid.uuid4().hex[:4]
        self.ns, self.rns = f"seag{tag}", f"seagr{tag}"
        self.name, self.ip = name, ip
        self.dir = tmp_path
        self.mdir, self.sdir = tmp_path / "manifests", tmp_path / "status"
        self.mdir.mkdir(), self.sdir.mkdir()
        self.ovs = OvsInstance(str(tmp_path / "ovs"), netns=self.ns)
        self.agent = None

    def up(self):
        sh("ip", "netns", "add", self.ns)
        sh("ip", "netns", "add", self.rns)
        sh("ip", "link", "add", "eth0", "netns", self.ns, "type", "veth", "peer", "name", "up0", "netns", self.rns)
        for ns, dev, addr in ((self.ns, "eth0", f"{self.ip}/24"), (self.rns, "up0", "192.0.2.1/24")):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "addr", "add", addr, "dev", dev, ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
            sh("ethtool", "-K", dev, "tx", "off", ns=ns, check=False)
        sh("ip", "route", "add", "default", "via", "192.0.2.1", ns=self.ns)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", ns=self.ns)
        self.ovs.start()
        sh(sys.executable, "-c",
           "import sys; from ovs_setup.node import NodeBridges, setup_node;"
           f"setup_node(NodeBridges(db_target={self.ovs.db_target!r}, uplink='eth0'))", ns=self.ns)

    def write(self, name, docs):
        tmp = self.mdir / f".{name}.tmp"
        tmp.write_text(yaml.safe_dump_all(docs))
        os.replace(tmp, self.mdir / name)

    def remove(self, name):
        os.unlink(self.mdir / name)

    def allocate(self):
        from sdn_egress.allocation import FileAllocationStore
        from sdn_egress.controller import Controller
        from sdn_egress.source import ManifestDirSource
        return Controller(ManifestDirSource(str(self.mdir)), FileAllocationStore(str(self.sdir))).reconcile()

    def start_agent(self):
        self.log = open(self.dir / "agent.log", "ab")
        self.agent = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, SDN_EGRESS, "agent", "--node", self.name,
             "--manifests", str(self.mdir), "--status", str(self.sdir), "--ovs-db", self.ovs.db_target,
             "--resync-interval", "1"], stdout=self.log, stderr=subprocess.STDOUT)

    def stop_agent(self):
        if self.agent and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.agent = None

    def agent_status(self) -> dict:
        try:
            return json.loads((self.sdir / "nodes" / f"{self.name}.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def log_text(self) -> str:
        return (self.dir / "agent.log").read_text()

    def flows(self, bridge="br-int") -> list[str]:
        out = self.ovs.ofctl("-O", "OpenFlow14", "dump-flows", bridge, "--no-stats")
        return [l.strip() for l in out.splitlines() if "actions=" in l]

    def down(self):
        self.stop_agent()
        log = self.dir / "agent.log"
        if log.exists():  # shown by pytest when the test failed
            print("---- agent log ----\n" + log.read_text()[-6000:])
        try:
            self.ovs.stop()
        finally:
            for ns in (self.ns, self.rns):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)


STOP_BOUND = 8  # seconds: a stop ends the pass under way (at most 5 s), then the process


@pytest.fixture
def node(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    n = Node(tmp_path, "alpha", "192.0.2.11")
    try:
        n.up()
        yield n
    finally:
        n.down()


def test_agent_installs_exactly_the_pipeline_and_keeps_it(node):
    node.write("cluster.yaml", manifests(
        [("alpha", {"egress": "true"}), ("bravo", {})],
        [("shop", "cart-1", "alpha", "203.0.113.2", {"app": "cart"}),
         ("shop", "web-1", "alpha", "203.0.113.3", {"app": "web"})],
        [GATEWAY]))
    node.write("policy.yaml", [POLICY])
    node.allocate()
    node.start_agent()
    status = wait_for(lambda: node.agent_status().get("passes", 0) >= 2 and node.agent_status(),
                      "two agent passes")
    assert status["switches"]["br-int"]["connected"] and status["switches"]["br-ex"]["connected"]
    # The next hop's MAC is resolved by ARP through br-ex once its flows are in.
    dump = wait_for(lambda: [f for f in node.flows() if "->eth_dst,output:3" in f] and node.flows(),
                    "SNAT output towards the resolved next hop")
    # The gateway's own selected pod is classified and SNATed to the EIP.
    assert any("nw_src=203.0.113.2" in f and "nw_dst=198.51.100.0/24" in f for f in dump)
    assert not any(re.search(r"nw_src=203\.0\.113\.3\b", f) for f in dump)
    assert any("nat(src=192.0.2.200)" in f for f in dump)
    assert any("arp_tpa=192.0.2.200" in f for f in node.flows("br-ex"))
    # Steering rule in the node's kernel.
    rules = sh("ip", "rule", ns=node.ns)
    assert re.search(r"from 203\.0\.113\.2 to 198\.51\.100\.0/24 lookup 7100", rules), rules
    assert not re.search(r"from 203\.0\.113\.3\b.*lookup 7100", rules)
    # The new-pod hold: both classified pods released to the main table (by
    # address: this node has no per-pod routes), the rest of the CIDR held.
    assert re.search(r"7200:\s+from 203\.0\.113\.3 lookup main", rules), rules
    assert re.search(r"7220:\s+from 203\.0\.113\.0/27 blackhole", rules), rules
    # Full-size packets: the steering route carries the tunnel MTU (the
    # uplink's 1500 - 50 of IPv4 Geneve), the MSS of TCP through egw0 is
    # clamped both ways, and the agent reports both.
    assert "mtu 1450" in sh("ip", "route", "show", "table", "7100", ns=node.ns)
    assert (node.agent_status()["tunnel_mtu"], node.agent_status()["mss"]) == (1450, 1410)
    # A later pass finds nothing to change.
    passes = node.agent_status()["passes"]
    wait_for(lambda: node.agent_status()["passes"] >= passes + 2, "two more passes")
    assert node.flows() == dump
    clamp = [line for line in sh("iptables", "-t", "mangle", "-S", "SDN-EGRESS-MSS", ns=node.ns).splitlines()
             if line.startswith("-A")]
    assert sorted(line.split()[2] for line in clamp) == ["-i", "-o"], clamp  # once each, after many passes
    assert all("--set-mss 1410" in line and "egw0" in line for line in clamp), clamp

    # Drift: a flow injected by hand is removed at the next full resync (1 s).
    node.ovs.ofctl("-O", "OpenFlow14", "add-flow", "br-int", "table=0,priority=5000,cookie=0x99,ip,nw_dst=198.51.100.99,actions=drop")
    wait_for(lambda: not any("198.51.100.99" in f for f in node.flows()), "injected flow removed")
    # ... and a deleted one comes back.
    node.ovs.ofctl("-O", "OpenFlow14", "--strict", "del-flows", "br-int", "table=0,priority=1024,ip,in_port=1,nw_src=203.0.113.2,nw_dst=198.51.100.0/24")
    wait_for(lambda: any("nw_src=203.0.113.2" in f for f in node.flows()), "deleted flow restored")

    # Restart: flows that are still right are not touched (no flow added or removed).
    # SIGTERM ends the agent by itself (exit 0, the pod's grace period not
    # spent waiting for a SIGKILL), its flows left on the switch.
    node.agent.terminate()
    assert node.agent.wait(STOP_BOUND) == 0
    assert node.log_text().rstrip().endswith("agent alpha: stopped")
    before = node.flows()
    assert before == dump
    mark = len(node.log_text())
    node.start_agent()
    wait_for(lambda: node.agent_status().get("passes", 0) >= 1 and
             node.agent_status().get("pid") == node.agent.pid, "restarted agent pass")
    assert node.flows() == before
    assert "flows added or replaced" not in node.log_text()[mark:]

    # Policy deleted: nothing of it is left on the switch or in the kernel.
    node.remove("policy.yaml")
    node.allocate()
    wait_for(lambda: not any("192.0.2.200" in f for f in node.flows() + node.flows("br-ex")),
             "EIP flows removed")
    assert not any("203.0.113.2" in f and "nw_src" in f for f in node.flows())
    wait_for(lambda: "lookup 7100" not in sh("ip", "rule", ns=node.ns), "steering rule removed")


def test_broken_manifest_keeps_the_last_good_state(node):
    node.write("cluster.yaml", manifests([("alpha", {"egress": "true"})],
                                         [("shop", "cart-1", "alpha", "203.0.113.2", {"app": "cart"})],
                                         [GATEWAY]))
    node.write("policy.yaml", [POLICY])
    node.allocate()
    node.start_agent()
    before = wait_for(lambda: any("->eth_dst,output:3" in f for f in node.flows()) and node.flows(),
                      "SNAT flow towards the resolved next hop")
    (node.mdir / "junk.yaml").write_text("kind: [unclosed\n")
    bad = dict(POLICY, metadata={"name": "bad", "namespace": "shop"},
               spec=dict(POLICY["spec"], destSubnet=["198.51.100.0/33"]))
    node.write("bad.yaml", [bad])
    node.allocate()
    passes = node.agent_status()["passes"]
    wait_for(lambda: node.agent_status()["passes"] >= passes + 2, "passes after the bad input")
    assert node.agent.poll() is None, "agent died on bad input"
    assert node.flows() == before



def test_openflow_only_over_the_agents_unix_socket(node):
    """The bridges reach the agent over a Unix socket in the OVS run
    directory; nothing listens on TCP, and a process without root's file
    rights cannot connect (it can neither pose as a switch nor reach the
    agent's OpenFlow endpoint)."""
    node.write("cluster.yaml", manifests([("alpha", {"egress": "true"})],
                                         [("shop", "cart-1", "alpha", "203.0.113.2", {"app": "cart"})],
                                         [GATEWAY]))
    node.allocate()
    node.start_agent()
    wait_for(lambda: node.agent_status().get("switches", {}).get("br-int", {}).get("connected"),
             "br-int connected to the agent")
    sock = os.path.join(node.ovs.rundir, "sdn-egress.sock")
    for br in ("br-int", "br-ex"):
        assert node.ovs.vsctl("get-controller", br).strip() == f"unix:{sock}"
    st = os.stat(sock)
    assert (st.st_uid, oct(st.st_mode & 0o777)) == (0, "0o600")
    # No TCP listener in the node's namespace (OpenFlow's 6653/6633 included).
    assert sh("ss", "-Hltn", ns=node.ns).strip() == ""
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e: print(type(e).__name__)\n")
    as_nobody = subprocess.run(["ip", "netns", "exec", node.ns, "setpriv", "--reuid=65534", "--regid=65534",
                                "--clear-groups", sys.executable, "-c", probe, sock],
                               capture_output=True, text=True, timeout=30)
    assert as_nobody.stdout.strip() == "PermissionError", as_nobody.stderr
    # A second agent on the node refuses to start rather than steal the socket.
    second = subprocess.run(["ip", "netns", "exec", node.ns, SDN_EGRESS, "agent", "--node", node.name,
                             "--manifests", str(node.mdir), "--status", str(node.sdir),
                             "--ovs-db", node.ovs.db_target], capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert f"--listen punix:{sock}: another process listens there already" in second.stderr
    assert node.agent.poll() is None and node.agent_status()["switches"]["br-int"]["connected"]


def test_refused_sysctl_writes_are_reported_and_the_flows_stay(node):
    """As in a container that is not privileged: /proc/sys read-only. The
    agent cannot set rp_filter on egw0, so it installs no steering rule; it
    says so in its report (and `sdn-egress status`), keeps running and keeps
    its flows, rather than silently steering nothing."""
    node.write("cluster.yaml", manifests([("alpha", {"egress": "true"})],
                                         [("shop", "cart-1", "alpha", "203.0.113.2", {"app": "cart"})],
                                         [GATEWAY]))
    node.write("policy.yaml", [POLICY])
    node.allocate()
    sh("sysctl", "-qw", "net.ipv4.conf.egw0.rp_filter=1", ns=node.ns)  # strict: the agent must change it
    node.log = open(node.dir / "agent.log", "ab")
    agent = [SDN_EGRESS, "agent", "--node", node.name, "--manifests", str(node.mdir), "--status", str(node.sdir),
             "--ovs-db", node.ovs.db_target, "--resync-interval", "1"]
    node.agent = subprocess.Popen(
        ["ip", "netns", "exec", node.ns, "unshare", "-m", "sh", "-c",
         'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"', "sh", *agent],
        stdout=node.log, stderr=subprocess.STDOUT)
    want = "cannot write 2 to /proc/sys/net/ipv4/conf/egw0/rp_filter (Read-only file system)"
    # The first report may come before the bridges have connected: wait for
    # a report with both the refused write and br-int connected.
    status = wait_for(lambda: (lambda st: st if want in (st.get("error") or "")
                               and st["switches"]["br-int"]["connected"] else None)(node.agent_status()),
                      "the refused write in the report of an agent with br-int connected")
    assert status["switches"]["br-int"]["connected"]
    wait_for(lambda: any("nw_src=203.0.113.2" in f and "nw_dst=198.51.100.0/24" in f for f in node.flows()),
             "the policy's flows on br-int")
    assert "lookup 7100" not in sh("ip", "rule", ns=node.ns)
    assert sh("sysctl", "-n", "net.ipv4.conf.egw0.rp_filter", ns=node.ns).strip() == "1"
    out = subprocess.run([SDN_EGRESS, "status", "--status", str(node.sdir)], capture_output=True, text=True)
    assert out.returncode == 0 and f"    error: {want}" in out.stdout, out.stdout + out.stderr
    assert node.agent.poll() is None
