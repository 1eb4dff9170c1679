"""IPv4 and IPv6 as data: the fields a flow uses for each family.

Every feature module writes its flows once, in terms of a :class:`Family`;
an IPv6 entry of the view then gives the IPv6 flow without a second code path.
"""
from __future__ import annotations

from dataclasses import dataclass

import netaddr

from flows import fields as F


@dataclass(frozen=True)
class Family:
    version: int
    eth_type: int
    src: str  # source address field
    dst: str  # destination address field
    tun_dst: str  # tunnel destination field (family of the underlay address)


V4 = Family(4, F.ETH_IP, "ipv4_src", "ipv4_dst", "tun_ipv4_dst")
V6 = Family(6, F.ETH_IPV6, "ipv6_src", "ipv6_dst", "tun_ipv6_dst")


def of(addr: netaddr.IPAddress | netaddr.IPNetwork) -> Family:
    return V4 if addr.version == 4 else V6
