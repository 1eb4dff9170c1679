"""Lease leader election, and two controller replicas handing over through it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from sdn_egress.controller.leader import LeaderElector

from tests.support.kubeemu import api, emu, kubeconfig  # noqa: F401 - fixtures
from tests.support.objects import gateway, node, policy

NS = "sdn-egress"


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def elector(api_client, identity, clock, **kw):
    return LeaderElector(api_client, NS, "ctl", identity, lease_duration=15, renew_deadline=10, retry_period=2,
                         clock=clock, **kw)


def lease(emu):
    return emu.get("Lease", "ctl", NS)["spec"]


def test_one_leader_release_hands_over(emu, api):
    clock = FakeClock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    assert (lease(emu)["holderIdentity"], lease(emu)["leaseTransitions"]) == ("a", 0)
    assert a.try_acquire_or_renew()  # renewing
    assert a.release()
    assert lease(emu).get("holderIdentity") is None
    assert b.try_acquire_or_renew()
    assert (lease(emu)["holderIdentity"], lease(emu)["leaseTransitions"]) == ("b", 0)
    assert not a.try_acquire_or_renew()


def test_an_expired_lease_is_taken_over_by_the_candidates_own_clock(emu, api):
    clock = FakeClock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b starts its own count now
    clock.now += 14
    assert not b.try_acquire_or_renew()
    clock.now += 2  # 16 s without a change of the record: expired
    assert b.try_acquire_or_renew()
    spec = lease(emu)
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("b", 1)
    assert not a.try_acquire_or_renew() and not a.is_leader


def test_two_candidates_racing_for_a_free_lease_one_wins(emu, api):
    clock = FakeClock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)
    assert a.try_acquire_or_renew() and a.release()
    stale = b._read()  # b reads the free lease ...
    assert a.try_acquire_or_renew()  # ... a takes it first ...
    b._read = lambda: json.loads(json.dumps(stale))
    assert not b.try_acquire_or_renew()  # ... b's write carries the old version: 409
    assert lease(emu)["holderIdentity"] == "a"
    assert emu.requests_to("PUT", r"/leases/ctl$")[-1].body["spec"]["holderIdentity"] == "b"


def test_the_leader_stops_working_when_it_cannot_renew(emu, api):
    a = LeaderElector(api, NS, "ctl", "a", lease_duration=3, renew_deadline=1, retry_period=0.05)
    stop, working, stopped = threading.Event(), threading.Event(), threading.Event()

    def lead(leading):
        working.set()
        leading.wait()
        stopped.set()

    thread = threading.Thread(target=a.run, args=(stop, lead), daemon=True)
    thread.start()
    try:
        assert working.wait(20)
        emu.fail("GET", r"/leases/ctl$", 503, times=10**6, reason="ServiceUnavailable")
        assert stopped.wait(20)  # renewals failed for longer than renew_deadline: work stopped
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive()


def controller(kubeconfig, identity, status_dir):
    return subprocess.Popen(
        [sys.executable, "-m", "sdn_egress.cli", "controller", "--kubeconfig", kubeconfig, "--namespace", NS,
         "--identity", identity, "--lease-duration", "4", "--renew-deadline", "3", "--retry-period", "0.2",
         "--status", str(status_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def replicas(kubeconfig, tmp_path):
    procs = {}

    def start(identity):
        procs[identity] = controller(kubeconfig, identity, tmp_path / identity)
        return procs[identity]

    try:
        yield start
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)


def test_two_controller_replicas_hand_over_on_sigterm(emu, replicas):
    for obj in (node("alpha", 0), gateway(), policy("cart")):
        emu.apply(obj)
    a, b = replicas("a"), replicas("b")

    def holder():
        obj = emu.get("Lease", "sdn-egress-controller", NS)
        return obj and obj["spec"].get("holderIdentity")

    first = emu.wait_for(holder)
    emu.wait_for(lambda: (emu.get("EgressPolicy", "cart", "shop") or {}).get("status", {}).get("eip"))
    leader, standby = (a, b) if first == "a" else (b, a)
    second = "b" if first == "a" else "a"
    assert emu.get("EgressPolicy", "cart", "shop")["status"]["eip"] == {"ipv4": "192.0.2.200"}
    # Only the leader writes.
    emu.wait_for(lambda: emu.items("Event"))
    assert {e["reportingInstance"] for e in emu.items("Event")} == {first}
    leader.send_signal(signal.SIGTERM)
    out, _ = leader.communicate(timeout=30)
    assert leader.returncode == 0, out
    assert f"{first}: released lease" in out
    emu.wait_for(lambda: holder() == second)
    emu.apply(policy("zeta"))
    emu.wait_for(lambda: (emu.get("EgressPolicy", "zeta", "shop") or {}).get("status", {}).get("eip"))
    # The new leader went on from the stored allocation: cart kept its EIP, zeta got the next.
    assert emu.get("EgressPolicy", "cart", "shop")["status"]["eip"] == {"ipv4": "192.0.2.200"}
    assert emu.get("EgressPolicy", "zeta", "shop")["status"]["eip"] == {"ipv4": "192.0.2.201"}
    emu.wait_for(lambda: [e for e in emu.items("Event") if e["involvedObject"]["name"] == "zeta"])
    assert {e["reportingInstance"] for e in emu.items("Event") if e["involvedObject"]["name"] == "zeta"} == {second}
    assert standby.poll() is None
