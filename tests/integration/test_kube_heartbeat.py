"""The agents' reports through Leases, and the allocation ConfigMap as the
agents read it: the real kubernetes client against the emulated API server."""
from __future__ import annotations

import json

import pytest

from sdn_egress.allocation import Allocation
from sdn_egress.reports.leases import REPORT, LeaseReporter, LeaseReports, lease_name
from sdn_egress.allocation.reader_kube import KubeAllocationReader
from sdn_egress.allocation.store_kube import KubeAllocationStore

from tests.support.kubeemu import api, emu  # noqa: F401 - fixtures

NS = "sdn-egress"


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def status(*held: str, dead=(), passes: int = 1) -> dict:
    return {"node": "ignored", "held_eips": list(held), "dead_peers": list(dead), "isolated": False,
            "error": None, "passes": passes, "pid": 4242, "tunnels": {}, "switches": {"br-int": {}},
            "tunnel_mtu": 1450, "mss": 1410, "oversized": {"icmp": 1, "fragmented": 0, "dropped": 0},
            "bfd": {"gnv-bravo": "up"}, "steers": 3}


@pytest.fixture
def parts(api):
    made = []

    def make(part):
        made.append(part.start())
        return part

    yield make
    for part in reversed(made):
        part.stop()


def test_the_agent_report_reaches_the_controller_through_the_nodes_lease(emu, api, parts):
    reports = parts(LeaseReports(api, NS))
    reporter = parts(LeaseReporter(api, NS, "alpha", interval=60))  # no heartbeat in this test's time
    reporter.report(status("192.0.2.200", dead=["bravo"]))
    emu.wait_for(lambda: reports.held() == {"192.0.2.200": "alpha"})
    lease = emu.get("Lease", "sdn-egress-agent-alpha", NS)
    assert lease["spec"]["holderIdentity"] == "alpha" and lease["spec"]["leaseDurationSeconds"] == 30
    assert lease["metadata"]["labels"]["app.kubernetes.io/component"] == "agent"
    report = json.loads(lease["metadata"]["annotations"][REPORT])
    # What the controller needs, and what `sdn-egress status` shows per node (its switches, BFD per tunnel).
    assert report == {"held_eips": ["192.0.2.200"], "dead_peers": ["bravo"], "isolated": False, "error": None,
                      "passes": 1, "pid": 4242, "tunnels": {}, "tunnel_mtu": 1450, "mss": 1410,
                      "oversized": {"icmp": 1, "fragmented": 0, "dropped": 0}, "switches": {"br-int": {}},
                      "bfd": {"gnv-bravo": "up"}}
    # A failover is written at once, not at the next heartbeat...
    reporter.report(status(passes=2))
    emu.wait_for(lambda: reports.held() == {})
    writes = reporter.writes
    # ...while a pass that changed nothing the controller needs waits for it.
    reporter.report(status(passes=3))
    reporter.report(status(passes=4))
    assert reporter.writes == writes
    assert reports.gone() == set()


def test_the_lease_is_owned_by_the_node_once_its_uid_is_known(emu, api, parts):
    uid = [None]
    reporter = parts(LeaseReporter(api, NS, "alpha", interval=0.2, node_uid=lambda: uid[0]))
    reporter.report(status())
    emu.wait_for(lambda: emu.get("Lease", lease_name("alpha"), NS))
    assert "ownerReferences" not in emu.get("Lease", lease_name("alpha"), NS)["metadata"]
    uid[0] = "6b1d2c4e-0000-4000-8000-000000000001"  # the Node object came into the agent's cache
    emu.wait_for(lambda: emu.get("Lease", lease_name("alpha"), NS)["metadata"].get("ownerReferences"))
    assert emu.get("Lease", lease_name("alpha"), NS)["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "alpha", "uid": uid[0]}]


def test_the_lease_is_renewed_at_every_heartbeat(emu, api, parts):
    reporter = parts(LeaseReporter(api, NS, "alpha", interval=0.2))
    reporter.report(status())
    renewals = set()

    def three_renewals():
        lease = emu.get("Lease", lease_name("alpha"), NS)
        if lease:
            renewals.add(lease["spec"]["renewTime"])
        return len(renewals) >= 3
    emu.wait_for(three_renewals)


def alpha_reporting(emu, api, parts, interval: float):
    """The controller's side on a clock of the test's (fresh: 30 s), and
    alpha's agent reporting that it holds 192.0.2.200, seen by it."""
    clock = Clock()
    reports = parts(LeaseReports(api, NS, fresh=30, clock=clock))
    reporter = parts(LeaseReporter(api, NS, "alpha", interval=interval))
    reporter.report(status("192.0.2.200"))
    emu.wait_for(lambda: "alpha" in reports.read())
    return clock, reports, reporter


def test_a_node_is_gone_when_its_lease_stops_changing_by_the_controllers_clock(emu, api, parts):
    clock, reports, reporter = alpha_reporting(emu, api, parts, interval=60)
    clock.t += 29
    assert reports.gone() == set() and reports.held() == {"192.0.2.200": "alpha"}
    clock.t += 2  # 31 s without a change seen: whatever the agent's clock says
    assert reports.gone() == {"alpha"} and reports.held() == {}
    reporter.report(status())  # it writes again: back
    emu.wait_for(lambda: not reports.gone())


def test_an_api_outage_is_not_taken_for_every_agent_dying(emu, api, parts):
    clock, reports, reporter = alpha_reporting(emu, api, parts, interval=1)
    host, port = emu.server.server_address[:2]
    emu.stop()
    emu.wait_for(lambda: reports.informer.failing and reporter.failing)
    clock.t += 100  # long past fresh, but nothing could be renewed or seen
    assert reports.gone() == set()
    assert reports.held() == {"192.0.2.200": "alpha"}  # the last reports seen stand
    emu.start(host, port)
    emu.wait_for(lambda: not reports.informer.failing and not reporter.failing)
    # Back: every node has a fresh grace from the end of the outage.
    clock.t += 29
    assert reports.gone() == set()


def test_the_agents_read_the_allocation_records_once_per_version(emu, api, parts):
    writer = KubeAllocationStore(api, NS)
    reader = KubeAllocationReader(api, NS)
    assert not reader.synced
    parts(reader)
    emu.wait_for(lambda: reader.synced)
    assert reader.load() is None  # not written yet: the agent holds nothing
    alloc = Allocation.from_json(json.dumps({"eips": [{"ip": "192.0.2.200", "gateway": "edge", "tunnel_key": 1,
                                                       "nodes": ["alpha", "bravo"], "policies": ["shop/cart"]}]}))
    writer.save(alloc)
    emu.wait_for(lambda: reader.load() is not None)
    assert reader.changed() and not reader.changed()
    assert [(str(a.ip), a.nodes) for a in reader.load().eips] == [("192.0.2.200", ("alpha", "bravo"))]
    cm = emu.get("ConfigMap", "sdn-egress-eip-v4-192-0-2-200", NS)
    cm["data"]["record.json"] = "{not json"
    emu.apply(cm)
    emu.wait_for(reader.changed)
    with pytest.raises(ValueError, match=r"ConfigMap sdn-egress-eip-v4-192-0-2-200, key record.json"):
        reader.load()


def test_a_pass_that_starts_failing_is_one_warning_event_on_the_node(emu, api, parts):
    from sdn_egress.kube.events import EventRecorder

    refused = "cannot write 2 to /host/proc/sys/net/ipv4/conf/egw0/rp_filter (Read-only file system)"
    reporter = parts(LeaseReporter(api, NS, "alpha", interval=0.1, node_uid=lambda: "uid-alpha",
                                   events=EventRecorder(api, component="sdn-egress-agent", instance="alpha")))

    def warnings():
        return [e for e in emu.items("Event") if e["reason"] == "EgressAgentPassFailed"]

    reporter.report(dict(status(), error=refused))
    emu.wait_for(lambda: warnings())
    (event,) = warnings()
    assert event["type"] == "Warning" and event["metadata"]["namespace"] == "default"
    assert (event["involvedObject"]["kind"], event["involvedObject"]["name"],
            event["involvedObject"]["uid"]) == ("Node", "alpha", "uid-alpha")
    assert event["message"].startswith(f"sdn-egress agent on alpha: {refused}")
    assert event["reportingComponent"] == "sdn-egress-agent"
    # The same failure pass after pass is that one Event; a recovery and a new failure is a second.
    for passes in range(2, 6):
        reporter.report(dict(status(passes=passes), error=refused))
    emu.wait_for(lambda: reporter.writes >= 3)
    assert len(warnings()) == 1
    reporter.report(status(passes=7))
    emu.wait_for(lambda: json.loads(emu.get("Lease", lease_name("alpha"), NS)["metadata"]["annotations"][REPORT])
                 ["error"] is None)
    reporter.report(dict(status(passes=8), error=refused))
    emu.wait_for(lambda: len(warnings()) == 2)
