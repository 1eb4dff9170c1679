"""What a gateway answers for a packet to its EIP that the tunnel cannot carry
(sdn_egress.agent.pmtu): real bytes in, real bytes out, checked field by field."""
from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from sdn_egress.agent import pmtu

ROUTER_MAC = bytes.fromhex("02000000aa01")
BREX_MAC = bytes.fromhex("02000000bb01")
EIP, EXT = "192.0.2.200", "198.51.100.10"
EIP6, EXT6 = "2001:db8:200::1", "2001:db8:100::10"
HELD = frozenset({EIP, EIP6})


def csum_ok(data: bytes) -> bool:
    return pmtu.checksum(data) == 0


def ipv4(src: str, dst: str, payload: bytes, *, df: bool, proto: int = 17, ident: int = 0x1234,
         frag: int = 0, options: bytes = b"") -> bytes:
    ihl = (20 + len(options)) // 4
    flags = (pmtu.IP_DF if df else 0) | frag
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), ident, flags, 61, proto, 0,
                    ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + options
    h = h[:10] + struct.pack("!H", pmtu.checksum(h)) + h[12:]
    return h + payload


def frame(ip: bytes, ethertype: int = pmtu.ETH_IP) -> bytes:
    """As the router hands it to the gateway: router -> br-ex MAC."""
    return BREX_MAC + ROUTER_MAC + struct.pack("!H", ethertype) + ip


def udp(size: int, sport: int = 8080, dport: int = 40001) -> bytes:
    body = bytes(range(256)) * (size // 256 + 1)
    return struct.pack("!HHHH", sport, dport, 8 + size, 0) + body[:size]


def test_tunnel_mtu_is_the_underlay_less_geneve_of_its_family():
    assert pmtu.tunnel_mtu(1500, 4) == 1450
    assert pmtu.tunnel_mtu(1500, 6) == 1430
    assert pmtu.tunnel_mtu(9000, 4) == 8950


def test_df_set_gets_frag_needed_from_the_eip_with_the_senders_header():
    sent = ipv4(EXT, EIP, udp(1472), df=True)
    ans = pmtu.answer(frame(sent), 1450, HELD)
    assert ans.dropped is None and not ans.fragments
    (reply,) = ans.to_sender
    assert reply[0:6] == ROUTER_MAC and reply[6:12] == BREX_MAC  # back to the router, from the EIP's MAC
    ip = reply[14:]
    assert ip[9] == pmtu.PROTO_ICMP
    assert ipaddress.IPv4Address(ip[12:16]) == ipaddress.IPv4Address(EIP)
    assert ipaddress.IPv4Address(ip[16:20]) == ipaddress.IPv4Address(EXT)
    assert csum_ok(ip[:20]) and len(ip) <= 576
    icmp = ip[20:]
    kind, code, _, _, mtu = struct.unpack_from("!BBHHH", icmp)
    assert (kind, code, mtu) == (3, 4, 1450)
    assert csum_ok(icmp)
    assert icmp[8:] == sent[:len(icmp) - 8]  # the sender's own header and data, unchanged
    assert len(icmp) - 8 >= 28


def test_without_df_the_packet_is_cut_into_fragments_that_fit_and_reassemble():
    payload = udp(3000)
    sent = ipv4(EXT, EIP, payload, df=False)
    ans = pmtu.answer(frame(sent), 1450, HELD)
    assert not ans.to_sender and len(ans.fragments) == 3
    data, expect_off = b"", 0
    for i, f in enumerate(ans.fragments):
        assert f[:14] == frame(sent)[:14]
        ip = f[14:]
        assert len(ip) <= 1450 and csum_ok(ip[:20])
        total, ident, flags = struct.unpack_from("!HHH", ip, 2)
        assert total == len(ip) and ident == 0x1234
        assert (flags & pmtu.IP_OFFMASK) * 8 == expect_off
        assert bool(flags & pmtu.IP_MF) == (i < 2)
        data += ip[20:]
        expect_off += len(ip) - 20
    assert data == payload


def test_a_fragment_is_cut_again_keeping_its_offset_and_its_more_fragments_flag():
    payload = udp(2000)[:1480]
    sent = ipv4(EXT, EIP, payload, df=False, frag=pmtu.IP_MF | 185)  # offset 1480, more to come
    ans = pmtu.answer(frame(sent), 1300, HELD)
    flags = [struct.unpack_from("!H", f, 14 + 6)[0] for f in ans.fragments]
    assert [(f & pmtu.IP_OFFMASK) * 8 for f in flags] == [1480, 1480 + 1280]
    assert all(f & pmtu.IP_MF for f in flags)  # the original was not the last fragment
    assert b"".join(f[14 + 20:] for f in ans.fragments) == payload


def test_later_fragments_repeat_only_the_copied_options():
    # 0x94 (router alert, copied) and 0x07 (record route, not copied), padded
    options = bytes([0x94, 4, 0, 0, 0x07, 3, 4, 0])
    sent = ipv4(EXT, EIP, udp(2000), df=False, options=options)
    first, second = pmtu.answer(frame(sent), 1450, HELD).fragments
    assert first[14] & 0x0F == 7 and first[14 + 20:14 + 28] == options
    assert second[14] & 0x0F == 6 and second[14 + 20:14 + 24] == bytes([0x94, 4, 0, 0])
    assert csum_ok(second[14:14 + 24])


def test_ipv6_too_big_gets_packet_too_big_with_the_senders_header():
    body = udp(1452)
    sent = struct.pack("!IHBB16s16s", 0x60000000, len(body), 17, 64, ipaddress.IPv6Address(EXT6).packed,
                       ipaddress.IPv6Address(EIP6).packed) + body
    (reply,) = pmtu.answer(frame(sent, pmtu.ETH_IPV6), 1430, HELD).to_sender
    ip = reply[14:]
    assert ip[6] == pmtu.PROTO_ICMPV6 and len(ip) <= 1280
    assert ipaddress.IPv6Address(ip[8:24]) == ipaddress.IPv6Address(EIP6)
    assert ipaddress.IPv6Address(ip[24:40]) == ipaddress.IPv6Address(EXT6)
    icmp = ip[40:]
    kind, code, _, mtu = struct.unpack_from("!BBHI", icmp)
    assert (kind, code, mtu) == (2, 0, 1430)
    pseudo = ip[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert csum_ok(pseudo + icmp)
    assert icmp[8:] == sent[:len(icmp) - 8]


def test_what_is_not_answered_says_why():
    big = ipv4(EXT, EIP, udp(1472), df=True)
    assert "not an EIP" in pmtu.answer(frame(ipv4(EXT, "192.0.2.99", udp(1472), df=True)), 1450, HELD).dropped
    assert "fit" in pmtu.answer(frame(ipv4(EXT, EIP, udp(100), df=True)), 1450, HELD).dropped
    icmp_error = ipv4(EXT, EIP, bytes([3, 1, 0, 0]) + bytes(1476), df=True, proto=1)
    assert "ICMP error" in pmtu.answer(frame(icmp_error), 1450, HELD).dropped
    assert pmtu.answer(frame(big)[:30], 1450, HELD).dropped
    assert "not IP" in pmtu.answer(frame(big, 0x0806), 1450, HELD).dropped


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=1600), ethertype=st.sampled_from([0x0800, 0x86DD, 0x0806]),
       mtu=st.integers(1280, 1500))
def test_any_frame_gets_an_answer_or_a_reason_never_an_exception(data, ethertype, mtu):
    """Whatever an outsider sends to an EIP, the agent's packet-in handler
    neither crashes nor sends anything larger than the MTU back into the
    tunnel path."""
    ans = pmtu.answer(frame(data, ethertype), mtu, HELD)
    assert ans.dropped or ans.to_sender or ans.fragments
    assert all(len(f) - 14 <= mtu for f in ans.fragments)
    assert all(len(f) - 14 <= 1280 for f in ans.to_sender)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1451, 9000), mtu=st.integers(1280, 1450), df=st.booleans())
def test_any_oversized_datagram_is_answered_or_fragmented_exactly(size, mtu, df):
    payload = udp(size - 28)
    sent = ipv4(EXT, EIP, payload, df=df)
    ans = pmtu.answer(frame(sent), mtu, HELD)
    if df:
        assert len(ans.to_sender) == 1 and not ans.fragments
    else:
        assert b"".join(f[34:] for f in ans.fragments) == payload
        assert all(len(f) - 14 <= mtu for f in ans.fragments)
