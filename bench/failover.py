#!/usr/bin/env python3
"""Gateway failover as the outside world sees it.

Two gateway nodes, one worker. A pod on the worker sends a UDP datagram with a
sequence number every 10 ms to the external echo service while the active
gateway of its EIP is power-cut (SIGKILL of its OVS daemons and agent). The
outage is the longest silence the external host saw between two consecutive
datagrams around the kill. A second client opens a new TCP connection every
50 ms; its figure is kill -> first TCP connection answered. The killed node is
revived (it comes back as a standby) before the next round. Also counted: any
datagram that arrived with a source other than the EIP (must be 0).

``--families IPv4,IPv6`` (the default): once on an IPv4 lab and once on an
IPv6-only one (Geneve and BFD over the IPv6 underlay, NAT66, the IPv6 EIP),
with the same BFD settings; the figures side by side.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import summary, write_section  # noqa: E402

from sdn_egress.lab import Lab  # noqa: E402

# Per family: the external host, the EIP, the pool and the destination.
PLAN = {"IPv4": ("198.51.100.10", "192.0.2.201", "192.0.2.200-192.0.2.210", "198.51.100.0/24"),
        "IPv6": ("2001:db8:100::10", "2001:db8::201", "2001:db8::200-2001:db8::210", "2001:db8:100::/64")}


def topology(family: str) -> dict:
    return {"ipFamilies": [family],
            "nodes": [{"name": "alpha", "labels": {"egress": "true"}},
                      {"name": "bravo", "labels": {"egress": "true"}}, {"name": "charlie"}],
            "pods": [{"name": "cart-0", "namespace": "shop", "node": "charlie", "labels": {"app": "cart"}}],
            "externals": [{"name": "ext-1"}]}


def objects(family: str) -> list[dict]:
    _, eip, pool, dest = PLAN[family]
    key = family.lower()
    return [
        {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
         "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}}, "ippools": {key: [pool]}}},
        {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressPolicy",
         "metadata": {"name": "cart", "namespace": "shop"},
         "spec": {"egressGatewayName": "edge", "egressIP": {key: eip}, "destSubnet": [dest],
                  "appliedTo": {"podSelector": {"matchLabels": {"app": "cart"}}}}},
    ]


UDP = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM); i = 0
print("ready", flush=True)
while True:
    s.sendto(f"{sys.argv[2]} {i}\n".encode(), (sys.argv[1], 8080)); i += 1; time.sleep(0.01)
"""
TCP = r"""
import socket, sys, time
print("ready", flush=True)
sys.stdin.readline(); t0 = time.time()
while time.time() - t0 < 20:
    try:
        c = socket.create_connection((sys.argv[1], 8080), timeout=0.3)
        if c.makefile().readline().strip() == sys.argv[2]:
            print(f"{time.time():.4f}", flush=True); break
    except OSError:
        pass
    time.sleep(0.05)
"""


def wait(pred, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(0.1)


def active(lab, eip: str) -> str:
    return next(a["nodes"][0] for a in lab.status()["allocation"]["eips"] if a["ip"] == eip)


def bfd_settings(lab) -> str:
    """The BFD configuration in effect on the worker's tunnel to a gateway
    (what the agent wrote into OVSDB), e.g. "100 ms x 3"."""
    raw = lab.ovs("charlie").vsctl("get", "Interface", "gnv-alpha", "bfd").strip().strip("{}")
    bfd = dict(kv.split("=", 1) for kv in raw.replace('"', "").split(", ") if "=" in kv)
    if bfd.get("enable") != "true":
        raise RuntimeError(f"BFD is not enabled on charlie's tunnel to alpha: {raw!r}")
    return f"{bfd.get('min_tx', '1000')} ms x {bfd.get('mult', '3')}"


def measure(family: str, kills: int) -> tuple[str, list[float], list[float], int]:
    """One lab of ``family``: (BFD settings, outages, kill -> new TCP, leaked datagrams)."""
    EXT, EIP = PLAN[family][:2]
    tmp = tempfile.mkdtemp(prefix="sdn-egress-bench-ha-")
    topo = os.path.join(tmp, "topo.yaml")
    with open(topo, "w") as f:
        yaml.safe_dump(topology(family), f)
    objs = os.path.join(tmp, "objects.yaml")
    with open(objs, "w") as f:
        yaml.safe_dump_all(objects(family), f)
    lab = Lab(os.path.join(tmp, "lab"), prefix="sebh")
    outages, tcp_after, leaks = [], [], 0
    try:
        lab.up(topo)
        lab.apply(objs)
        wait(lambda: lab.udp_source("shop/cart-0", EXT) == EIP, "EIP answered")
        wait(lab.bfd_sessions_up, "BFD up")
        bfd = bfd_settings(lab)
        for k in range(kills):
            wait(lab.bfd_sessions_up, "BFD up")
            wait(lambda: lab.udp_source("shop/cart-0", EXT) == EIP, "EIP answered")
            tag = uuid.uuid4().hex[:8]
            udp = lab.popen("shop/cart-0", [sys.executable, "-c", UDP, EXT, tag])
            tcp = lab.popen("shop/cart-0", [sys.executable, "-c", TCP, EXT, EIP])
            assert udp.stdout.readline().strip() == "ready" and tcp.stdout.readline().strip() == "ready"
            time.sleep(1.0)
            victim = active(lab, EIP)
            t_kill = time.time()
            lab.kill(victim)
            tcp.stdin.write("go\n")
            tcp.stdin.flush()
            tcp_ok = tcp.stdout.readline().strip()
            time.sleep(1.0)
            udp.kill()
            udp.wait()
            tcp.wait()
            seen = [e for e in lab.echo_seen("ext-1")
                    if e.get("proto") == "udp" and e.get("data", "").startswith(tag + " ")]
            leaks += sum(e["src"] != EIP for e in seen)
            # The kill lands a little after t_kill (signals, reaping): the
            # outage is the longest silence around it, between two datagrams.
            ts = sorted(e["t"] for e in seen if t_kill - 0.5 <= e["t"] <= t_kill + 5)
            before, after = max(zip(ts, ts[1:], strict=False), key=lambda p: p[1] - p[0])
            outages.append(after - before)
            if tcp_ok:
                tcp_after.append(float(tcp_ok) - t_kill)
            print(f"{family} kill {k + 1}: {victim} down, outage {(after - before) * 1000:.0f} ms, "
                  f"new TCP after {(float(tcp_ok) - t_kill) * 1000 if tcp_ok else float('nan'):.0f} ms", flush=True)
            lab.revive(victim)
    finally:
        try:
            lab.down()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return bfd, outages, tcp_after, leaks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=6)
    ap.add_argument("--families", default="IPv4,IPv6", help="comma-separated: IPv4, IPv6 (one lab each)")
    args = ap.parse_args()
    rows, leaks, settings = [], {}, set()
    for family in args.families.split(","):
        bfd, outages, tcp_after, leaks[family] = measure(family, args.kills)
        settings.add(bfd)
        u, t = summary(outages), summary(tcp_after)
        rows += [f"| {family} | UDP outage at the external host (longest gap between datagrams) | {u['n']} | "
                 f"{u['min'] * 1000:.0f} ms | {u['median'] * 1000:.0f} ms | {u['max'] * 1000:.0f} ms |",
                 f"| {family} | kill -> first new TCP connection answered | {t['n']} | {t['min'] * 1000:.0f} ms | "
                 f"{t['median'] * 1000:.0f} ms | {t['max'] * 1000:.0f} ms |"]
    leaked = ", ".join(f"{f} **{n}**" for f, n in leaks.items())
    print("\n".join(rows), f"\ndatagrams with a source other than the EIP: {leaked}")
    write_section("gateway-failover", "\n".join([
        f"BFD {' / '.join(sorted(settings))} on the Geneve tunnels (min_tx = min_rx, read from OVSDB); active gateway "
        "power-cut (SIGKILL of its ovs-vswitchd, ovsdb-server and agent); worker pod sending UDP every 10 ms; same EIP "
        "after the move. IPv4 on an IPv4 lab; IPv6 on an IPv6-only lab (tunnels and BFD over the IPv6 underlay, NAT66, "
        "neighbour advertisements for the EIP).",
        "", "| family | what | kills | min | median | max |", "| --- | --- | --- | --- | --- | --- |", *rows, "",
        f"Datagrams that reached the external host with a source other than the EIP: {leaked}.",
        "Established TCP connections through the dead gateway break (its conntrack dies with it, as for "
        "every peer below); new connections succeed as measured.", "",
        "For context, the peers' own published failover figures (theirs, not measured here): Antrea Egress "
        "4-10 s; OVN-Kubernetes EgressIP about 5-6 s; spidernet egressgateway 15 s or more; Azure "
        "kube-egress-gateway 5-10 s (load-balancer probe) and onto a different IP; Cilium Egress Gateway "
        "(open source) no failover."]))
    return 0 if not any(leaks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
