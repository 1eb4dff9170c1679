#!/usr/bin/env python3
"""New pods under a policy: from the pod's network coming up to its first
packet with the egress IP at the external host, how many of its packets
left with a node address on the way (goal: 0), and what the new-pod hold
costs an unselected new pod's first TCP connection.

Each run creates a pod on a worker node the way the lab's kubelet does
(network first, the Pod object right after); a sender in the pod starts with
its network, a UDP datagram every 10 ms; tcpdump on the external host
captures everything to the echo service.  Then the same with the agents'
hold off (``--new-pod-hold 0``), for comparison.  Prints min/median/max and
writes them to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, summary, write_section  # noqa: E402

from sdn_egress.lab import Lab  # noqa: E402
from sdn_egress.lab.topology import default_topology_path  # noqa: E402

# One TCP connection from the pod's first moment (the kernel's own SYN
# retransmissions, as an application sees them): seconds until answered.
CONNECT = r"""
import socket, sys, time
print("connecting", flush=True)
t0 = time.monotonic()
s = socket.create_connection((sys.argv[1], 8080), timeout=float(sys.argv[2]))
s.sendall(b"hi\n"); s.makefile().readline()
print(f"{time.monotonic() - t0:.4f}", flush=True)
"""


def selected_run(lab: Lab, tmp: str, i: int, node: str, eip: str, ext: str) -> tuple[float, int]:
    key = f"shop/bench-{i}"
    cap = lab.capture("ext-1", os.path.join(tmp, f"{i}.pcap"))
    lab.add_pod(key, node, {"app": "cart"}, publish=False)
    try:
        sender = lab.first_answer_sender(key, ext, eip, 20)  # its first datagram is out: the kubelet reports
        lab.publish_pod(key)
        out = sender.communicate(timeout=30)[0].split()
        if out[-1] != "done":
            raise RuntimeError(f"{key}: no answer with {eip} within 20 s")
        seen = cap.sources()
        node_ips = {n["ip"] for n in lab.status()["nodes"]}
        return float(out[0]), sum(1 for s in seen if s in node_ips)
    finally:
        cap.close()
        lab.delete_pod(key)


def unselected_run(lab: Lab, i: int, node: str, ext: str) -> float:
    key = f"shop/plain-{i}"
    lab.add_pod(key, node, {"app": "web"}, publish=False)
    try:
        client = lab.popen(key, [sys.executable, "-c", CONNECT, ext, "20"])
        if client.stdout.readline().strip() != "connecting":
            raise RuntimeError(f"{key}: the client did not start")
        lab.publish_pod(key)
        out, err = client.communicate(timeout=30)
        if client.returncode:
            raise RuntimeError(f"{key}: first connection failed: {err.strip()}")
        return float(out)
    finally:
        lab.delete_pod(key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--kube", action="store_true", help="state through the lab's API server")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sdn-egress-bench-")
    lab = Lab(state_dir=os.path.join(tmp, "lab"), prefix="sebp")
    results: dict[str, dict] = {}
    try:
        lab.up(default_topology_path(), kube=args.kube)
        lab.apply(os.path.join(ROOT, "k8s", "examples", "egressgateway.yaml"))
        lab.apply(os.path.join(ROOT, "k8s", "examples", "egresspolicy.yaml"))
        deadline = time.monotonic() + 60
        while not ((lab.status().get("allocation") or {}).get("policies", {}).get("shop/cart") or {}).get("node") \
                or not all(lab.agent_passes(n["name"]) for n in lab.status()["nodes"]):
            if time.monotonic() > deadline:
                raise RuntimeError("no EIP for shop/cart, or agents without a first pass")
            time.sleep(0.1)
        while not lab.bfd_sessions_up():
            if time.monotonic() > deadline:
                raise RuntimeError("BFD sessions not up")
            time.sleep(0.1)
        eip = lab.status()["allocation"]["policies"]["shop/cart"]["eip_v4"]
        ext = lab.status()["externals"][0]["ip"]
        workers = ["bravo", "charlie"]
        for mode, agent_args in (("hold", []), ("no hold", ["--new-pod-hold", "0"])):
            if agent_args:
                lab.set_agent_args(agent_args)
                deadline = time.monotonic() + 60
                while not all(lab.agent_passes(n) for n in workers) or not lab.bfd_sessions_up():
                    if time.monotonic() > deadline:
                        raise RuntimeError("restarted agents without a first pass")
                    time.sleep(0.1)
            first, leaked, connect = [], [], []
            for i in range(args.runs):
                t, n = selected_run(lab, tmp, i, workers[i % 2], eip, ext)
                first.append(t)
                leaked.append(n)
                connect.append(unselected_run(lab, i, workers[i % 2], ext))
                print(f"{mode} run {i + 1}: first EIP packet {t * 1000:.0f} ms, {n} with a node address; "
                      f"unselected first connection {connect[-1] * 1000:.0f} ms", flush=True)
            results[mode] = {"first": summary(first), "leaked": summary(leaked), "connect": summary(connect),
                             "leaked_total": sum(leaked)}
    finally:
        lab.down()

    def ms(s):
        return f"{s['min'] * 1000:.0f} ms | {s['median'] * 1000:.0f} ms | {s['max'] * 1000:.0f} ms"
    rows = []
    for mode, r in results.items():
        rows.append(f"| {mode}: pod network up -> first packet with the EIP (UDP every 10 ms) | "
                    f"{r['first']['n']} | {ms(r['first'])} |")
        rows.append(f"| {mode}: packets with a node address before that (total {r['leaked_total']}) | "
                    f"{r['leaked']['n']} | {r['leaked']['min']} | {r['leaked']['median']} | {r['leaked']['max']} |")
        rows.append(f"| {mode}: unselected pod, network up -> first TCP connection answered | "
                    f"{r['connect']['n']} | {ms(r['connect'])} |")
    table = "| what | runs | min | median | max |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows)
    print(table)
    name = "pod-start-kube" if args.kube else "pod-start"
    write_section(name, table + "\n\nA pod is created as the lab's kubelet does it: its network, then its Pod "
                  "object, published as soon as the pod's first packet (or SYN) is out: the app starts "
                  "before the kubelet's report reaches the agent. \"hold\": the agents' default "
                  "`--new-pod-hold 5`; \"no hold\": `--new-pod-hold 0`. Packets are counted by tcpdump on the "
                  "external host. An unselected pod's first connection pays the hold until its agent has "
                  "classified it, then the kernel's SYN retransmission (1 s) (docs/pod-lifecycle.md).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
