"""ovs_setup against a throwaway ovsdb-server + ovs-vswitchd in a namespace:
what it creates, that twice is once, tunnels follow the peer set, and the
uplink's address and routes move onto br-ex and back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from ovs_setup import ovsdb
from ovs_setup.daemons import OvsInstance

pytestmark = pytest.mark.integration
SDN_EGRESS = os.path.join(os.path.dirname(sys.executable), "sdn-egress")


def sh(ns, *cmd, check=True):
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=check)


@pytest.fixture
def node(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ns = "ovst-" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    ovs = OvsInstance(str(tmp_path / "ovs"), netns=ns)
    try:
        sh(ns, "ip", "link", "set", "lo", "up")
        sh(ns, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "wire0")
        for dev in ("eth0", "wire0"):
            sh(ns, "ip", "link", "set", dev, "up")
        sh(ns, "ip", "addr", "add", "192.0.2.21/24", "dev", "eth0")
        sh(ns, "ip", "route", "add", "default", "via", "192.0.2.1")
        ovs.start()
        yield ns, ovs
    finally:
        ovs.stop()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def cli(ns, ovs, *args, check=True):
    return sh(ns, SDN_EGRESS, "ovs", "--db", ovs.db_target, *args, check=check)


def test_setup_creates_the_bridges_and_is_idempotent(node):
    ns, ovs = node
    cli(ns, ovs, "setup", "--uplink", "eth0")
    first = ovs.vsctl("show")
    dump1 = ovs.vsctl("--format=json", "list", "Interface")
    cli(ns, ovs, "setup", "--uplink", "eth0")
    assert ovs.vsctl("show") == first
    assert ovs.vsctl("list-br").split() == ["br-ex", "br-int"]
    assert sorted(ovs.vsctl("list-ports", "br-int").split()) == ["egw0", "gnv-flow", "patch-int-ex"]
    assert sorted(ovs.vsctl("list-ports", "br-ex").split()) == ["eth0", "patch-ex-int"]
    for br in ("br-int", "br-ex"):
        assert ovs.vsctl("get", "Bridge", br, "datapath_type").strip() == "netdev"
        assert ovs.vsctl("get", "Bridge", br, "fail_mode").strip() == "secure"
        # The agent's Unix socket in the OVS run directory, not TCP.
        assert ovs.vsctl("get-controller", br).strip() == f"unix:{ovs.rundir}/sdn-egress.sock"
    assert ovs.vsctl("get", "Interface", "gnv-flow", "options").strip() == '{key=flow, remote_ip=flow}'
    # Packet-ins to the agent are rate-limited on both bridges (oversized
    # packets to an EIP are the only ones it takes).
    limits = json.loads(ovs.vsctl("--format=json", "--columns=controller_rate_limit,controller_burst_limit",
                                  "list", "Controller"))["data"]
    assert limits == [[1000, 250], [1000, 250]], limits
    assert ovs.vsctl("get", "Interface", "egw0", "ofport").strip() == "1"
    # Same rows, same uuids: nothing was recreated.
    assert json.loads(ovs.vsctl("--format=json", "list", "Interface"))["data"].__len__() == \
        json.loads(dump1)["data"].__len__()
    # The node address and default route moved to br-ex.
    assert "192.0.2.21/24" in sh(ns, "ip", "-br", "addr", "show", "br-ex").stdout
    assert "192.0.2.21" not in sh(ns, "ip", "-br", "addr", "show", "eth0").stdout
    assert "default via 192.0.2.1 dev br-ex" in sh(ns, "ip", "route").stdout
    shown = json.loads(cli(ns, ovs, "show", "--json").stdout)
    assert shown["br-int"]["ports"]["gnv-flow"]["options"] == {"key": "flow", "remote_ip": "flow"}
    assert shown["br-ex"]["controllers"] == [{"target": f"unix:{ovs.rundir}/sdn-egress.sock", "connected": False}]

    cli(ns, ovs, "teardown", "--uplink", "eth0")
    assert ovs.vsctl("list-br").split() == []
    assert "192.0.2.21/24" in sh(ns, "ip", "-br", "addr", "show", "eth0").stdout
    assert "default via 192.0.2.1 dev eth0" in sh(ns, "ip", "route").stdout


def test_tunnels_follow_the_peer_set(node):
    ns, ovs = node
    cli(ns, ovs, "setup")
    api = ovsdb.connect(ovs.db_target)
    ovsdb.sync_tunnels(api, "br-int", {"alpha": "192.0.2.11", "bravo": "192.0.2.12"},
                       bfd={"enable": "true", "min_tx": "100", "min_rx": "100"})
    ports = set(ovs.vsctl("list-ports", "br-int").split())
    assert {"gnv-alpha", "gnv-bravo", "gnv-flow"} <= ports
    assert ovs.vsctl("get", "Interface", "gnv-alpha", "options:remote_ip").strip() == '"192.0.2.11"'
    assert ovs.vsctl("get", "Interface", "gnv-alpha", "bfd:min_tx").strip() == '"100"'
    ovsdb.sync_tunnels(api, "br-int", {"alpha": "192.0.2.31"})
    ports = set(ovs.vsctl("list-ports", "br-int").split())
    assert "gnv-bravo" not in ports and "gnv-alpha" in ports
    assert ovs.vsctl("get", "Interface", "gnv-alpha", "options:remote_ip").strip() == '"192.0.2.31"'
    long = ovsdb.tunnel_port_name("a-very-long-node-name-indeed")
    assert len(long) <= 15 and long == ovsdb.tunnel_port_name("a-very-long-node-name-indeed")
    assert set(ovsdb.ofports(api, "br-int")) >= {"egw0", "gnv-flow", "gnv-alpha"}
    # A tunnel's bfd is exactly what the last sync asked for: a key left out
    # (cpath_down once a healed gateway has rejoined, all of it with BFD off)
    # is gone. OVSDB map columns are merged by db_set: cpath_down stayed, and
    # the peers kept seeing the rejoined node not forwarding.  (Here, not in a
    # test of its own: ovsdbapp keeps one connection per process.)
    bfd = {"enable": "true", "min_tx": "100", "min_rx": "100"}
    ovsdb.sync_tunnels(api, "br-int", {"alpha": "192.0.2.31"}, bfd={**bfd, "cpath_down": "true"})
    assert ovs.vsctl("get", "Interface", "gnv-alpha", "bfd:cpath_down").strip() == '"true"'
    ovsdb.sync_tunnels(api, "br-int", {"alpha": "192.0.2.31"}, bfd=bfd)
    assert ovs.vsctl("get", "Interface", "gnv-alpha", "bfd").strip() == '{enable="true", min_rx="100", min_tx="100"}'
    ovsdb.sync_tunnels(api, "br-int", {"alpha": "192.0.2.31"})
    assert ovs.vsctl("get", "Interface", "gnv-alpha", "bfd").strip() == "{}"
    _a_sync_that_changes_nothing_writes_nothing(api, ovs)
    _the_agents_reads_follow_the_database(api, ovs)


def _a_sync_that_changes_nothing_writes_nothing(api, ovs):
    """A gateway has a port to every node: a sync writes only the ports that
    differ (at 1,000 ports, rewriting all cost the agent seconds)."""
    bfd = {"enable": "true", "min_tx": "100", "min_rx": "100"}
    peers = {f"w{i}": f"198.51.100.{10 + i}" for i in range(20)}
    ovsdb.sync_tunnels(api, "br-int", peers, bfd=bfd)
    opened = []
    real = api.transaction
    api.transaction = lambda *a, **k: opened.append(1) or real(*a, **k)
    try:
        ovsdb.sync_tunnels(api, "br-int", peers, bfd=bfd)
        assert opened == []
        ovsdb.sync_tunnels(api, "br-int", {**peers, "w3": "198.51.100.99"}, bfd=bfd)
        assert opened == [1]
    finally:
        api.transaction = real
    assert ovs.vsctl("get", "Interface", "gnv-w3", "options:remote_ip").strip() == '"198.51.100.99"'
    assert ovs.vsctl("get", "Interface", "gnv-w4", "bfd:min_tx").strip() == '"100"'


def _the_agents_reads_follow_the_database(api, ovs):
    """The agent's reads of every port (BFD states every 50 ms) are taken
    again only when the IDL's replica changed, and always then."""
    from sdn_egress.agent.nodedb import OvsdbNode

    # What ovs-vswitchd rewrites every 5 s by itself is not replicated (a
    # gateway has thousands of interfaces); what the agent reads is.
    columns = api.idl.tables["Interface"].columns
    assert "statistics" not in columns and {"ofport", "bfd_status", "bfd", "options"} <= set(columns)
    node = OvsdbNode(ovs.db_target)
    node._api = api  # ovsdbapp keeps one connection per process
    reads = []
    real = ovsdb.bfd_status
    ovsdb.bfd_status = lambda *a: reads.append(1) or real(*a)
    try:
        for _ in range(5):  # a window in which the replica stays (statistics land every 5 s)
            seqno, n = api.idl.change_seqno, len(reads)
            first, second = node.bfd_status("br-int"), node.bfd_status("br-int")
            if api.idl.change_seqno == seqno:
                assert len(reads) == n + 1 and first == second
                break
        else:
            pytest.fail("the IDL changed during every try")
    finally:
        ovsdb.bfd_status = real
    assert "gnv-w5" in node.ofports("br-int")
    ovsdb.sync_tunnels(api, "br-int", {"alpha": "192.0.2.31", "charlie": "192.0.2.33"})
    ports = node.ofports("br-int")
    assert "gnv-charlie" in ports and "gnv-w5" not in ports


def test_a_missing_uplink_is_one_clear_error(node):
    ns, ovs = node
    proc = cli(ns, ovs, "setup", "--uplink", "nosuch0", check=False)
    assert proc.returncode == 1
    assert "uplink: interface nosuch0 does not exist" in proc.stderr
    assert ovs.vsctl("list-br").split() == []  # refused before anything changed
    assert "Traceback" not in proc.stderr


def test_an_unreachable_database_is_one_clear_error(tmp_path):
    proc = subprocess.run([SDN_EGRESS, "ovs", "--db", f"unix:{tmp_path}/nothing.sock", "show"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "cannot reach OVSDB" in proc.stderr and "Traceback" not in proc.stderr


def test_the_tools_reach_an_ovs_started_the_distributions_way(tmp_path):
    """On a real node ovs-vswitchd's control socket is RUNDIR/ovs-vswitchd.PID.ctl
    (no --unixctl): trace's ovs-appctl must find it through the pidfile."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    ns = "ovsd-" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rundir = tmp_path / "run"
    rundir.mkdir()
    env = dict(os.environ, OVS_RUNDIR=str(rundir), OVS_DBDIR=str(rundir), OVS_LOGDIR=str(rundir))
    db, sock = str(rundir / "conf.db"), str(rundir / "db.sock")
    pids = []
    try:
        subprocess.run(["ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"], check=True, env=env)
        for cmd in (["ovsdb-server", db, f"--remote=punix:{sock}", f"--pidfile={rundir}/ovsdb-server.pid",
                     "--detach", f"--log-file={rundir}/ovsdb-server.log"],
                    ["ovs-vswitchd", f"unix:{sock}", f"--pidfile={rundir}/ovs-vswitchd.pid", "--detach",
                     f"--log-file={rundir}/ovs-vswitchd.log"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True, env=env, timeout=30)
            pids.append(int((rundir / f"{cmd[0]}.pid").read_text()))
        ovs = OvsInstance(str(rundir))  # as sdn-egress flows/trace see a node: its run directory only
        assert not (rundir / "ovs-vswitchd.ctl").exists()
        assert (rundir / f"ovs-vswitchd.{pids[1]}.ctl").exists()
        assert "ovs-vswitchd (Open vSwitch)" in ovs.appctl("version")
        ovs.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev")
        assert "bridge(\"br-int\")" in ovs.appctl("ofproto/trace", "br-int", "in_port=LOCAL")
    finally:
        from ovs_setup.daemons import terminate
        for pid in reversed(pids):
            terminate(pid)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
