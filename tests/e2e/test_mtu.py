"""Full-size packets through the gateway, on the lab (IPv4): pods with MTU 1500
on a 1500-byte underlay, Geneve taking 50 bytes of it (tunnel MTU 1450).

Bulk TCP both ways checked by digest, PMTUD towards the pod (the host's
route MTU) and towards the outside sender (the gateway's ICMP frag-needed),
fragments without DF both ways, and PMTUD through the NAT to a host behind a
narrower link (ext-3, 1280 bytes), whose router's ICMP is de-NATed to the pod.
"""
from __future__ import annotations

import re
import sys

import pytest

from tests.support.waiting import wait_for

from .conftest import TOPOLOGY, lab_up, policy_doc

EIP = "192.0.2.205"
EXT = "198.51.100.10"  # ext-1, on the external LAN (1500)
NARROW = "198.51.100.12"  # ext-3, behind a 1280-byte link of its own
TUNNEL_MTU = 1450
MB16 = 16 * 1024 * 1024

TOPO = {**TOPOLOGY, "externals": [{"name": "ext-1"}, {"name": "ext-2"}, {"name": "ext-3", "mtu": 1280}]}
GATEWAY = {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": "edge"},
           "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}},
                    "ippools": {"ipv4": ["192.0.2.200-192.0.2.210"]}}}

WORKER_POD, GATEWAY_POD = "shop/cart-0", "shop/cart-1"  # on bravo (worker), on alpha (the gateway)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    import yaml
    with lab_up(TOPO, "semtu") as the_lab:
        path = tmp_path_factory.mktemp("mtu") / "objects.yaml"
        path.write_text(yaml.safe_dump_all([GATEWAY, policy_doc("cart", "shop", eip=EIP)]))
        the_lab.apply(str(path))
        wait_for(lambda: the_lab.udp_source(WORKER_POD, EXT) == EIP, "cart-0 on its EIP", timeout=30)
        wait_for(lambda: the_lab.udp_source(GATEWAY_POD, EXT) == EIP, "cart-1 on its EIP", timeout=30)
        yield the_lab


def flush_route_cache(lab, host: str) -> None:
    lab.exec(host, ["ip", "route", "flush", "cache"])


def learnt_mtu(lab, host: str, dst: str) -> int | None:
    """The path MTU ``host``'s kernel has cached towards ``dst`` (None: none)."""
    m = re.search(r"\bmtu (\d+)", lab.exec(host, ["ip", "route", "get", dst]).stdout)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("pod", [WORKER_POD, GATEWAY_POD])
@pytest.mark.parametrize("direction", ["upload", "download"])
def test_bulk_tcp_at_full_size_arrives_intact(lab, pod, direction):
    """16 MB over one TCP connection, through the gateway, both ways: every
    byte arrives (SHA-256), the external host saw the EIP."""
    before = len(lab.echo_seen("ext-1"))
    result = lab.bulk(pod, EXT, MB16, direction)
    assert result["intact"], result
    assert result["bytes"] == MB16
    seen = [e for e in lab.echo_seen("ext-1")[before:] if e.get("event", "").startswith("bulk")]
    assert seen and {e["src"] for e in seen} == {EIP}


def test_status_shows_the_tunnel_mtu_and_mss(lab):
    for node in ("alpha", "bravo", "charlie"):
        st = wait_for(lambda: lab.agent_status(node).get("tunnel_mtu") and lab.agent_status(node),
                      f"{node} reports its tunnel MTU")
        assert (st["tunnel_mtu"], st["mss"]) == (TUNNEL_MTU, TUNNEL_MTU - 40)
        assert "underlay 1500" in st["tunnel_mtu_source"]
    import subprocess
    out = subprocess.run([sys.executable, "-m", "sdn_egress.cli", "status", "--json", "--lab-state",
                          lab.state_dir], capture_output=True, text=True, check=True).stdout
    import json
    nodes = {n["node"]: n for n in json.loads(out)["nodes"]}
    assert {k: (n["tunnel_mtu"], n["mss"]) for k, n in nodes.items()} == {
        k: (TUNNEL_MTU, TUNNEL_MTU - 40) for k in ("alpha", "bravo", "charlie")}


def test_df_ping_too_big_for_the_tunnel_gets_frag_needed(lab):
    flush_route_cache(lab, WORKER_POD)
    out = lab.exec(WORKER_POD, ["ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1472", EXT], check=False)
    text = out.stdout + out.stderr
    assert re.search(r"mtu ?= ?1450", text), text
    assert learnt_mtu(lab, WORKER_POD, EXT) == TUNNEL_MTU
    fits = lab.exec(WORKER_POD, ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(TUNNEL_MTU - 28), EXT],
                    check=False)
    assert fits.returncode == 0, fits.stdout + fits.stderr


@pytest.mark.parametrize("pod", [WORKER_POD, GATEWAY_POD])
def test_ping_without_df_is_fragmented_both_ways(lab, pod):
    """1500-byte echo requests leave in fragments (the host), the 1500-byte
    replies come back in fragments (the gateway's agent cuts them)."""
    flush_route_cache(lab, pod)
    flush_route_cache(lab, "ext-1")  # else ext-1 may know the EIP's path MTU and cut the replies itself
    out = lab.exec(pod, ["ping", "-c", "3", "-W", "2", "-M", "dont", "-s", "1472", EXT], check=False)
    assert " 3 received" in out.stdout, out.stdout + out.stderr
    assert re.search(r"1480 bytes from " + re.escape(EXT), out.stdout), out.stdout


UDP_POD = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.bind(("0.0.0.0", 0))
s.sendto(b"hello", (sys.argv[1], 9100))
got = []
try:
    while True:
        got.append(len(s.recvfrom(4000)[0]))
except socket.timeout:
    pass
print(" ".join(map(str, got)))
"""

UDP_EXT = r"""
import errno, socket, sys
size, pmtudisc = int(sys.argv[1]), {"do": 2, "dont": 0}[sys.argv[2]]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, pmtudisc)  # IP_MTU_DISCOVER
s.bind(("0.0.0.0", 9100)); s.settimeout(10)
print("ready", flush=True)
data, peer = s.recvfrom(100)
results = []
for _ in range(3):
    try:
        s.sendto(b"z" * size, peer); results.append("sent")
    except OSError as exc:
        results.append("EMSGSIZE" if exc.errno == errno.EMSGSIZE else str(exc))
    import time; time.sleep(0.3)
print(" ".join(results), flush=True)
"""


def udp_exchange(lab, size: int, df: str) -> tuple[list[int], list[str]]:
    """The pod sends one datagram to ext-1; ext-1 answers three of ``size``
    bytes (``df``: "do" sets DF, "dont" does not).  (sizes the pod got, what
    the external sender's sendto said each time)."""
    server = lab.popen("ext-1", [sys.executable, "-c", UDP_EXT, str(size), df])
    try:
        assert server.stdout.readline().strip() == "ready"
        got = lab.exec(WORKER_POD, [sys.executable, "-c", UDP_POD, EXT]).stdout.split()
        sent = server.stdout.readline().split()
    finally:
        if server.poll() is None:
            server.kill()
        server.wait()
    return [int(g) for g in got], sent


@pytest.mark.parametrize("size", [1400, 1472])
def test_udp_from_outside_without_df_is_delivered_whole(lab, size):
    flush_route_cache(lab, "ext-1")
    got, sent = udp_exchange(lab, size, "dont")
    assert sent == ["sent"] * 3
    assert got == [size] * 3


def test_udp_from_outside_with_df_too_big_gets_frag_needed_from_the_eip(lab):
    flush_route_cache(lab, "ext-1")
    got, sent = udp_exchange(lab, 1472, "do")
    # The first datagram meets the gateway's ICMP frag-needed; the sender's
    # kernel learns the tunnel MTU for the EIP and refuses the next ones.
    assert got == []
    assert sent[0] == "sent" and "EMSGSIZE" in sent[1:], sent
    assert learnt_mtu(lab, "ext-1", EIP) == TUNNEL_MTU
    ok, _ = udp_exchange(lab, 1400, "do")
    assert ok == [1400] * 3


@pytest.mark.parametrize("pod", [WORKER_POD, GATEWAY_POD])
def test_pmtud_through_the_nat_to_a_narrow_host(lab, pod):
    """A DF packet the router cannot pass to ext-3 (1280-byte link) gets the
    router's frag-needed, addressed to the EIP about the SNATed packet; the
    gateway matches it to the connection, de-NATs it (outer and embedded
    header) and sends it to the pod, whose kernel learns 1280.  TCP to that
    host takes the MSS ext-3 announces (1240) and needs no PMTUD: 16 MB each
    way arrive intact."""
    flush_route_cache(lab, pod)
    out = lab.exec(pod, ["ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1400", NARROW], check=False)
    text = out.stdout + out.stderr
    assert re.search(r"mtu ?= ?1280", text), text
    assert learnt_mtu(lab, pod, NARROW) == 1280
    fits = lab.exec(pod, ["ping", "-c", "1", "-W", "2", "-M", "do", "-s", str(1280 - 28), NARROW], check=False)
    assert fits.returncode == 0, fits.stdout + fits.stderr
    up = lab.bulk(pod, NARROW, MB16, "upload")
    assert up["intact"] and up["src"] == EIP, up
    down = lab.bulk(pod, NARROW, MB16, "download")
    assert down["intact"], down


def test_lab_status_reports_the_external_links_mtu(lab):
    mtus = {x["name"]: x["mtu"] for x in lab.status()["externals"]}
    assert mtus == {"ext-1": 1500, "ext-2": 1500, "ext-3": 1280}
    assert lab.exec("ext-3", ["cat", "/sys/class/net/eth0/mtu"]).stdout.strip() == "1280"


UDP_FROM_POD = r"""
import errno, socket, sys, time
size, pmtudisc = int(sys.argv[2]), {"do": 2, "dont": 0}[sys.argv[3]]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.setsockopt(socket.IPPROTO_IP, 10, pmtudisc)  # IP_MTU_DISCOVER
out = []
for _ in range(3):
    try:
        s.sendto(b"u" * size, (sys.argv[1], 8080))
        out.append(s.recvfrom(200)[0].decode().strip())
    except socket.timeout:
        out.append("timeout")
    except OSError as exc:
        out.append("EMSGSIZE" if exc.errno == errno.EMSGSIZE else str(exc))
    time.sleep(0.2)
print(" ".join(out))
"""


@pytest.mark.parametrize("size", [1400, 1472])
@pytest.mark.parametrize("df", ["dont", "do"])
def test_udp_from_the_pod_round_trips_or_gets_frag_needed(lab, size, df):
    """Datagrams of 1400 and 1472 bytes from a selected pod: the external
    host answers each with the source it saw (the EIP), except a 1472-byte
    one with DF, which the pod's node answers with frag-needed: the pod's
    socket then refuses it (EMSGSIZE) instead of losing it."""
    flush_route_cache(lab, WORKER_POD)
    out = lab.exec(WORKER_POD, [sys.executable, "-c", UDP_FROM_POD, EXT, str(size), df]).stdout.split()
    if size + 28 > TUNNEL_MTU and df == "do":
        assert "EMSGSIZE" in out and EIP not in out, out
        assert learnt_mtu(lab, WORKER_POD, EXT) == TUNNEL_MTU
    else:
        assert out == [EIP] * 3, out


UDP_CLOSED_PORT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
s.connect((sys.argv[1], 9))  # nothing listens on the discard port of the external host
s.send(b"anyone?")
try:
    s.recv(100)
    print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"""


def test_icmp_errors_from_outside_reach_the_pod_de_natted(lab):
    """Port unreachable from the external host and time exceeded from the
    router are about the SNATed packet (to the EIP); the gateway matches them
    to the connection and the pod's kernel gets them about its own packet."""
    out = lab.exec(WORKER_POD, [sys.executable, "-c", UDP_CLOSED_PORT, EXT]).stdout.strip()
    assert out == "refused"  # the pod's socket saw the ICMP port unreachable
    # TTL 2: the pod's node takes one, the router (past the gateway, which
    # does not decrement) the last.
    ping = lab.exec(WORKER_POD, ["ping", "-c", "1", "-W", "2", "-t", "2", EXT], check=False)
    assert re.search(r"Time to live exceeded", ping.stdout), ping.stdout + ping.stderr
