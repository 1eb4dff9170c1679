"""The agent's host-side helpers that need no kernel: the reserved ports list."""
from __future__ import annotations

from sdn_egress.agent.routing import HostRouting


def test_reserving_the_snat_ports_keeps_what_was_reserved_and_happens_once(tmp_path):
    path = tmp_path / "ip_local_reserved_ports"
    path.write_text("8080,30000-30010\n")
    routing = HostRouting()
    assert routing.reserve_ports(61440, 65535, path=str(path))
    assert path.read_text() == "8080,30000-30010,61440-65535"
    assert not routing.reserve_ports(61440, 65535, path=str(path))  # already there
    path.write_text("")
    assert routing.reserve_ports(61440, 65535, path=str(path)) and path.read_text() == "61440-65535"


def test_a_partly_reserved_range_is_completed(tmp_path):
    path = tmp_path / "ip_local_reserved_ports"
    path.write_text("61440-62000,65535")
    assert HostRouting().reserve_ports(61440, 65535, path=str(path))
    assert path.read_text().endswith(",61440-65535")


def test_the_hosts_proc_sys_net_can_live_elsewhere(tmp_path):
    """In the DaemonSet the host's /proc/sys/net is mounted at another path
    (the container's own /proc/sys is read-only)."""
    (tmp_path / "ipv4").mkdir()
    (tmp_path / "ipv4" / "ip_local_reserved_ports").write_text("8080\n")
    assert HostRouting(proc_sys_net=str(tmp_path)).reserve_ports(61440, 65535)
    assert (tmp_path / "ipv4" / "ip_local_reserved_ports").read_text() == "8080,61440-65535"


# -- IPv6 (issue 12) ------------------------------------------------------------------------------

def _steers():
    import netaddr

    from flows.view import Steer
    ip, net = netaddr.IPAddress, netaddr.IPNetwork
    return (Steer("shop/a", ip("203.0.113.34"), net("198.51.100.0/24"), "shop/cart", ip("192.0.2.200")),
            Steer("shop/a", ip("2001:db8:1:1::2"), net("2001:db8:ff::/48"), "shop/cart", ip("2001:db8::200")),
            Steer("shop/a", ip("2001:db8:1:1::2"), net("2001:db8:ff::7/128"), "shop/cart", ip("2001:db8::200"),
                  exclude=True))


def test_ipv4_steering_rules_are_as_before_and_ipv6_ones_are_their_twins():
    from sdn_egress.agent.routing import desired_rules
    rules = sorted(str(r) for r in desired_rules(_steers()))
    assert rules == ["7099: from 2001:db8:1:1::2/128 to 2001:db8:ff::7/128 lookup main",
                     "7100: from 2001:db8:1:1::2/128 to 2001:db8:ff::/48 lookup 7100",
                     "7100: from 203.0.113.34/32 to 198.51.100.0/24 lookup 7100"]


def test_rules_bind_each_family_to_the_pods_interface():
    from sdn_egress.agent.routing import desired_rules
    interfaces = {"203.0.113.34": "cali1", "2001:db8:1:1::2": "cali1"}
    rules = desired_rules(_steers(), interfaces)
    assert {r.iif for r in rules} == {"cali1"} and len(rules) == 3
    # the IPv6 address's route gone (another pod's now): only its IPv4 rule stays bound
    rules = desired_rules(_steers(), {"203.0.113.34": "cali1"})
    assert [r.src.version for r in rules] == [4]


def test_the_hold_covers_ipv6_pod_cidrs_with_ipv6_exemptions():
    import netaddr

    from sdn_egress.agent.routing import Hold, hold_rules
    net = netaddr.IPNetwork
    hold = Hold(pod_cidrs=(net("203.0.113.32/27"), net("2001:db8:1:1::/64")),
                exempt=(net("10.96.0.0/12"), net("2001:db8:1::/48"), net("fe80::/10")))
    rules = sorted(str(r) for r in hold_rules(hold, {"2001:db8:1:1::2": "cali1"}))
    assert rules == ["7200: from 2001:db8:1:1::2/128 iif cali1 lookup main",
                     "7210: from 2001:db8:1:1::/64 to 2001:db8:1::/48 lookup main",
                     "7210: from 2001:db8:1:1::/64 to fe80::/10 lookup main",
                     "7210: from 203.0.113.32/27 to 10.96.0.0/12 lookup main",
                     "7220: from 2001:db8:1:1::/64 blackhole",
                     "7220: from 203.0.113.32/27 blackhole"]


def test_the_ipv6_route_into_egw0_has_the_tunnel_mtu_and_a_permanent_link_local_next_hop(tmp_path):
    import socket

    from sdn_egress.agent.routing import HostRouting, ipv6_route_mtu
    (tmp_path / "ipv6" / "conf" / "egw0").mkdir(parents=True)
    (tmp_path / "ipv6" / "conf" / "egw0" / "disable_ipv6").write_text("1\n")

    class Ipr:
        calls = []

        def link_lookup(self, ifname):
            return [7]

        def neigh(self, *a, **kw):
            self.calls.append(("neigh", a, kw))

        def route(self, *a, **kw):
            self.calls.append(("route", a, kw))

    ipr = Ipr()
    HostRouting(proc_sys_net=str(tmp_path))._ensure_link_v6(ipr, 1450)
    assert (tmp_path / "ipv6" / "conf" / "egw0" / "disable_ipv6").read_text() == "0"
    (_, _, neigh), (_, _, route) = ipr.calls
    assert (neigh["dst"], neigh["lladdr"], neigh["state"], neigh["family"]) == (
        "fe80::a9fe:1", "0a:58:a9:fe:00:01", 0x80, socket.AF_INET6)
    assert (route["dst"], route["gateway"], route["table"], route["metrics"]) == (
        "::/0", "fe80::a9fe:1", 7100, {"mtu": 1450})
    assert ipv6_route_mtu(1450) == 1450 and ipv6_route_mtu(1200) == 1280  # IPv6's minimum


def test_no_rule_is_asked_for_destinations_the_kernel_refuses_and_never_forwards_to():
    import netaddr

    from flows.view import Steer
    from sdn_egress.agent.routing import desired_rules
    ip, net = netaddr.IPAddress, netaddr.IPNetwork
    pod, eip = ip("2001:db8:1:1::2"), ip("2001:db8::200")
    steers = tuple(Steer("shop/a", pod, net(d), "shop/cart", eip, rank=31, exclude=True)
                   for d in ("::/128", "::/127", "::1/128", "fe80::/10"))
    assert sorted(str(r.dst) for r in desired_rules(steers)) == ["fe80::/10"]


def test_a_rule_the_kernel_refuses_does_not_keep_the_others_out(monkeypatch, tmp_path):
    """One refused rule (sorted first) used to abort the adds: the other
    family's steers and the hold never went in, and a selected pod's packets
    left with the node's address."""
    import sys
    import types

    import netaddr
    import pytest

    from flows.view import Steer
    from sdn_egress.agent import routing
    ip, net = netaddr.IPAddress, netaddr.IPNetwork
    added = []

    class Ipr:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def get_rules(self, family):
            return []

        def rule(self, cmd, **kw):
            if kw.get("dst") == "2001:db8:ff::7/128":
                raise OSError(22, "Invalid argument")
            added.append((kw["priority"], kw["src"], kw.get("dst")))

    monkeypatch.setitem(sys.modules, "pyroute2", types.SimpleNamespace(IPRoute=Ipr))
    r = routing.HostRouting(proc_sys_net=str(tmp_path))
    for name in ("_ensure_link", "_ensure_link_v6", "_ensure_nat_bypass", "_ensure_mss_clamp"):
        monkeypatch.setattr(r, name, lambda *a, **k: None)
    monkeypatch.setattr(routing, "pod_interfaces", lambda ipr, cidrs: {})
    steers = (Steer("shop/a", ip("203.0.113.34"), net("198.51.100.0/24"), "shop/cart", ip("192.0.2.200")),
              Steer("shop/a", ip("2001:db8:1:1::2"), net("2001:db8:ff::7/128"), "shop/cart",
                    ip("2001:db8::200"), exclude=True))
    hold = routing.Hold(pod_cidrs=(net("203.0.113.32/27"),), exempt=())
    with pytest.raises(RuntimeError, match="1 rules refused"):
        r.sync(steers, 1450, local_pods={"shop/a": "203.0.113.34"}, hold=hold)
    assert (7100, "203.0.113.34", "198.51.100.0/24") in added  # the IPv4 steer went in
    assert (7220, "203.0.113.32", None) in added  # and the hold


def test_a_steer_to_everywhere_is_two_rules_the_halves_of_the_address_space():
    """A rule without a destination would be a duplicate, for the kernel, of
    any rule of the same priority, source, iif and table (the narrower
    destSubnet's, not yet deleted): see tests/integration/test_routing_kernel.py."""
    import netaddr

    from flows.view import Steer
    from sdn_egress.agent.routing import desired_rules
    ip, net = netaddr.IPAddress, netaddr.IPNetwork
    steers = (Steer("shop/a", ip("2001:db8:1:1::2"), net("::/0"), "shop/cart", ip("2001:db8::200")),
              Steer("shop/a", ip("203.0.113.34"), net("0.0.0.0/0"), "shop/cart", ip("192.0.2.200")))
    assert sorted(str(r) for r in desired_rules(steers, {"2001:db8:1:1::2": "cali1", "203.0.113.34": "cali1"})) == [
        "7100: from 2001:db8:1:1::2/128 to 8000::/1 iif cali1 lookup 7100",
        "7100: from 2001:db8:1:1::2/128 to ::/1 iif cali1 lookup 7100",
        "7100: from 203.0.113.34/32 to 0.0.0.0/1 iif cali1 lookup 7100",
        "7100: from 203.0.113.34/32 to 128.0.0.0/1 iif cali1 lookup 7100"]
