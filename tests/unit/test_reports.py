"""The controller follows the data plane: an EIP a standby took over stays
with it (no fail-back flap)."""
from __future__ import annotations

import json

import netaddr

from sdn_egress.allocation import allocate
from sdn_egress.model import ClusterState, EgressGateway, EgressPolicy, LabelSelector
from sdn_egress.reports import AgentReports
from tests.support.objects import model_node


def cluster():
    nodes = {n: model_node(n, i, {"egress": "true"}) for i, n in enumerate(("alpha", "bravo"))}
    gw = EgressGateway("edge", LabelSelector((("egress", "true"),)),
                       (netaddr.IPRange("192.0.2.200", "192.0.2.210"),))
    pol = EgressPolicy("shop", "cart", "edge", LabelSelector((("app", "cart"),)))
    return ClusterState(nodes=nodes, gateways={"edge": gw}, policies={pol.key: pol})


class StaticSource:
    """The cluster() state, never changing."""

    def snapshot(self):
        return cluster()

    def wait_for_change(self, timeout):
        return False

    def remember(self, accepted):
        pass  # a fixed state has no incumbency to take

    synced = True


def controller(status, reports):
    from sdn_egress.allocation import FileAllocationStore
    from sdn_egress.controller import Controller
    return Controller(StaticSource(), FileAllocationStore(str(status)), reports=reports)


def report(tmp_path, node, t, held):
    d = tmp_path / "nodes"
    d.mkdir(exist_ok=True)
    (d / f"{node}.json").write_text(json.dumps({"node": node, "time": t, "held_eips": held}))


def test_the_holder_reported_by_the_data_plane_becomes_active_and_stays(tmp_path):
    st = cluster()
    first = allocate(st)
    assert first.eips[0].nodes == ("alpha", "bravo")
    report(tmp_path, "alpha", 100.0, ["192.0.2.200"])
    report(tmp_path, "bravo", 105.0, ["192.0.2.200"])  # took over later (alpha died)
    reports = AgentReports(str(tmp_path), clock=lambda: 110.0)
    assert reports.held() == {"192.0.2.200": "bravo"}
    moved = allocate(st, first, held=reports.held())
    assert moved.eips[0].nodes == ("bravo", "alpha")
    # alpha comes back and reports nothing held: the EIP stays on bravo.
    report(tmp_path, "alpha", 120.0, [])
    report(tmp_path, "bravo", 120.0, ["192.0.2.200"])
    again = allocate(st, moved, held=AgentReports(str(tmp_path), clock=lambda: 121.0).held())
    assert again.eips[0].nodes == ("bravo", "alpha")
    assert again.policies["shop/cart"].node == "bravo"


def test_stale_and_damaged_reports_claim_nothing(tmp_path):
    report(tmp_path, "alpha", 10.0, ["192.0.2.200"])
    (tmp_path / "nodes" / "bravo.json").write_text("{not json")
    reports = AgentReports(str(tmp_path), fresh=30, clock=lambda: 100.0)
    assert reports.held() == {}
    assert reports.changed() is True and reports.changed() is False
    report(tmp_path, "alpha", 99.0, ["192.0.2.200"])
    assert reports.held() == {"192.0.2.200": "alpha"}


def test_during_a_handover_both_holders_are_claimants_until_the_old_one_lets_go(tmp_path):
    report(tmp_path, "bravo", 98.0, ["192.0.2.200"])
    report(tmp_path, "alpha", 99.0, ["192.0.2.200"])  # the move's target, newer
    reports = AgentReports(str(tmp_path), fresh=30, clock=lambda: 100.0)
    assert reports.held() == {"192.0.2.200": "alpha"}  # the election follows the newest claim...
    assert reports.claimants("192.0.2.200") == ["alpha", "bravo"]  # ... but the move is not done yet
    report(tmp_path, "bravo", 99.5, [])
    assert reports.claimants("192.0.2.200") == ["alpha"]
    report(tmp_path, "charlie", 10.0, ["192.0.2.200"])  # stale: claims nothing
    assert reports.claimants("192.0.2.200") == ["alpha"]


def test_the_agents_flow_records_are_not_reports(tmp_path):
    report(tmp_path, "alpha", 99.0, ["192.0.2.200"])
    (tmp_path / "nodes" / "alpha.flows.json").write_text(json.dumps({"node": "alpha", "bridges": {}}))
    assert AgentReports(str(tmp_path), clock=lambda: 100.0).held() == {"192.0.2.200": "alpha"}


def test_a_node_whose_agent_stopped_reporting_leaves_every_gateway_list(tmp_path):
    status = tmp_path / "status"
    status.mkdir()
    now = [1000.0]
    reports = AgentReports(str(status), fresh=30, clock=lambda: now[0])
    ctl = controller(status, reports)
    report(status, "alpha", 1000.0, ["192.0.2.200"])
    report(status, "bravo", 1000.0, [])
    assert ctl.reconcile().eips[0].nodes == ("alpha", "bravo")
    # bravo (a standby) dies: no report for more than 30 s.
    now[0] = 1040.0
    report(status, "alpha", 1039.0, ["192.0.2.200"])
    assert reports.gone() == {"bravo"}
    assert ctl.reconcile().eips[0].nodes == ("alpha",)
    # bravo's agent reports again: back as a standby, the EIP stays.
    report(status, "bravo", 1040.0, [])
    assert ctl.reconcile().eips[0].nodes == ("alpha", "bravo")


def test_a_planned_move_overrides_the_holder_until_the_target_holds(tmp_path):
    from sdn_egress.allocation import FileAllocationStore

    status = tmp_path / "status"
    status.mkdir()
    store = FileAllocationStore(str(status))
    reports = AgentReports(str(status), clock=lambda: 100.0)
    ctl = controller(status, reports)
    report(status, "alpha", 99.0, ["192.0.2.200"])
    report(status, "bravo", 99.0, [])
    assert ctl.reconcile().eips[0].nodes == ("alpha", "bravo")
    reports.changed()
    store.request_move("192.0.2.200", "bravo")
    assert reports.changed()  # the request wakes the controller
    assert ctl.reconcile().eips[0].nodes == ("bravo", "alpha")  # alpha still reports holding
    assert store.read_moves() == {"192.0.2.200": "bravo"}
    report(status, "alpha", 99.5, [])
    report(status, "bravo", 99.5, ["192.0.2.200"])
    assert ctl.reconcile().eips[0].nodes == ("bravo", "alpha")
    assert store.read_moves() == {}  # done
