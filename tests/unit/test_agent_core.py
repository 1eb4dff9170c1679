"""The agent core run pass by pass against fakes, as faucet tests its Valve: a
real state source and allocation (files), a fake OVSDB, fake switches holding
flows in memory (fakeswitch.FakeBridge), fake host routing.  What is asserted
is what a user would notice: the flows the switches hold, where packets go,
the gratuitous ARPs sent, the EIPs the node reports holding."""
from __future__ import annotations

import dataclasses
import json
import threading
import time

import netaddr
import pytest
import yaml
from fakeswitch import FakeBridge, arp_request, ip_packet

import flows
from flows import cookie as C
from flows.records import Drop
from flows.tables import table_names
from flows.view import GW_MAC
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ovs_setup.ovsdb import tunnel_port_names
from sdn_egress.agent.core import AgentConfig, AgentCore, NotReady
from sdn_egress.agent.facts import NodeReader
from sdn_egress.allocation import FileAllocationStore
from sdn_egress.backoff import Backoff
from sdn_egress.controller import Controller
from sdn_egress.reports import AgentReports, FileStatusWriter
from sdn_egress.source import ManifestDirSource
from tests.support.waiting import wait_for

EIP = "192.0.2.200"
ROUTER = "192.0.2.1"
ROUTER_MAC = "02:00:00:00:ff:01"
EXTERNAL = "198.51.100.10"
CART = "203.0.113.66"  # shop/cart-0 on charlie
NODES = {"alpha": "192.0.2.11", "bravo": "192.0.2.12", "charlie": "192.0.2.13"}
PORTS = {"br-int": {"br-int": 65534, "egw0": 1, "gnv-flow": 2, "patch-int-ex": 9},
         "br-ex": {"br-ex": 65534, "eth0": 1, "patch-ex-int": 2}}
UPLINK = 1
UP = {"state": "up", "forwarding": "true"}
DOWN = {"state": "down", "forwarding": "false"}


def cluster(names=NODES, gateways=("alpha", "bravo")) -> list[dict]:
    docs = []
    for i, (name, ip) in enumerate(names.items()):
        docs.append({"apiVersion": "v1", "kind": "Node",
                     "metadata": {"name": name, "labels": {"egress": "true"} if name in gateways else {}},
                     "spec": {"podCIDR": f"203.0.113.{32 * i}/27"},
                     "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    worker = next(n for n in names if n not in gateways)
    docs.append({"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "cart-0", "namespace": "shop", "labels": {"app": "cart"}},
                 "spec": {"nodeName": worker}, "status": {"podIP": CART, "phase": "Running"}})
    docs.append({"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
                 "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                          "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"]}}})
    docs.append({"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressPolicy",
                 "metadata": {"name": "cart", "namespace": "shop"},
                 "spec": {"egressGatewayName": "edge", "appliedTo": {"podSelector": {"matchLabels": {"app": "cart"}}},
                          "destSubnet": ["198.51.100.0/24"]}})
    return docs


class FakeNodeDb:
    """A node's OVSDB: the bridges' ports (tunnel ports numbered from 10 as
    sync_tunnels makes them), MACs, MTUs and the tunnels' BFD states."""

    def __init__(self, node: str):
        self.node = node
        self.ports = {b: dict(p) for b, p in PORTS.items()}
        self.bfd: dict[str, dict] = {}  # peer -> bfd_status
        self.names: dict[str, str] = {}
        self.syncs = 0

    def bridge_dpid(self, bridge: str) -> int:
        return {"br-int": 1, "br-ex": 2}[bridge]

    def ofports(self, bridge: str) -> dict[str, int]:
        return dict(self.ports[bridge])

    def iface_mac(self, name: str) -> str:
        return {"egw0": "02:00:00:00:00:e0", "br-ex": "02:00:00:00:00:b0"}[name]

    def iface_mtu(self, name: str) -> int | None:
        return 1500

    def bfd_status(self, bridge: str) -> dict[str, dict]:
        return {self.names[p]: st for p, st in self.bfd.items() if p in self.names and st}

    def sync_tunnels(self, bridge: str, peers: dict[str, str], bfd: dict | None) -> None:
        self.syncs += 1
        self.bfd_config = dict(bfd or {})  # Interface.bfd of every tunnel port
        self.names = tunnel_port_names(peers)
        base = {n: p for n, p in self.ports[bridge].items() if not n.startswith("gnv-") or n == "gnv-flow"}
        self.ports[bridge] = {**base, **{self.names[p]: 10 + i for i, p in enumerate(sorted(peers))}}

    def tunnel_port(self, peer: str) -> int:
        return self.ports["br-int"][self.names[peer]]


class FakeSwitch:
    """A connected bridge (SwitchPort) over an in-memory FakeBridge."""

    def __init__(self, bridge: str, dpid: int):
        self.bridge, self.dpid = bridge, dpid
        self.table = FakeBridge(bridge)
        self.garps: list[tuple[str, str, int]] = []
        self.bundles = 0

    def dump_flows(self, names) -> set:
        assert names == table_names(self.bridge)
        return set(self.table.contents())

    def apply(self, adds, deletes) -> None:
        self.bundles += 1
        for f in deletes:
            self.table.delete_strict(f)
        self.table.apply(adds)

    def flow_stats(self) -> list:
        return []

    def packet_out(self, data: bytes, port: int) -> None:
        raise AssertionError("no packet-out expected")

    packet_out_to_table = packet_out

    def announce(self, ip: str, mac: str, port: int, schedule=(0.0,)) -> None:
        self.garps.append((ip, mac, port))

    def contents(self) -> frozenset:
        return self.table.contents()


class FakeRouting:
    hold_state: dict = {}

    def __init__(self):
        self.steered: list[tuple] = []

    def sync(self, steers, tunnel_mtu, local_pods=None, hold=None, pod_cidrs=()):
        self.steered = [(str(s.pod_ip), str(s.dest)) for s in steers]
        return 0, 0

    def reserve_ports(self, lo, hi):
        return False

    def hold_due(self, hold, local_pods):
        return False


class Unsynced(FileAllocationStore):
    """The allocation before the API server's first answer (until a test says it came)."""
    answered = False

    @property
    def synced(self) -> bool:
        return self.answered


class Agent:
    """One node's agent core with its fakes, both bridges connected."""

    def __init__(self, tmp_path, node: str, docs=None, reader=FileAllocationStore, failback_hold=10.0,
                 source=ManifestDirSource, db=None, clock=time.monotonic):
        self.mdir, self.sdir = allocate(tmp_path, docs)
        self.db = db or FakeNodeDb(node)
        self.routing = FakeRouting()
        config = AgentConfig(node=node, ovs_db="unix:/nonexistent", bfd={"enable": "true"}, bfd_grace=10.0,
                             failback_hold=failback_hold)
        self.core = AgentCore(
            config, source(str(self.mdir)), reader(str(self.sdir)),
            routing=self.routing, writers=[FileStatusWriter(str(self.sdir), node)], db=self.db,
            node=NodeReader(node, self.db, bfd=config.bfd, next_hop_mac=lambda dest, family=4: ROUTER_MAC,
                            address_mtu=lambda ip: 1500, clock=clock))
        self.switches = {b: FakeSwitch(b, self.db.bridge_dpid(b)) for b in ("br-int", "br-ex")}
        for sw in self.switches.values():
            assert self.core.bridge_of(sw.dpid) == sw.bridge
            self.core.switch_up(sw)

    def run_pass(self, full=False):
        self.core.run_pass(full, Backoff(most=5.0))

    def bfd(self, **states):
        self.db.bfd.update(states)

    def hear(self, *sources: str) -> None:
        """BFD packets from ``sources`` (tunnel source addresses) arrive on
        gnv-flow, as br-int's SENDER flow sends them to the agent."""
        for src in sources:
            self.core.packet_in(self.switches["br-int"], C.encode(C.Feature.SENDER), b"", tunnel_src=src)

    def status(self) -> dict:
        return json.loads((self.sdir / "nodes" / f"{self.core.config.node}.json").read_text())

    def holds_eip(self) -> bool:
        """Does br-ex answer the router's ARP request for the EIP?"""
        out = self.switches["br-ex"].table.process(arp_request(UPLINK, ROUTER_MAC, ROUTER, EIP))
        return any(e.packet.get("arp_op") == 2 and e.packet["arp_spa"] == EIP for e in out)

    def desired(self) -> dict:
        return flows.build(self.core.last_result.view)


def allocate(tmp_path, docs=None):
    """The manifests and the controller's allocation: (manifest dir, status dir)."""
    mdir, sdir = tmp_path / "manifests", tmp_path / "status"
    mdir.mkdir(exist_ok=True)
    sdir.mkdir(exist_ok=True)
    (mdir / "cluster.yaml").write_text(yaml.safe_dump_all(docs or cluster()))
    Controller(ManifestDirSource(str(mdir)), FileAllocationStore(str(sdir))).reconcile()
    return mdir, sdir


def holder(tmp_path, docs=None) -> str:
    """The EIP's active gateway, as the controller elected it."""
    allocate(tmp_path, docs)
    alloc = FileAllocationStore(str(tmp_path / "status")).load()
    (eip,) = alloc.eips
    assert str(eip.ip) == EIP
    return eip.nodes[0]


# -- bootstrap ----------------------------------------------------------------------

def test_before_any_state_only_the_missing_table_miss_flows_are_added(tmp_path):
    agent = Agent(tmp_path, "charlie", reader=Unsynced)
    stray = next(f for f in flows.base.flows() if f.bridge == "br-int")
    agent.switches["br-int"].table.add(stray)  # one miss flow there already (a restart)
    with pytest.raises(NotReady):
        agent.core.reconcile()
    for bridge, sw in agent.switches.items():
        assert sw.contents() == {f for f in flows.base.flows() if f.bridge == bridge}
    assert agent.switches["br-int"].bundles == 1  # nothing re-sent that was there
    # The node's own traffic passes br-ex (the way to the API server), nothing is steered.
    [out] = agent.switches["br-ex"].table.process(ip_packet(UPLINK, EXTERNAL, NODES["charlie"]))
    assert out.port == "NORMAL"
    assert agent.routing.steered == []


def test_not_ready_is_reported_and_the_first_answer_brings_the_flows(tmp_path):
    agent = Agent(tmp_path, "charlie", reader=Unsynced)
    agent.run_pass(full=True)
    status = agent.status()
    assert "waiting for the first answer of the API server" in status["error"]
    assert status["passes"] == 0 and status["held_eips"] == []
    agent.core.store.answered = True
    agent.run_pass(full=True)
    assert agent.status()["error"] is None
    for bridge, sw in agent.switches.items():
        assert sw.contents() == agent.desired()[bridge]
    assert agent.routing.steered == [(CART, "198.51.100.0/24")]


# -- the worker's steering and drift repair --------------------------------------------

def steered_out(agent: Agent):
    """Where br-int sends the cart pod's packet to the external address."""
    return [e.port for e in agent.switches["br-int"].table.process(pod_packet())]


def pod_packet() -> dict:
    """The cart pod's packet to the external address, as the host hands it to egw0."""
    return ip_packet(1, CART, EXTERNAL, eth_src="02:00:00:00:00:e0", eth_dst=GW_MAC)


def test_a_worker_steers_its_pod_to_the_active_gateways_tunnel(tmp_path):
    agent = Agent(tmp_path, "charlie")
    agent.bfd(alpha=UP, bravo=UP)
    agent.run_pass(full=True)
    assert steered_out(agent) == [agent.db.tunnel_port(holder(tmp_path))]
    assert agent.status()["tunnels"] == {"alpha": NODES["alpha"], "bravo": NODES["bravo"]}


def test_drift_on_the_switch_is_repaired_at_the_next_full_pass(tmp_path):
    agent = Agent(tmp_path, "charlie")
    agent.bfd(alpha=UP, bravo=UP)
    agent.run_pass(full=True)
    table = agent.switches["br-int"].table
    want = set(table.contents())
    steer = table.lookup(table.tables.tables[0].name, pod_packet())
    table.delete_strict(steer)  # removed behind the agent's back
    changed = next(f for f in sorted(want, key=str) if f != steer and f.actions != (Drop(),))
    table.add(dataclasses.replace(changed, actions=()))  # changed: now drops
    table.add(dataclasses.replace(steer, priority=steer.priority + 1, cookie=0x99, actions=()))  # added
    assert steered_out(agent) == []  # the pod's traffic is broken
    agent.run_pass(full=False)  # a pass without a dump trusts what it sent
    assert table.contents() != want
    agent.run_pass(full=True)
    assert table.contents() == want
    assert steered_out(agent) == [agent.db.tunnel_port(holder(tmp_path))]
    assert agent.core.last_result.changes["br-int"] == (2, 1)


def test_a_second_pass_sends_nothing(tmp_path):
    agent = Agent(tmp_path, "charlie")
    agent.run_pass(full=True)
    bundles = {b: sw.bundles for b, sw in agent.switches.items()}
    agent.run_pass(full=True)
    assert {b: sw.bundles for b, sw in agent.switches.items()} == bundles
    assert agent.core.last_result.changes == {"br-int": (0, 0), "br-ex": (0, 0)}


# -- gateways: cut-off, takeover, gratuitous ARP -----------------------------------------

def cut_off_and_healed(tmp_path, failback_hold=10.0) -> tuple[Agent, list[str]]:
    """The active gateway's agent, cut off (every session down) and healed
    (one session back up); with its peers."""
    agent = Agent(tmp_path, holder(tmp_path), failback_hold=failback_hold)
    others = [n for n in NODES if n != agent.core.config.node]
    agent.hear(NODES["charlie"])  # the worker's BFD: it sends to this gateway
    agent.bfd(**{n: UP for n in others})
    agent.run_pass(full=True)
    assert agent.holds_eip() and agent.status()["held_eips"] == [EIP]
    assert "cpath_down" not in agent.db.bfd_config
    agent.bfd(**{n: DOWN for n in others})
    agent.run_pass()
    status = agent.status()
    assert not agent.holds_eip()
    assert (status["held_eips"], status["isolated"], status["dead_peers"]) == ([], True, sorted(others))
    # From the cut on its BFD says it forwards nothing, so the heal is not a fail-back.
    assert agent.db.bfd_config["cpath_down"] == "true"
    assert AgentReports(str(agent.sdir)).held() == {}
    agent.run_pass()  # still cut off: nothing changes by itself
    assert not agent.holds_eip() and agent.status()["isolated"]
    agent.bfd(**{others[0]: UP})  # one session back
    agent.run_pass()
    return agent, others


def test_a_gateway_that_sees_every_bfd_session_down_gives_up_its_eip_and_rejoins_as_standby(tmp_path):
    agent, others = cut_off_and_healed(tmp_path)
    standby = next(n for n in others if n != "charlie")
    status = agent.status()
    # Healed, but a live standby may hold the EIP: it takes nothing back, still forwards nothing.
    assert (status["held_eips"], status["isolated"], status["rejoining"]) == ([], False, True)
    assert not agent.holds_eip() and agent.db.bfd_config["cpath_down"] == "true"
    # The controller sees the standby's takeover and lists it first: the healed node is a standby now.
    FileStatusWriter(str(agent.sdir), standby).report({"node": standby, "time": time.time(), "held_eips": [EIP]})
    Controller(ManifestDirSource(str(agent.mdir)), FileAllocationStore(str(agent.sdir))).reconcile()
    assert FileAllocationStore(str(agent.sdir)).load().eips[0].nodes[0] == standby
    agent.run_pass()
    status = agent.status()
    assert (status["held_eips"], status["rejoining"]) == ([], False)
    assert not agent.holds_eip() and "cpath_down" not in agent.db.bfd_config


def test_without_a_controller_re_ordering_a_healed_gateway_takes_its_eip_back_after_the_hold(tmp_path):
    agent, others = cut_off_and_healed(tmp_path, failback_hold=0.0)
    status = agent.status()
    assert agent.holds_eip()
    assert (status["held_eips"], status["isolated"], status["rejoining"], status["dead_peers"]) == (
        [EIP], False, False, [])
    assert "cpath_down" not in agent.db.bfd_config


def test_the_standby_takes_over_when_the_active_gateways_session_goes_down_and_announces_it(tmp_path):
    active = holder(tmp_path)
    standby = "bravo" if active == "alpha" else "alpha"
    agent = Agent(tmp_path, standby)
    agent.hear(NODES["charlie"])
    agent.bfd(**{active: UP, "charlie": UP})
    agent.run_pass(full=True)
    assert not agent.holds_eip() and agent.switches["br-ex"].garps == []
    agent.bfd(**{active: DOWN})
    agent.run_pass()
    assert agent.holds_eip()
    assert agent.switches["br-ex"].garps == [(EIP, "02:00:00:00:00:b0", UPLINK)]
    status = agent.status()
    assert (status["held_eips"], status["dead_peers"], status["isolated"]) == ([EIP], [active], False)
    assert status["bfd"] == {agent.db.names[active]: "down (not forwarding)", agent.db.names["charlie"]: "up"}
    # What the controller reads: the standby holds the EIP now.
    assert AgentReports(str(agent.sdir)).held() == {EIP: standby}
    agent.run_pass(full=True)
    assert len(agent.switches["br-ex"].garps) == 1  # announced once, not at every pass
    agent.bfd(**{active: UP})  # the active one is back: the standby lets go, no announcement
    agent.run_pass()
    assert not agent.holds_eip() and len(agent.switches["br-ex"].garps) == 1


# -- a gateway's tunnels: to the nodes that send to it -----------------------------------

def bfd_packet(in_port: int) -> dict:
    """A BFD control packet as OVS sends it inside a Geneve tunnel (key 0)."""
    return {**ip_packet(in_port, "169.254.1.1", "169.254.1.0", proto=17, sport=49152, dport=3784),
            "tunnel_id": 0}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_gateway_has_ports_to_the_other_gateways_and_to_the_nodes_it_hears_bfd_from(tmp_path, caplog):
    """Issue 15: a gateway node watches only its own pods, so it cannot tell
    which workers send to it; their BFD does.  Until a worker's BFD arrives
    on gnv-flow the gateway has no port to it (and sends it no BFD); then
    one, from the next pass on.  An address no node has makes nothing."""
    gw = holder(tmp_path)
    other = "bravo" if gw == "alpha" else "alpha"
    agent = Agent(tmp_path, gw)
    agent.run_pass(full=True)
    assert agent.status()["tunnels"] == {other: NODES[other]}
    # The worker's BFD on gnv-flow goes to the agent; on a port of its own it is OVS's (no flow sees it).
    br_int = agent.switches["br-int"].table
    [up] = br_int.process(bfd_packet(PORTS["br-int"]["gnv-flow"]))
    assert up.port == "CONTROLLER"
    assert all(e.port != "CONTROLLER" for e in br_int.process(bfd_packet(agent.db.tunnel_port(other))))
    for other_packet in ({"udp_dst": 3785}, {"ipv4_dst": CART}):  # a pod's reply is to a pod address
        assert all(e.port != "CONTROLLER" for e in br_int.process(
            {**bfd_packet(PORTS["br-int"]["gnv-flow"]), **other_packet}))
    woken = agent.core._wake
    woken.clear()
    agent.hear(NODES["charlie"], "198.51.100.99", "no address")
    assert woken.is_set()
    agent.run_pass()
    assert agent.status()["error"] is None
    assert agent.status()["tunnels"] == {other: NODES[other], "charlie": NODES["charlie"]}
    assert "BFD from 198.51.100.99 on gnv-flow: no node of the cluster has that address" in caplog.text
    # The same worker heard again (its BFD while the session comes up) changes
    # nothing; the same stray address is not warned about at every packet.
    syncs = agent.db.syncs
    caplog.clear()
    agent.hear(NODES["charlie"], "198.51.100.99")
    agent.run_pass()
    assert agent.db.syncs == syncs
    assert "198.51.100.99" not in caplog.text


def test_a_senders_port_goes_after_its_session_stayed_down_a_minute_and_survives_a_restart(tmp_path):
    gw = holder(tmp_path)
    clock = Clock()
    agent = Agent(tmp_path, gw, clock=clock)
    agent.hear(NODES["charlie"])
    agent.run_pass(full=True)
    assert "charlie" in agent.status()["tunnels"]
    agent.bfd(charlie=UP)
    clock.now += 600  # up all along: it stays
    agent.run_pass()
    assert "charlie" in agent.status()["tunnels"]
    # A restart finds the port and keeps it, as a sender.
    restarted = Agent(tmp_path, gw, db=agent.db, clock=clock)
    restarted.run_pass(full=True)
    assert "charlie" in restarted.status()["tunnels"]
    # The worker dropped its port: the session is down; a minute later the gateway's port goes too.
    restarted.bfd(charlie=DOWN)
    clock.now += 30
    restarted.run_pass()
    assert "charlie" in restarted.status()["tunnels"]
    clock.now += 31
    restarted.run_pass()
    other = "bravo" if gw == "alpha" else "alpha"
    assert restarted.status()["tunnels"] == {other: NODES[other]}
    # A worker forgets senders: it is no gateway node.
    worker = Agent(tmp_path, "charlie")
    worker.hear(NODES[gw])
    worker.run_pass(full=True)
    assert set(worker.status()["tunnels"]) == {"alpha", "bravo"}  # its pod's gateways, as before


def test_status_says_what_the_node_does(tmp_path):
    agent = Agent(tmp_path, holder(tmp_path))
    agent.bfd(**{n: UP for n in NODES if n != agent.core.config.node})
    agent.run_pass(full=True)
    status = agent.status()
    assert status["node"] == agent.core.config.node and status["passes"] == 1 and status["error"] is None
    assert status["switches"] == {b: {"connected": True, "flows": len(agent.desired()[b])}
                                  for b in ("br-int", "br-ex")}
    assert (status["tunnel_mtu"], status["mss"]) == (1450, 1410)
    assert status["tunnel_mtu_source"] == "underlay 1500 (the interface of %s) - 50 (IPv4 Geneve)" % NODES[
        agent.core.config.node]
    assert status["held_eips"] == [EIP] and status["isolated"] is False
    agent.core.switch_down("br-ex")
    agent.run_pass()
    assert agent.status()["switches"]["br-ex"] == {"connected": False, "flows": None}


def test_peers_with_names_too_long_for_a_port_get_their_own_tunnel(tmp_path):
    """Tunnel ports of long node names are hashed; the flows still go to the right peer's port."""
    names = {"gateway-one.example.internal": "192.0.2.11", "gateway-two.example.internal": "192.0.2.12",
             "worker-three.example.internal": "192.0.2.13"}
    gateways = tuple(n for n in names if n.startswith("gateway"))
    agent = Agent(tmp_path, "worker-three.example.internal", docs=cluster(names, gateways))
    agent.bfd(**{n: UP for n in gateways})
    agent.run_pass(full=True)
    assert all(len(agent.db.names[n]) == 15 for n in gateways)
    assert steered_out(agent) == [agent.db.tunnel_port(holder(tmp_path, cluster(names, gateways)))]
    assert dict(agent.core.last_result.view.ports.tunnels) == {n: agent.db.tunnel_port(n) for n in gateways}


# -- the heap ----------------------------------------------------------------------------------

def test_after_a_full_pass_the_heap_is_frozen_and_collected_whole_once_an_interval(tmp_path):
    """settle_heap: garbage goes, what lives is frozen (no collection scans
    it again); what was frozen and died is reclaimed at the next interval."""
    import gc
    import weakref

    from sdn_egress.agent.core import HEAP_RESET_INTERVAL, YOUNG_GC_THRESHOLD

    class Cycle:
        pass

    agent = Agent(tmp_path, "charlie")
    agent.run_pass(full=True)
    threshold = gc.get_threshold()
    try:
        a = Cycle()
        a.me = a
        gone = weakref.ref(a)
        del a
        agent.core.settle_heap(100.0)
        assert gone() is None and gc.get_freeze_count() > 0
        b = Cycle()
        b.me = b
        frozen = weakref.ref(b)
        agent.core.settle_heap(101.0)  # alive: frozen
        del b
        agent.core.settle_heap(102.0)
        gc.collect()
        assert frozen() is not None  # garbage now, but frozen: no collection looks at it
        agent.core.settle_heap(100.0 + HEAP_RESET_INTERVAL)
        assert frozen() is None
        assert gc.get_threshold()[0] == YOUNG_GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


# -- the loop --------------------------------------------------------------------------

class NotifyingSource(ManifestDirSource):
    """A manifest directory that tells its listeners of a change, as the
    Kubernetes source does from its informers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.listeners = []

    def on_change(self, fn):
        self.listeners.append(fn)

    def changed_now(self):
        for fn in self.listeners:
            fn()


def test_a_change_of_the_source_is_applied_without_waiting_for_the_next_poll(tmp_path):
    """The loop sleeps up to its poll interval (50 ms by default, an hour
    here) between looks at BFD and the sources; a source that tells of its
    changes wakes it at once."""
    import gc

    agent = Agent(tmp_path, "charlie", source=NotifyingSource)
    agent.bfd(alpha=UP, bravo=UP)
    agent.core.config = dataclasses.replace(agent.core.config, poll_interval=3600.0, resync_interval=3600.0)
    threshold = gc.get_threshold()
    thread = threading.Thread(target=agent.core.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.routing.steered == [(CART, "198.51.100.0/24")], "the first pass")
        docs = cluster()
        next(d for d in docs if d["kind"] == "Pod")["metadata"]["labels"] = {"app": "other"}
        (agent.mdir / "cluster.yaml").write_text(yaml.safe_dump_all(docs))
        agent.core.source.changed_now()
        wait_for(lambda: agent.routing.steered == [], "the relabelled pod no longer steered", timeout=10.0)
        assert steered_out(agent) == []  # its packet no longer goes to a tunnel
    finally:
        agent.core.stop()
        assert agent.core.wait_stopped(10.0)
        gc.unfreeze()
        gc.set_threshold(*threshold)


# -- fuzz: a packet-in's tunnel source is the switch's word, not the cluster's -----------------

_FUZZ: dict = {}


def _fuzz_gateway() -> Agent:
    """One gateway agent for every example (its senders are reset before each)."""
    if "agent" not in _FUZZ:
        import atexit
        import pathlib
        import shutil
        import tempfile
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="sdn-egress-fuzz-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _FUZZ["agent"] = Agent(tmp, holder(tmp))
    return _FUZZ["agent"]


def _same_address(source, ip: str) -> bool:
    try:
        return netaddr.IPAddress(source) == netaddr.IPAddress(ip)
    except Exception:  # noqa: BLE001 - not an address at all
        return False


@settings(max_examples=150, deadline=5000, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(sorted(NODES.values())), st.ip_addresses().map(str),
                          st.text(max_size=40), st.none(), st.binary(max_size=20), st.integers()), max_size=6))
def test_whatever_tunnel_source_a_bfd_packet_in_names_only_a_nodes_address_makes_a_port(sources):
    agent = _fuzz_gateway()
    gw = agent.core.config.node
    other = "bravo" if gw == "alpha" else "alpha"
    agent.core.node.senders.clear()
    agent.hear(*sources)
    agent.run_pass()
    status = agent.status()
    assert status["error"] is None
    heard = {n for n, ip in NODES.items() if n not in (gw, other) and any(_same_address(s, ip) for s in sources)}
    assert status["tunnels"] == {n: NODES[n] for n in {other} | heard}
