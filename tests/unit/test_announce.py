"""Neighbour advertisements for IPv6 EIPs: the answer to a solicitation and
the unsolicited burst, checked with os-ken's own packet parser (checksum
included), and the agent's packet-in for ``flows.nd``."""
from __future__ import annotations

import ipaddress
import struct

from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet

from flows import cookie as C
from sdn_egress.agent import announce
from sdn_egress.agent.core import AgentConfig, AgentCore, PassResult

EIP6 = "2001:db8::200"
MAC = "02:00:00:00:00:b0"
ROUTER, ROUTER_MAC = "2001:db8::1", "02:00:00:00:ff:01"


def solicitation(target: str, src: str = ROUTER, src_mac: str = ROUTER_MAC, hlim: int = 255,
                 with_sll: bool = True) -> bytes:
    snm = ipaddress.IPv6Address("ff02::1:ff00:0") + (int(ipaddress.IPv6Address(target)) & 0xFFFFFF)
    opt = icmpv6.nd_option_sla(hw_src=src_mac) if with_sll else None
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst="33:33:ff:00:02:00", src=src_mac, ethertype=0x86DD))
    pkt.add_protocol(ipv6.ipv6(src=src, dst=str(snm), nxt=58, hop_limit=hlim))
    pkt.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_NEIGHBOR_SOLICIT,
                                   data=icmpv6.nd_neighbor(dst=target, option=opt)))
    pkt.serialize()
    return bytes(pkt.data)


def parsed(frame: bytes):
    pkt = packet.Packet(frame)
    eth, ip6, icmp = pkt.get_protocol(ethernet.ethernet), pkt.get_protocol(ipv6.ipv6), pkt.get_protocol(icmpv6.icmpv6)
    # the checksum os-ken computes over what we sent is what we sent
    body = frame[14 + 40:]
    pseudo = (ipaddress.IPv6Address(ip6.src).packed + ipaddress.IPv6Address(ip6.dst).packed
              + struct.pack("!IxxxB", len(body), 58))
    assert announce.checksum(pseudo + body) == 0
    return eth, ip6, icmp


def test_a_solicitation_for_a_held_eip_gets_a_solicited_override_advertisement():
    reply = announce.answer_solicitation(solicitation(EIP6), {EIP6, "192.0.2.200"}, MAC)
    eth, ip6, icmp = parsed(reply)
    assert (eth.src, eth.dst) == (MAC, ROUTER_MAC)
    assert (ip6.src, ip6.dst, ip6.hop_limit) == (EIP6, ROUTER, 255)
    assert icmp.type_ == icmpv6.ND_NEIGHBOR_ADVERT
    assert icmp.data.dst == EIP6 and icmp.data.option.hw_src == MAC
    assert icmp.data.res == 0b011  # R=0, S=1, O=1 (os-ken's 3 flag bits)


def test_solicitations_for_others_or_not_from_a_neighbour_are_not_answered():
    assert announce.answer_solicitation(solicitation("2001:db8::99"), {EIP6}, MAC) is None
    assert announce.answer_solicitation(solicitation(EIP6, hlim=64), {EIP6}, MAC) is None  # routed: forged
    assert announce.answer_solicitation(b"\x00" * 40, {EIP6}, MAC) is None


def test_duplicate_address_detection_is_answered_to_all_nodes_without_solicited():
    reply = announce.answer_solicitation(solicitation(EIP6, src="::", with_sll=False), {EIP6}, MAC)
    eth, ip6, icmp = parsed(reply)
    assert (eth.dst, ip6.dst, icmp.data.res) == ("33:33:00:00:00:01", "ff02::1", 0b001)


def test_the_unsolicited_advertisement_overrides_at_all_nodes():
    eth, ip6, icmp = parsed(announce.frames(EIP6, MAC))
    assert (eth.src, eth.dst, ip6.src, ip6.dst) == (MAC, "33:33:00:00:00:01", EIP6, "ff02::1")
    assert icmp.type_ == icmpv6.ND_NEIGHBOR_ADVERT and icmp.data.res == 0b001  # Override only
    assert icmp.data.option.hw_src == MAC


class Recorder:
    bridge = "br-ex"

    def __init__(self):
        self.out, self.garps = [], []

    def packet_out(self, data, port):
        self.out.append((data, port))

    def announce(self, ip, mac, port, schedule):
        self.garps.append((ip, mac, port))


def test_the_agent_answers_the_nd_packet_in_out_of_the_uplink(lab):
    from dataclasses import replace
    view = lab.rich_view()
    core = AgentCore(AgentConfig(node=view.node, ovs_db="unix:/nonexistent"), source=None, store=None,
                     routing=object())
    core.last_result = PassResult(view=view)
    sw = Recorder()
    eip6 = next(str(h.eip) for h in view.held if h.eip.version == 6)
    core.packet_in(sw, C.encode(C.Feature.ND), solicitation(eip6))
    [(data, port)] = sw.out
    assert port == view.ports.uplink and parsed(data)[1].src == eip6
    # not held any more: no answer
    core.last_result = PassResult(view=replace(view, held=tuple(h for h in view.held if h.eip.version == 4)))
    core.packet_in(sw, C.encode(C.Feature.ND), solicitation(eip6))
    assert len(sw.out) == 1


def test_announce_sends_garps_for_ipv4_and_advertisements_for_ipv6():
    import time
    sw = Recorder()
    announce.announce(sw, "192.0.2.200", MAC, 1, schedule=(0.0,))
    announce.announce(sw, EIP6, MAC, 1, schedule=(0.0, 0.01))
    deadline = time.monotonic() + 2
    while len(sw.out) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sw.garps == [("192.0.2.200", MAC, 1)]
    assert [parsed(d)[1].src for d, _ in sw.out] == [EIP6, EIP6]
