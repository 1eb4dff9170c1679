"""What a gateway does with a packet to one of its EIPs that the tunnel back
to the pod cannot carry whole: pure functions from the frame the switch sent
up (``uplink_mtu``'s packet-in: Ethernet, exactly as the outside sender sent
it, before the de-NAT) to the frames to send.

- IPv4 with DF set, IPv6 always: an ICMP "fragmentation needed" (ICMPv6
  "packet too big") to the sender, from the EIP, with the tunnel MTU as the
  next-hop MTU and the sender's own header embedded, as a router on the path
  would answer.  The sender's PMTU cache learns it and resends smaller.
- IPv4 without DF (a whole packet or a fragment): fragments that fit, which
  the switch takes back at ``uplink_mtu`` (de-NAT and tunnel, the userspace
  datapath's conntrack reassembles them for the NAT, as it does fragments
  from the outside).

No I/O here: the agent's packet-in handler calls :func:`answer` and sends
what it returns.
"""
from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

ETH_HLEN = 14
ETH_IP, ETH_IPV6 = 0x0800, 0x86DD
IP_DF, IP_MF, IP_OFFMASK = 0x4000, 0x2000, 0x1FFF
ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED = 3, 4
ICMPV6_PACKET_TOO_BIG = 2
PROTO_ICMP, PROTO_ICMPV6 = 1, 58
# What an ICMP error may quote: the whole error stays within the minimum
# MTU of its family (576 bytes for IPv4, RFC 1812 4.3.2.3; 1280 for IPv6,
# RFC 4443 2.4(c)).
ICMP_MAX_V4, ICMP_MAX_V6 = 576, 1280

# Geneve overhead on the underlay, per family: outer IP + UDP (8) + Geneve
# base header (8, no options) + the inner Ethernet header (14).
GENEVE_OVERHEAD = {4: 20 + 8 + 8 + 14, 6: 40 + 8 + 8 + 14}


def tunnel_mtu(underlay_mtu: int, underlay_family: int) -> int:
    """The largest inner IP packet a Geneve tunnel over an underlay of
    ``underlay_mtu`` bytes (IPv4 or IPv6 outer header) carries whole."""
    return underlay_mtu - GENEVE_OVERHEAD[underlay_family]


@dataclass(frozen=True)
class Answer:
    """``to_sender``: frames to send back out of the uplink (ICMP errors);
    ``fragments``: frames to hand back to the pipeline; ``dropped``: why
    nothing is sent (None when something is)."""
    to_sender: tuple[bytes, ...] = ()
    fragments: tuple[bytes, ...] = ()
    dropped: str | None = None


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _eth_reply(frame: bytes, ethertype: int) -> bytes:
    """The Ethernet header of a frame back to the sender: the frame's source
    becomes the destination (the router that handed it to us), its
    destination (the EIP's MAC) the source."""
    return frame[6:12] + frame[0:6] + struct.pack("!H", ethertype)


def answer(frame: bytes, mtu: int, held: frozenset[str] | set[str]) -> Answer:
    """What to send for ``frame`` (an Ethernet frame to an EIP in ``held``)
    that is larger than ``mtu`` bytes of IP."""
    if len(frame) < ETH_HLEN + 20:
        return Answer(dropped="runt frame")
    (ethertype,) = struct.unpack_from("!H", frame, 12)
    if ethertype == ETH_IP:
        return _answer_v4(frame, mtu, held)
    if ethertype == ETH_IPV6:
        return _answer_v6(frame, mtu, held)
    return Answer(dropped=f"ethertype {ethertype:#06x} is not IP")


def _answer_v4(frame: bytes, mtu: int, held) -> Answer:
    ip = frame[ETH_HLEN:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[0] >> 4 != 4 or ihl < 20 or len(ip) < ihl:
        return Answer(dropped="malformed IPv4 header")
    total, flags = struct.unpack_from("!H2xH", ip, 2)
    if total < ihl or total > len(ip):
        return Answer(dropped="IPv4 total length disagrees with the frame")
    ip = ip[:total]  # Ethernet padding is not the packet's
    src, dst = ipaddress.IPv4Address(ip[12:16]), ipaddress.IPv4Address(ip[16:20])
    if str(dst) not in held:
        return Answer(dropped=f"destination {dst} is not an EIP this node holds")
    if total <= mtu:
        return Answer(dropped=f"{total} bytes fit the tunnel MTU {mtu}")
    if flags & IP_DF:
        if ip[9] == PROTO_ICMP and len(ip) > ihl and ip[ihl] not in (0, 8, 13, 14, 15, 16, 17, 18):
            # Never an ICMP error about an ICMP error (RFC 1122 3.2.2).
            return Answer(dropped="ICMP error too big for the tunnel, DF set")
        return Answer(to_sender=(_frag_needed(frame, ip, ihl, mtu, src, dst),))
    return Answer(fragments=tuple(frame[:ETH_HLEN] + f for f in fragment_v4(ip, mtu)))


def _frag_needed(frame: bytes, ip: bytes, ihl: int, mtu: int, src, dst) -> bytes:
    quoted = ip[:ICMP_MAX_V4 - 20 - 8]
    icmp = struct.pack("!BBHHH", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu) + quoted
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ident = int.from_bytes(os.urandom(2), "big")
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(icmp), ident, 0, 64, PROTO_ICMP, 0,
                         dst.packed, src.packed)
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    return _eth_reply(frame, ETH_IP) + header + icmp


def _copied_options(options: bytes) -> bytes:
    """The IPv4 options every fragment repeats (their copied flag set)."""
    out, i = b"", 0
    while i < len(options):
        kind = options[i]
        if kind == 0:  # end of options
            break
        if kind == 1:  # no-op
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break  # malformed: repeat nothing more
        length = options[i + 1]
        if kind & 0x80:
            out += options[i:i + length]
        i += length
    return out + bytes(-len(out) % 4)


def fragment_v4(ip: bytes, mtu: int) -> list[bytes]:
    """``ip`` (an IPv4 packet, DF clear, possibly itself a fragment) cut into
    fragments of at most ``mtu`` bytes (RFC 791): offsets continue from the
    packet's own, the last keeps its MF flag, later fragments repeat only the
    copied options."""
    ihl = (ip[0] & 0x0F) * 4
    header, payload = ip[:ihl], ip[ihl:]
    (flags,) = struct.unpack_from("!H", ip, 6)
    base, more = flags & IP_OFFMASK, flags & IP_MF
    later_header = header[:20] + _copied_options(header[20:])
    out, pos = [], 0
    while pos < len(payload) or not out:
        head = header if not out else later_header
        room = (mtu - len(head)) & ~7
        if room <= 0:
            raise ValueError(f"MTU {mtu} leaves no room for data after a {len(head)}-byte header")
        chunk = payload[pos:pos + room]
        last = pos + len(chunk) >= len(payload)
        h = bytearray(head)
        h[0] = 0x40 | (len(head) // 4)
        struct.pack_into("!H", h, 2, len(head) + len(chunk))
        struct.pack_into("!H", h, 6, ((base + pos // 8) & IP_OFFMASK) | (more if last else IP_MF))
        struct.pack_into("!H", h, 10, 0)
        struct.pack_into("!H", h, 10, checksum(bytes(h)))
        out.append(bytes(h) + chunk)
        pos += len(chunk)
    return out


def _answer_v6(frame: bytes, mtu: int, held) -> Answer:
    ip = frame[ETH_HLEN:]
    if len(ip) < 40 or ip[0] >> 4 != 6:
        return Answer(dropped="malformed IPv6 header")
    (plen,) = struct.unpack_from("!H", ip, 4)
    if 40 + plen > len(ip):
        return Answer(dropped="IPv6 payload length disagrees with the frame")
    ip = ip[:40 + plen]
    src, dst = ipaddress.IPv6Address(ip[8:24]), ipaddress.IPv6Address(ip[24:40])
    if str(dst) not in held:
        return Answer(dropped=f"destination {dst} is not an EIP this node holds")
    if len(ip) <= mtu:
        return Answer(dropped=f"{len(ip)} bytes fit the tunnel MTU {mtu}")
    if ip[6] == PROTO_ICMPV6 and len(ip) > 40 and ip[40] < 128:
        return Answer(dropped="ICMPv6 error too big for the tunnel")
    quoted = ip[:ICMP_MAX_V6 - 40 - 8]
    icmp = struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + quoted
    pseudo = dst.packed + src.packed + struct.pack("!I3xB", len(icmp), PROTO_ICMPV6)
    icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
    header = struct.pack("!IHBB16s16s", 0x60000000, len(icmp), PROTO_ICMPV6, 64, dst.packed, src.packed)
    return Answer(to_sender=(_eth_reply(frame, ETH_IPV6) + header + icmp,))
