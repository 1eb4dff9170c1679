"""Node views of a small lab, shared by the flows/ tests.

Three nodes on the underlay 192.0.2.0/24, router 192.0.2.1:
  n0  192.0.2.11  pods 203.0.113.0/27   active gateway of EIP 192.0.2.200 (key 7)
  n1  192.0.2.12  pods 203.0.113.32/27  worker
  n2  192.0.2.13  pods 203.0.113.64/27  standby gateway of 192.0.2.200
Policy default/web (EIP 192.0.2.200) selects pod default/a on n1 and
default/g on n0, to 198.51.100.0/24.  Policy default/dark (EIP 192.0.2.201,
key 9) has no live gateway and selects default/b on n1, to 198.51.100.0/24.

Tests get all of this through the ``lab`` fixture (``lab.view_n1()``,
``lab.EIP``), and a wired three-node fake fabric through ``fabric``.
"""
from __future__ import annotations

import os
import sys
import types
from dataclasses import replace

import netaddr
import pytest

# Test helpers next to this file (fakeswitch) import the same way whether or
# not tests/unit is a package.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import flows  # noqa: E402 - after the sys.path line above
from fakeswitch import Fabric, FakeNode  # noqa: E402 - after the sys.path line above
from flows.view import EipRoute, HeldEip, NodeView, Ports, ReturnRoute, Steer  # noqa: E402 - same

IP = netaddr.IPAddress
NET = netaddr.IPNetwork

EIP = IP("192.0.2.200")
EIP_KEY = 7
DARK_EIP = IP("192.0.2.201")
DARK_KEY = 9
DEST = NET("198.51.100.0/24")
EXTERNAL = IP("198.51.100.10")
ROUTER_MAC = "02:00:00:00:ff:01"

NODE_IP = {"n0": IP("192.0.2.11"), "n1": IP("192.0.2.12"), "n2": IP("192.0.2.13")}
POD_CIDR = {"n0": NET("203.0.113.0/27"), "n1": NET("203.0.113.32/27"), "n2": NET("203.0.113.64/27")}
POD_A = IP("203.0.113.34")  # default/a on n1
POD_B = IP("203.0.113.35")  # default/b on n1
POD_G = IP("203.0.113.2")  # default/g on n0
EGW_MAC = {"n0": "02:00:00:00:00:e0", "n1": "02:00:00:00:01:e0", "n2": "02:00:00:00:02:e0"}
BREX_MAC = {"n0": "02:00:00:00:00:b0", "n1": "02:00:00:00:01:b0", "n2": "02:00:00:00:02:b0"}

# br-int: egw0 1, gnv-flow 2, gnv-<peer> 3.., patch 9; br-ex: uplink 1, patch 2.
PORTS = {
    "n0": Ports(egw=1, tun_flow=2, tunnels=(("n2", 3),), int_patch=9, uplink=1, ex_patch=2),
    "n1": Ports(egw=1, tun_flow=2, tunnels=(("n0", 3), ("n2", 4)), int_patch=9, uplink=1,
                ex_patch=2),
    "n2": Ports(egw=1, tun_flow=2, tunnels=(("n0", 3),), int_patch=9, uplink=1, ex_patch=2),
}


def return_routes(holder: str) -> tuple[ReturnRoute, ...]:
    return tuple(ReturnRoute(node=n, node_ip=NODE_IP[n], pod_cidr=POD_CIDR[n], local=n == holder)
                 for n in sorted(NODE_IP))


def web_route(node: str, gateways=("n0", "n2")) -> EipRoute:
    return EipRoute(eip=EIP, tunnel_key=EIP_KEY, gateways=tuple(gateways),
                    local=bool(gateways) and gateways[0] == node)


def view_n1(**changes) -> NodeView:
    """The worker: pod a steered to the web EIP, pod b to the dark one."""
    v = NodeView(
        node="n1", node_ip=NODE_IP["n1"], ports=PORTS["n1"], egw_mac=EGW_MAC["n1"],
        brex_mac=BREX_MAC["n1"],
        steers=(Steer("default/a", POD_A, DEST, "default/web", EIP),
                Steer("default/b", POD_B, DEST, "default/dark", DARK_EIP)),
        eip_routes=(web_route("n1"), EipRoute(DARK_EIP, DARK_KEY, gateways=())),
        pod_cidrs=(POD_CIDR["n1"],))
    return _replace(v, changes)


def view_n0(next_hop_mac: str | None = ROUTER_MAC, **changes) -> NodeView:
    """The active gateway of the web EIP, with a selected pod of its own."""
    v = NodeView(
        node="n0", node_ip=NODE_IP["n0"], ports=PORTS["n0"], egw_mac=EGW_MAC["n0"],
        brex_mac=BREX_MAC["n0"],
        steers=(Steer("default/g", POD_G, DEST, "default/web", EIP),),
        eip_routes=(web_route("n0"),),
        held=(HeldEip(EIP, EIP_KEY, next_hop_mac, policies=("default/web",)),),
        return_routes=return_routes("n0"),
        pod_cidrs=(POD_CIDR["n0"],))
    return _replace(v, changes)


def view_n2(**changes) -> NodeView:
    """The standby: nothing of its own to steer or hold."""
    v = NodeView(node="n2", node_ip=NODE_IP["n2"], ports=PORTS["n2"], egw_mac=EGW_MAC["n2"],
                 brex_mac=BREX_MAC["n2"], pod_cidrs=(POD_CIDR["n2"],))
    return _replace(v, changes)


def rich_view() -> NodeView:
    """Every kind of flow at once, IPv4 and IPv6: a gateway that also steers,
    with a dead EIP, an unresolved next hop and a v6 EIP."""
    eip6, key6 = IP("2001:db8::200"), 11
    pod6, dest6 = IP("2001:db8:1::2"), NET("2001:db8:ff::/48")
    v = view_n0()
    return _replace(v, dict(
        steers=v.steers + (Steer("default/b", IP("203.0.113.3"), NET("198.51.100.128/25"),
                                 "default/dark", DARK_EIP),
                           Steer("default/g", pod6, dest6, "default/web6", eip6)),
        eip_routes=v.eip_routes + (EipRoute(DARK_EIP, DARK_KEY, gateways=()),
                                   EipRoute(eip6, key6, gateways=("n0",), local=True)),
        held=v.held + (HeldEip(IP("192.0.2.202"), 12, None, ("default/other",)),
                       HeldEip(eip6, key6, ROUTER_MAC, ("default/web6",)),
                       HeldEip(NODE_IP["n0"], 13, ROUTER_MAC, ("default/own",), node_ip=True)),
        return_routes=v.return_routes + (ReturnRoute("n1", NODE_IP["n1"], NET("2001:db8:1:1::/64")),
                                         ReturnRoute("n0", NODE_IP["n0"], NET("2001:db8:1::/64"),
                                                     local=True)),
        pod_cidrs=v.pod_cidrs + (NET("2001:db8:1::/64"),)))


def _replace(view: NodeView, changes: dict) -> NodeView:
    return replace(view, **changes) if changes else view


def views() -> dict[str, NodeView]:
    return {"n0": view_n0(), "n1": view_n1(), "n2": view_n2()}


def make_fabric(node_views: dict[str, NodeView] | None = None) -> Fabric:
    """The three nodes wired together, each holding ``flows.build`` of its view
    (``node_views`` replaces some of the lab's)."""
    node_views = {**views(), **(node_views or {})}
    nodes = []
    for name, v in sorted(node_views.items()):
        node = FakeNode(name, v.node_ip, v.ports, tunnel_mtu=v.tunnel_mtu)
        node.sync(flows.build(v))
        nodes.append(node)
    return Fabric(nodes)


_EXPORTS = ("IP", "NET", "EIP", "EIP_KEY", "DARK_EIP", "DARK_KEY", "DEST", "EXTERNAL",
            "ROUTER_MAC", "NODE_IP", "POD_CIDR", "POD_A", "POD_B", "POD_G", "EGW_MAC",
            "BREX_MAC", "PORTS", "return_routes", "web_route", "view_n0", "view_n1", "view_n2",
            "rich_view", "views", "make_fabric")


@pytest.fixture
def lab():
    """The lab's addresses, ports and view builders (see the module docstring)."""
    return types.SimpleNamespace(**{name: globals()[name] for name in _EXPORTS})


@pytest.fixture
def fabric() -> Fabric:
    return make_fabric()
