"""Every header field, register, conntrack zone/state/mark and tunnel key the
pipeline uses, named once with its meaning.

Field names are the OXM names os-ken uses (``ipv4_dst``, ``tunnel_id``,
``reg0``): they are what :class:`flows.records.Flow` matches and sets.  Each
field also knows its ``ovs-ofctl`` spelling and, where ``move`` needs it, its
NXM name, so rendering never guesses.
"""
from __future__ import annotations

from dataclasses import dataclass

from flows.view import REPLY_TUNNEL_KEY

INT, MAC, IPV4, IPV6 = "int", "mac", "ipv4", "ipv6"


@dataclass(frozen=True)
class Field:
    name: str  # OXM name (os-ken), used in Flow records
    kind: str  # INT, MAC, IPV4 or IPV6
    bits: int
    ofctl: str  # ovs-ofctl name
    nxm: str = ""  # NXM name, for move:SRC[]->DST[]
    prereq: int | None = None  # eth_type the match must also carry


ETH_IP, ETH_ARP, ETH_IPV6 = 0x0800, 0x0806, 0x86DD
IPPROTO_ICMPV6 = 58
IPPROTO_UDP = 17
# BFD control packets as OVS sends them inside its tunnels: UDP to 3784 (RFC
# 5881), to bfd:bfd_dst_ip, which the agent leaves at its default.
BFD_PORT = 3784
BFD_DST = "169.254.1.0"
ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT = 135, 136

_FIELDS = [
    Field("in_port", INT, 32, "in_port", "NXM_OF_IN_PORT"),
    Field("eth_src", MAC, 48, "dl_src", "NXM_OF_ETH_SRC"),
    Field("eth_dst", MAC, 48, "dl_dst", "NXM_OF_ETH_DST"),
    Field("eth_type", INT, 16, "dl_type", "NXM_OF_ETH_TYPE"),
    Field("ip_proto", INT, 8, "nw_proto", "NXM_OF_IP_PROTO"),
    Field("tcp_dst", INT, 16, "tcp_dst", "NXM_OF_TCP_DST"),
    Field("udp_dst", INT, 16, "udp_dst", "NXM_OF_UDP_DST"),
    Field("ipv4_src", IPV4, 32, "nw_src", "NXM_OF_IP_SRC", ETH_IP),
    Field("ipv4_dst", IPV4, 32, "nw_dst", "NXM_OF_IP_DST", ETH_IP),
    Field("ipv6_src", IPV6, 128, "ipv6_src", "NXM_NX_IPV6_SRC", ETH_IPV6),
    Field("ipv6_dst", IPV6, 128, "ipv6_dst", "NXM_NX_IPV6_DST", ETH_IPV6),
    Field("icmpv6_type", INT, 8, "icmpv6_type", "NXM_NX_ICMPV6_TYPE", ETH_IPV6),
    Field("ipv6_nd_target", IPV6, 128, "nd_target", "NXM_NX_ND_TARGET", ETH_IPV6),
    Field("arp_op", INT, 16, "arp_op", "NXM_OF_ARP_OP", ETH_ARP),
    Field("arp_spa", IPV4, 32, "arp_spa", "NXM_OF_ARP_SPA", ETH_ARP),
    Field("arp_tpa", IPV4, 32, "arp_tpa", "NXM_OF_ARP_TPA", ETH_ARP),
    Field("arp_sha", MAC, 48, "arp_sha", "NXM_NX_ARP_SHA", ETH_ARP),
    Field("arp_tha", MAC, 48, "arp_tha", "NXM_NX_ARP_THA", ETH_ARP),
    Field("tunnel_id", INT, 64, "tun_id", "NXM_NX_TUN_ID"),
    Field("tun_ipv4_src", IPV4, 32, "tun_src", "NXM_NX_TUN_IPV4_SRC"),
    Field("tun_ipv4_dst", IPV4, 32, "tun_dst", "NXM_NX_TUN_IPV4_DST"),
    Field("tun_ipv6_src", IPV6, 128, "tun_ipv6_src", "NXM_NX_TUN_IPV6_SRC"),
    Field("tun_ipv6_dst", IPV6, 128, "tun_ipv6_dst", "NXM_NX_TUN_IPV6_DST"),
    Field("ct_state", INT, 32, "ct_state", "NXM_NX_CT_STATE"),
    Field("ct_zone", INT, 16, "ct_zone", "NXM_NX_CT_ZONE"),
    Field("ct_mark", INT, 32, "ct_mark", "NXM_NX_CT_MARK"),
] + [Field(f"reg{i}", INT, 32, f"reg{i}", f"NXM_NX_REG{i}") for i in range(16)]

FIELDS: dict[str, Field] = {f.name: f for f in _FIELDS}


def field(name: str) -> Field:
    try:
        return FIELDS[name]
    except KeyError:
        raise ValueError(f"unknown field {name!r} (known: {', '.join(sorted(FIELDS))})") from None


def is_register(name: str) -> bool:
    return name.startswith("reg") and name[3:].isdigit()


# -- registers (packet metadata, zeroed when a packet enters a bridge) ----------

@dataclass(frozen=True)
class Register:
    field: str
    meaning: str


REG_EIP = Register("reg0", "the tunnel key of the EIP whose traffic this packet is "
                           "(set in classify, read by eip_out, snat and snat_out)")

REG_FLAGS = Register("reg1", "one-bit verdicts of the packet's way through the pipeline; bit "
                             "FLAG_LARGER: set by check_pkt_larger in from_uplink, read by uplink_mtu")
FLAG_LARGER = 0
"""Bit of REG_FLAGS: the frame is longer than the tunnel carries (its IP packet
exceeds the node's tunnel MTU)."""

ETH_HLEN = 14
"""Ethernet header bytes: check_pkt_larger measures the whole frame, the MTU
counts the IP packet only."""

# -- conntrack ------------------------------------------------------------------

CT_ZONE_SNAT = 7100
"""The zone of every connection SNATed to an EIP; de-NAT of replies looks here.
Nothing else commits to it, so a reply found here is a reply to our SNAT."""

CT_MARK_EIP = "ct_mark"
"""Committed with the SNAT: the tunnel key of the EIP the connection was SNATed
to (``ovs-appctl dpctl/dump-conntrack`` then shows which EIP owns a conntrack
entry)."""

# ct_state bits (OVS ``ct_state`` field).
CT_NEW = 0x01
CT_EST = 0x02
CT_REL = 0x04
CT_RPL = 0x08
CT_INV = 0x10
CT_TRK = 0x20
CT_SNAT = 0x40
CT_DNAT = 0x80

CT_STATE_NAMES = {CT_NEW: "new", CT_EST: "est", CT_REL: "rel", CT_RPL: "rpl",
                  CT_INV: "inv", CT_TRK: "trk", CT_SNAT: "snat", CT_DNAT: "dnat"}


def ct_state(*on: int, off: tuple[int, ...] = ()) -> tuple[int, int]:
    """A masked ``ct_state`` match: the ``on`` bits set, the ``off`` bits clear."""
    value = 0
    for bit in on:
        value |= bit
    mask = value
    for bit in off:
        mask |= bit
    return value, mask


# -- tunnel keys (Geneve VNI, 24 bits) ----------------------------------------------

TUNNEL_KEY_REPLY = REPLY_TUNNEL_KEY
"""Replies travelling from a gateway back to the pod's node."""
EIP_KEY_MIN, EIP_KEY_MAX = 1, 2**24 - 1
"""Every EIP has a tunnel key in this range: the worker sets it as the Geneve
VNI, the gateway selects the SNAT address by it."""
