#!/usr/bin/env python3
"""Time from `lab apply` of an EgressPolicy to the first packet the external
host sees with the egress IP.

A pod on a worker node sends a UDP datagram to the external echo service every
10 ms; the clock starts when the policy file lands in the lab's manifest
directory (``--kube``: when the lab's API server has accepted the object) and
stops at the first answer that names the EIP.  Between runs the
policy is deleted and the pod is back on its node IP.  Prints min/median/max
and writes them to BENCHMARKS.md.

The bundled lab is dual stack: IPv4 with ``egresspolicy.yaml``, then IPv6
with ``egresspolicy-ipv6.yaml`` (gateway ``egressgateway-dualstack.yaml``),
the probe to the external host's IPv6 address and the clock stopped by the
IPv6 EIP (``--families`` to pick).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, summary, write_section  # noqa: E402

from sdn_egress.lab import Lab  # noqa: E402
from sdn_egress.lab.topology import default_topology_path  # noqa: E402

PROBE = r"""
import socket, sys, time
dst, want, limit = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.01)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
while time.monotonic() - t0 < limit:
    s.sendto(b"probe\n", (dst, 8080))
    try:
        while True:
            data, _ = s.recvfrom(100)
            if data.decode().strip() == want:
                print(f"{time.monotonic() - t0:.4f}", flush=True); sys.exit(0)
    except socket.timeout:
        pass
print("timeout", flush=True); sys.exit(1)
"""


# Per family: the gateway and policy examples, the pool's first address (the
# first run's EIP), the allocation's field for it.
FAMILIES = {"IPv4": ("egressgateway.yaml", "egresspolicy.yaml", "192.0.2.200", "eip_v4"),
            "IPv6": ("egressgateway-dualstack.yaml", "egresspolicy-ipv6.yaml", "2001:db8::220", "eip_v6")}


def measure(lab, family: str, runs: int, limit: float) -> list[float]:
    gateway, policy_file, first, field = FAMILIES[family]
    lab.apply(os.path.join(ROOT, "k8s", "examples", gateway))
    policy_src = os.path.join(ROOT, "k8s", "examples", policy_file)
    with open(policy_src) as f:
        policy = yaml.safe_load(f)
    key = f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"
    pod = "shop/cart-0"
    ext, node_ip = lab.address("ext-1", family), lab.address("bravo", family)
    eip, samples = None, []
    for run in range(runs):
        # The EIP is known after the first run (sticky allocation); the
        # first run discovers it from the pool's first address.
        want = eip or first
        proc = lab.popen(pod, [sys.executable, "-c", PROBE, ext, want, str(limit)])
        assert proc.stdout.readline().strip() == "ready"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        lab.apply(policy_src)
        out = proc.stdout.readline().strip()
        proc.wait()
        if out == "timeout":
            raise RuntimeError(f"{family} run {run}: no packet with {want} within {limit}s")
        samples.append(float(out))
        eip = lab.status()["allocation"]["policies"][key][field]
        print(f"{family} run {run + 1}: {float(out) * 1000:.0f} ms", flush=True)
        lab.delete(policy_src)
        deadline = time.monotonic() + limit
        while lab.udp_source(pod, ext) != node_ip:
            if time.monotonic() > deadline:
                raise RuntimeError("policy deletion did not take effect")
            time.sleep(0.1)
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--limit", type=float, default=30.0)
    ap.add_argument("--kube", action="store_true",
                    help="the production path: state through the lab's API server, informers, Leases")
    ap.add_argument("--families", default="IPv4,IPv6", help="comma-separated: IPv4, IPv6 (the same lab)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sdn-egress-bench-")
    lab = Lab(state_dir=os.path.join(tmp, "lab"), prefix="seb")
    samples = {}
    try:
        lab.up(default_topology_path(), kube=args.kube)
        # Measure the policy's way through the system, not the agents' start.
        deadline = time.monotonic() + 30
        while not all(lab.agent_passes(n["name"]) for n in lab.status()["nodes"]):
            if time.monotonic() > deadline:
                raise RuntimeError("agents did not finish their first pass")
            time.sleep(0.1)
        for family in args.families.split(","):
            samples[family] = measure(lab, family, args.runs, args.limit)
    finally:
        lab.down()
    what = "API server accepts the policy" if args.kube else "lab apply"
    lines = []
    for family, values in samples.items():
        s = summary(values)
        lines.append(f"| {family} | {what} -> first packet with the EIP (UDP every 10 ms, worker pod) | {s['n']} | "
                     f"{s['min'] * 1000:.0f} ms | {s['median'] * 1000:.0f} ms | {s['max'] * 1000:.0f} ms |")
    line = "\n".join(lines)
    print(line)
    head = "| family | what | runs | min | median | max |\n| --- | --- | --- | --- | --- | --- |\n"
    if args.kube:
        write_section("apply-to-first-packet-kube", head + line +
                      "\n\n`lab up --kube`: the controller and the agents in Kubernetes mode against the lab's "
                      "API server. The clock starts when the API server has stored the policy; it covers "
                      "the watch events to the controller, allocation, the ConfigMap write, its watch event "
                      "to each agent, flow and rule install. The bundled dual-stack lab, IPv6 after IPv4.")
    else:
        write_section("apply-to-first-packet", head + line +
                      "\n\nThe clock starts when the policy file lands in the manifest directory; it covers "
                      "the controller's poll and allocation, each agent's poll, flow and rule install. The "
                      "bundled dual-stack lab, IPv6 (egresspolicy-ipv6.yaml) after IPv4.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
