"""A pod's steer flows, built the cheap way (one flow of each kind judged in
full, the others sharing its parts: flows.worker._steer_flows), are exactly
the flows the full way builds (flows.tables.flow for each), whatever the
pod's addresses, destinations, policies, EIPs and exclusions."""
from __future__ import annotations

import netaddr
from hypothesis import given, settings
from hypothesis import strategies as st

from flows import worker
from flows.records import Flow
from flows.view import Steer

V4_DESTS = ("0.0.0.0/0", "198.51.100.0/24", "198.51.100.7/32", "203.0.113.128/25", "192.0.2.0/30")
V6_DESTS = ("::/0", "2001:db8:9::/48", "2001:db8:9::5/128", "2001:db8::/32")
POD_IPS = (("203.0.113.34",), ("2001:db8:1::22",), ("203.0.113.34", "2001:db8:1::22"), ("0.0.0.1", "::1"))
EIPS = {4: ("192.0.2.200", "192.0.2.201"), 6: ("2001:db8:e::1", "2001:db8:e::2")}
KEYS = {eip: 10 + i for i, eip in enumerate(EIPS[4] + EIPS[6])}

entry = st.tuples(st.sampled_from(V4_DESTS + V6_DESTS), st.sampled_from(("shop/cart", "prod")),
                  st.integers(0, 1), st.integers(0, 3), st.booleans())


@st.composite
def group(draw):
    ips = [netaddr.IPAddress(ip) for ip in draw(st.sampled_from(POD_IPS))]
    out = []
    for dest, policy, which, rank, exclude in draw(st.lists(entry, max_size=12)):
        dest = netaddr.IPNetwork(dest)
        for ip in ips:
            if ip.version == dest.version:
                # a fresh EIP object at times, a shared one at others: the flows must not care
                eip = netaddr.IPAddress(EIPS[ip.version][which])
                out.append(Steer(pod="shop/cart-0", pod_ip=ip, dest=dest, policy=policy, eip=eip, rank=rank,
                                 exclude=exclude))
    return tuple(out)


@settings(max_examples=300, deadline=None)
@given(group())
def test_a_pods_steer_flows_are_the_ones_the_full_way_builds(steers):
    cheap = worker._steer_flows(steers, 7, KEYS)
    full = [worker._steer_flow(s, 7, KEYS) for s in steers]
    assert cheap == full
    for a, b in zip(cheap, full, strict=True):
        assert (a.key, a.actions, a.cookie, hash(a)) == (b.key, b.actions, b.cookie, hash(b))
        assert Flow(a.bridge, a.table, a.priority, a.match, a.actions, a.cookie) == b  # canonical as it is
