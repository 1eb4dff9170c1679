"""How long `sdn-egress trace`, `flows` and `status` take: in lab mode, and
as on a real cluster (run in a node's namespace with only a kubeconfig, the
node's OVS run directory and the agent's records) on `lab up --kube`.

    flock /tmp/sdn-egress-lab.lock python bench/debug_commands.py [--runs 5]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, summary, write_section  # noqa: E402

from sdn_egress.lab import Lab  # noqa: E402

EXT, EIP = "198.51.100.10", "192.0.2.205"
TOPOLOGY = {"nodes": [{"name": "alpha", "labels": {"egress": "true"}}, {"name": "bravo", "labels": {"egress": "true"}},
                      {"name": "charlie"}],
            "pods": [{"name": "cart-0", "namespace": "shop", "node": "charlie", "labels": {"app": "cart"}}],
            "externals": [{"name": "ext-1"}]}
OBJECTS = [{"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
            "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                     "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"]}}},
           {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressPolicy",
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {"egressGatewayName": "edge", "egressIP": {"ipv4": EIP},
                     "appliedTo": {"podSelector": {"matchLabels": {"app": "cart"}}}}}]
EXE = os.path.join(os.path.dirname(sys.executable), "sdn-egress")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = ROOT  # the commands run this checkout's code
    tmp = tempfile.mkdtemp(prefix="sdn-egress-bench-")
    topo = os.path.join(tmp, "topology.yaml")
    with open(topo, "w") as f:
        yaml.safe_dump(TOPOLOGY, f)
    lab = Lab(state_dir=os.path.join(tmp, "lab"), prefix="sebd")
    rows = []
    try:
        lab.up(topo, kube=True)
        objs = os.path.join(tmp, "objects.yaml")
        with open(objs, "w") as f:
            yaml.safe_dump_all(OBJECTS, f)
        lab.apply(objs)
        deadline = time.monotonic() + 60
        while lab.udp_source("shop/cart-0", EXT) != EIP:
            if time.monotonic() > deadline:
                raise SystemExit("the policy did not take effect within 60 s")
        holder = next(n for n in ("alpha", "bravo") if EIP in lab.agent_status(n).get("held_eips", []))

        def on_node(node, *cmd):
            return lab.exec(node, [EXE, *cmd, "--kubeconfig", lab.kubeconfig, "--ovs-rundir", lab.ovs(node).rundir,
                                   "--records", lab.status_dir, "--here", node], check=False)

        def local(*cmd):
            return subprocess.run([EXE, *cmd, "--lab-state", lab.state_dir], capture_output=True, text=True)

        trace = ("trace", "--src", "shop/cart-0", "--dst", f"{EXT}:8080", "--proto", "udp")
        cases = [
            ("`trace`, lab mode (every hop)", lambda: local(*trace)),
            ("`trace` on the pod's node, as on a cluster (kernel, br-int)", lambda: on_node("charlie", *trace)),
            ("`trace --gateway-hop` on the gateway, as on a cluster", lambda: on_node(holder, *trace, "--gateway-hop")),
            ("`flows --node charlie`, lab mode", lambda: local("flows", "--node", "charlie")),
            ("`flows --node charlie` on charlie, as on a cluster",
             lambda: on_node("charlie", "flows", "--node", "charlie")),
            ("`status`, lab mode", lambda: local("status")),
            ("`status --kubeconfig` (objects, ConfigMap, Leases)",
             lambda: lab.exec("router", [EXE, "status", "--kubeconfig", lab.kubeconfig], check=False)),
        ]
        for what, fn in cases:
            times = []
            for _ in range(args.runs):
                t = time.monotonic()
                r = fn()
                times.append(time.monotonic() - t)
                if r.returncode != 0:
                    raise SystemExit(f"{what}: exit {r.returncode}: {r.stderr}")
            s = summary(times)
            rows.append(f"| {what} | {s['n']} | {s['min'] * 1000:.0f} ms | {s['median'] * 1000:.0f} ms | "
                        f"{s['max'] * 1000:.0f} ms |")
            print(rows[-1], flush=True)
    finally:
        lab.down()
    write_section("debug-commands", "| command | runs | min | median | max |\n| --- | --- | --- | --- | --- |\n"
                  + "\n".join(rows) + "\n\nWall time of one command, process start to exit, on `lab up --kube` "
                  "(three nodes, one policy). \"As on a cluster\": in the node's namespace with only a kubeconfig, "
                  "the node's OVS run directory and the agent's records; most of its time is listing the "
                  "cluster's objects, the allocation ConfigMap and the agents' Leases from the API server.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
