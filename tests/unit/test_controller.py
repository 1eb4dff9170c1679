"""The controller loop (sdn_egress.controller) over a manifest directory and a status directory."""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
import yaml

from sdn_egress import controller as controller_mod
from sdn_egress.allocation import FileAllocationStore
from sdn_egress.controller import Controller
from sdn_egress.source import ManifestDirSource
from tests.support.objects import node
from tests.support.waiting import wait_for

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "k8s", "examples")
NODES = yaml.safe_dump_all([node("alpha", 0, ready=None), node("beta", 1, ready=None)], sort_keys=False)
ZETA = """\
apiVersion: sdn-egress.io/v1alpha1
kind: EgressPolicy
metadata: {name: zeta, namespace: shop}
spec:
  egressGatewayName: edge
  appliedTo: {podSelector: {matchLabels: {app: zeta}}}
"""


@pytest.fixture
def dirs(tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for name in ("egressgateway.yaml", "egresspolicy.yaml"):
        shutil.copy(os.path.join(EXAMPLES, name), manifests / name)
    (manifests / "nodes.yaml").write_text(NODES)
    return manifests, tmp_path / "status"


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_reconcile_writes_the_expected_allocation(dirs, caplog):
    manifests, status = dirs
    caplog.set_level(logging.INFO, logger="sdn_egress.controller")
    Controller(ManifestDirSource(str(manifests)), FileAllocationStore(str(status))).reconcile()
    assert read_json(status / "allocation.json") == {
        "eips": [{"ip": "192.0.2.200", "gateway": "edge", "policies": ["shop/cart"], "tunnel_key": 1,
                  "nodes": ["alpha", "beta"]}],
        "policies": {"shop/cart": {
            "eip_v4": "192.0.2.200", "eip_v6": None, "gateway": "edge", "node": "alpha", "ready": True,
            "conditions": [
                {"type": "IPAllocated", "status": "True", "reason": "Allocated",
                 "message": "EIP 192.0.2.200 from EgressGateway edge"},
                {"type": "Ready", "status": "True", "reason": "GatewayNodeSelected",
                 "message": "EIP 192.0.2.200 on node alpha (standby: beta)"}]}},
        "gateways": {"edge": {
            "nodes": [{"name": "alpha", "ready": True, "eips": ["192.0.2.200"]},
                      {"name": "beta", "ready": True, "eips": []}],
            "ipUsage": {"ipv4Total": 11, "ipv4Free": 10, "ipv6Total": 0, "ipv6Free": 0},
            "policies": ["shop/cart"],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "NodesSelected", "message": "ready nodes: alpha, beta"},
                {"type": "PoolValid", "status": "True", "reason": "Valid",
                 "message": "192.0.2.200-192.0.2.210; no IPv6 addresses"},
                {"type": "InUse", "status": "True", "reason": "PoliciesUse", "message": "used by EgressPolicy shop/cart"}]}},
        "rr_last": {"edge": {"ipv4": "192.0.2.200"}},
        "errors": [],
        # What decides incumbency after a restart (issue 11): where each object came from, its
        # immutable fields as accepted, which gateway is the cluster default.
        "accepted": {"EgressGateway edge": {"source": str(manifests / "egressgateway.yaml")},
                     "EgressPolicy shop/cart": {"gateway": "edge", "source": str(manifests / "egresspolicy.yaml")}},
    }
    assert read_json(status / "errors.json") == []
    assert "policy shop/cart: EIP 192.0.2.200 on node alpha" in caplog.messages


def test_broken_manifest_is_reported_and_changes_nothing_else(dirs, caplog):
    manifests, status = dirs
    ctl = Controller(ManifestDirSource(str(manifests)), FileAllocationStore(str(status)))
    before = ctl.reconcile()
    (manifests / "broken.yaml").write_text(
        "apiVersion: sdn-egress.io/v1alpha1\nkind: EgressPolicy\nmetadata: {name: web, namespace: shop}\n"
        "spec: {egressGatewayName: edge, appliedTo: {podSelector: {}}, destSubnet: [10.0.0.0/33]}\n")
    (manifests / "garbage.json").write_text("{not json")
    caplog.set_level(logging.INFO, logger="sdn_egress.controller")
    after = ctl.reconcile()
    assert after.eips == before.eips and after.policies == before.policies
    errors = read_json(status / "errors.json")
    assert [(e["kind"], e["name"], e["field"]) for e in errors] == [
        ("EgressPolicy", "web", "spec.destSubnet[0]"),
        ("File", str(manifests / "garbage.json"), "line 1, column 2")]
    assert errors[0]["message"] == '"10.0.0.0/33" is not a CIDR'
    assert (f'invalid: EgressPolicy shop/web: spec.destSubnet[0]: "10.0.0.0/33" is not a CIDR '
            f"({manifests / 'broken.yaml'})") in caplog.messages
    (manifests / "broken.yaml").unlink()
    ctl.reconcile()
    assert [e["kind"] for e in read_json(status / "errors.json")] == ["File"]
    assert any(m.startswith("resolved: EgressPolicy shop/web") for m in caplog.messages)


def test_restart_keeps_eips_from_the_status_directory(dirs):
    manifests, status = dirs
    (manifests / "zeta.yaml").write_text(ZETA)
    first = Controller(ManifestDirSource(str(manifests)), FileAllocationStore(str(status))).reconcile()
    assert {k: str(s.eip_v4) for k, s in first.policies.items()} == {"shop/cart": "192.0.2.200",
                                                                     "shop/zeta": "192.0.2.201"}
    (manifests / "egresspolicy.yaml").unlink()
    again = Controller(ManifestDirSource(str(manifests)), FileAllocationStore(str(status))).reconcile()
    assert {k: str(s.eip_v4) for k, s in again.policies.items()} == {"shop/zeta": "192.0.2.201"}
    assert again.eips[0].tunnel_key == 2


def test_unreadable_allocation_is_moved_aside(dirs, caplog):
    manifests, status = dirs
    status.mkdir()
    (status / "allocation.json").write_text("{half")
    alloc = Controller(ManifestDirSource(str(manifests)), FileAllocationStore(str(status))).reconcile()
    assert str(alloc.policies["shop/cart"].eip_v4) == "192.0.2.200"
    assert (status / "allocation.json.bad").read_text() == "{half"
    assert any("allocating afresh" in m for m in caplog.messages)


def test_run_follows_changes_until_stopped(dirs):
    manifests, status = dirs
    ctl = Controller(ManifestDirSource(str(manifests)), FileAllocationStore(str(status)))
    stop = threading.Event()
    thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    thread.start()
    try:
        alloc_file = status / "allocation.json"
        wait_for(lambda: alloc_file.exists(), "the first allocation", timeout=30.0)
        (manifests / "zeta.yaml").write_text(ZETA)
        wait_for(lambda: "shop/zeta" in read_json(alloc_file)["policies"], "the new policy", timeout=30.0)
        assert read_json(alloc_file)["policies"]["shop/zeta"]["eip_v4"] == "192.0.2.201"
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def test_run_once_and_bad_arguments(dirs, tmp_path):
    manifests, status = dirs
    parser = argparse.ArgumentParser()
    controller_mod.add_arguments(parser)
    assert controller_mod.run(parser.parse_args(["--manifests", str(manifests), "--status", str(status),
                                                 "--once"])) == 0
    assert read_json(status / "allocation.json")["policies"]["shop/cart"]["node"] == "alpha"
    assert controller_mod.run(parser.parse_args(["--manifests", str(tmp_path / "absent"),
                                                 "--status", str(status), "--once"])) == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["--manifests", "m", "--status", "s", "--cluster-cidr", "10.0.0.0/33"])


def test_sigterm_stops_the_controller_cleanly(dirs):
    manifests, status = dirs
    code = ("import argparse, logging, sys\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from sdn_egress import controller\n"
            "p = argparse.ArgumentParser(); controller.add_arguments(p)\n"
            "sys.exit(controller.run(p.parse_args(sys.argv[1:])))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "--manifests", str(manifests), "--status", str(status)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (status / "allocation.json").exists() or proc.poll() is not None, "the controller",
                 timeout=30.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out
        assert "signal 15, stopping" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
