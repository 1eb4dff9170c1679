"""The lab every end-to-end test stands on: three nodes (alpha is the gateway),
pods selected and unselected, two external hosts.  One lab per test module
(lab up costs seconds); each test applies its own policies and removes them."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid

import pytest
import yaml

from sdn_egress.lab import Lab
from tests.support.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "k8s", "examples")

TOPOLOGY = {
    "ipFamilies": ["IPv4"],  # the IPv4 tests' lab; IPV6_TOPOLOGY and DUAL_TOPOLOGY below
    "nodes": [{"name": "alpha", "labels": {"egress": "true"}}, {"name": "bravo"}, {"name": "charlie"}],
    "pods": [
        {"name": "cart-0", "namespace": "shop", "node": "bravo", "labels": {"app": "cart"}},
        {"name": "cart-1", "namespace": "shop", "node": "alpha", "labels": {"app": "cart"}},
        {"name": "web-0", "namespace": "shop", "node": "charlie", "labels": {"app": "web"}},
        {"name": "cart-0", "namespace": "other", "node": "charlie", "labels": {"app": "cart"}},
    ],
    "externals": [{"name": "ext-1"}, {"name": "ext-2"}],
}
# The same cluster on IPv6 only (nodes, pods, externals: tunnels and BFD over
# the IPv6 underlay) and dual stack (both families everywhere; tunnels over IPv4).
IPV6_TOPOLOGY = {**TOPOLOGY, "ipFamilies": ["IPv6"]}
DUAL_TOPOLOGY = {**TOPOLOGY, "ipFamilies": ["IPv4", "IPv6"]}
IPV4, IPV6 = "IPv4", "IPv6"


def pytest_collection_modifyitems(items):
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@contextlib.contextmanager
def lab_up(topology: dict, prefix: str, kube: bool = False):
    """A lab of ``topology`` in a temporary state directory, removed with
    everything it made when the block ends, also on failure (``kube``: the
    state served by the lab's API server)."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, OVS)")
    state = tempfile.mkdtemp(prefix="sdn-egress-e2e-")
    topo = os.path.join(state, "topology.yaml")
    with open(topo, "w") as f:
        yaml.safe_dump(topology, f)
    the_lab = Lab(state_dir=os.path.join(state, "lab"), prefix=prefix + uuid.uuid4().hex[:3])
    try:
        the_lab.up(topo, kube=kube)
        yield the_lab
    finally:
        try:
            the_lab.down()
        finally:
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def lab():
    with lab_up(TOPOLOGY, "se2e") as the_lab:
        yield the_lab


class Policies:
    """Applies manifests for one test and deletes them afterwards, waiting until
    the controller has allocated and every agent has finished a pass."""

    def __init__(self, lab: Lab, tmp_path):
        self.lab = lab
        self.tmp = tmp_path
        self.files: list[str] = []

    def apply(self, *docs: dict | str) -> list[str]:
        paths = []
        for doc in docs:
            if isinstance(doc, str):
                path = os.path.join(EXAMPLES, doc)
            else:
                path = str(self.tmp / f"obj-{len(self.files)}.yaml")
                with open(path, "w") as f:
                    yaml.safe_dump(doc, f)
            self.lab.apply(path)
            self.files.append(path)
            paths.append(path)
        return paths

    def delete(self, path: str) -> None:
        self.lab.delete(path)
        self.files.remove(path)

    def eip(self, key: str, timeout: float = 30.0, family: str = "IPv4") -> str:
        """The policy's EIP of ``family`` once it has one and a gateway node."""
        deadline = time.monotonic() + timeout
        while True:
            pol = (self.lab.status().get("allocation") or {}).get("policies", {}).get(key) or {}
            eip = pol.get("eip_v6" if family == "IPv6" else "eip_v4")
            if eip and pol.get("node"):
                return eip
            if time.monotonic() > deadline:
                raise AssertionError(f"policy {key} got no EIP: {pol}")
            time.sleep(0.1)

    def cleanup(self) -> None:
        for path in reversed(self.files):
            self.lab.delete(path)
        self.files.clear()


@pytest.fixture
def policies(lab, tmp_path):
    p = Policies(lab, tmp_path)
    try:
        yield p
    finally:
        p.cleanup()
        wait_for(lambda: not lab_rules(lab), "steering rules removed after the test")


def lab_rules(lab) -> dict[str, list[str]]:
    """Steering rules (table 7100) per node that still exist, of either family."""
    out = {}
    for node in ("alpha", "bravo", "charlie"):
        rules = [r for fam in ("-4", "-6") for r in lab.exec(node, ["ip", fam, "rule"]).stdout.splitlines()
                 if "7100" in r]
        if rules:
            out[node] = rules
    return out


def policy_doc(name: str, namespace: str, *, eip: str | None = None, selector: dict | None = None,
               dest: list[str] | None = None, exclude: list[str] | None = None, priority: int | None = None,
               gateway: str = "edge", eip6: str | None = None) -> dict:
    """An EgressPolicy; ``eip`` an explicit EIP of its family (an IPv6 one
    goes to ``egressIP.ipv6``), ``eip6`` the IPv6 one beside an IPv4 ``eip``."""
    spec: dict = {"egressGatewayName": gateway,
                  "appliedTo": {"podSelector": {"matchLabels": selector or {"app": "cart"}}}}
    if eip and ":" in eip:
        eip, eip6 = None, eip
    if eip or eip6:
        spec["egressIP"] = {**({"ipv4": eip} if eip else {}), **({"ipv6": eip6} if eip6 else {})}
    if dest is not None:
        spec["destSubnet"] = dest
    if exclude is not None:
        spec["excludeSubnet"] = exclude
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def scrape(lab, host: str, url: str) -> dict[str, float]:
    """Prometheus metrics at ``url``, fetched from inside ``host``'s namespace."""
    import sys
    code = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    text = lab.exec(host, [sys.executable, "-c", code]).stdout
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


class Net:
    """One family's addresses of the e2e labs, so a test written once runs as
    its IPv4 original and its IPv6 twin with the same assertions (IPv4 values
    as the tests had them; IPv6 the same host numbers in 2001:db8::/32)."""

    def __init__(self, family: str):
        self.family = family
        self.v6 = family == IPV6
        self.key = "ipv6" if self.v6 else "ipv4"  # of ippools and egressIP
        self.ext1 = "2001:db8:100::10" if self.v6 else "198.51.100.10"
        self.ext2 = "2001:db8:100::11" if self.v6 else "198.51.100.11"
        self.ext_lan = "2001:db8:100::/64" if self.v6 else "198.51.100.0/24"
        self.host = 128 if self.v6 else 32  # a host route's prefix length
        self.src_match = "ipv6_src=" if self.v6 else "nw_src="  # a pod's address in ovs-ofctl's dump
        self.bad_cidr = "2001:db8:100::/129" if self.v6 else "198.51.100.0/33"

    def eip(self, n: int) -> str:
        """The lab's EIP number ``n`` (200-250): 192.0.2.n or 2001:db8::n."""
        return f"2001:db8::{n}" if self.v6 else f"192.0.2.{n}"

    def other(self, n: int) -> str:
        """An unused external address, for drift and trace tests."""
        return f"2001:db8:100::{n}" if self.v6 else f"198.51.100.{n}"

    def pool(self, first: int = 200, last: int = 210) -> dict:
        return {self.key: [f"{self.eip(first)}-{self.eip(last)}"]}

    def gateway(self, name: str = "edge", first: int = 200, last: int = 210) -> dict:
        return {"apiVersion": "sdn-egress.io/v1alpha1", "kind": "EgressGateway", "metadata": {"name": name},
                "spec": {"nodeSelector": {"matchLabels": {"egress": "true"}}, "ippools": self.pool(first, last)}}

    def node_ip(self, lab, node: str) -> str:
        return lab.address(node, self.family)

    def claims(self, lab, ip: str, wait: float = 1.0) -> list[str]:
        """Who answers for ``ip`` on the underlay: ARP, or neighbour solicitation."""
        return lab.nd_answers(ip, wait) if self.v6 else lab.arp_answers(ip, wait)


def product_gap(request, net: "Net", gaps: dict[str, str]) -> None:
    """Mark an IPv6 twin whose product side is not there yet as a strict
    xfail naming what is missing: it must fail for that reason now, and
    turns into a failure (XPASS strict) the day the product does it, so the
    mark is removed then.  IPv4 runs are never marked."""
    name = request.node.originalname
    if net.v6 and name in gaps:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"issue 12, product side: {gaps[name]}"))


# UDP datagrams with sequence numbers every 20 ms from one pod, to each
# destination in turn (one address, or both families' of the external host).
STREAM = r"""
import socket, sys, time
tag, dsts = sys.argv[1], sys.argv[2:]
socks = [(socket.socket(socket.AF_INET6 if ":" in d else socket.AF_INET, socket.SOCK_DGRAM), d) for d in dsts]
i = 0
print("ready", flush=True)
while True:
    for s, d in socks:
        s.sendto(f"{tag} {i}\n".encode(), (d, 8080))
    i += 1
    time.sleep(0.02)
"""


class Stream:
    """A pod sending a numbered UDP datagram every 20 ms to each of ``dsts``
    (port 8080 of the external host ``ext``); ``seen()``: what arrived there."""

    def __init__(self, lab, pod: str, dsts: list[str], ext: str = "ext-1"):
        self.lab, self.ext, self.tag = lab, ext, uuid.uuid4().hex[:8]
        self.proc = lab.popen(pod, [sys.executable, "-c", STREAM, self.tag, *dsts])
        assert self.proc.stdout.readline().strip() == "ready"

    def stop(self):
        self.proc.kill()
        self.proc.wait()

    def seen(self) -> list[dict]:
        return [e for e in self.lab.echo_seen(self.ext)
                if e.get("proto") == "udp" and e.get("data", "").startswith(self.tag + " ")]
