"""Telling the uplink's neighbours where an EIP is: gratuitous ARP for an
IPv4 EIP, neighbour advertisements (RFC 4861) for an IPv6 one.

- :func:`announce`: the burst a node sends when it starts to hold an EIP
  (takeover, planned move): GARPs, or unsolicited advertisements to all
  nodes (ff02::1) with the Override flag, so caches holding the previous
  holder's MAC move at once.
- :func:`answer_solicitation`: the advertisement answering a neighbour
  solicitation for a held IPv6 EIP, which ``flows.nd`` sends up from br-ex
  (Solicited and Override set, the target link-layer address option).

Frames are built by hand, as :mod:`sdn_egress.agent.pmtu` builds its ICMPv6
errors; no I/O except :func:`announce`'s packet-outs.
"""
from __future__ import annotations

import ipaddress
import struct
import threading
import time

from sdn_egress.agent.pmtu import checksum

ETH_IPV6 = 0x86DD
PROTO_ICMPV6 = 58
NS, NA = 135, 136
OPT_SOURCE_LL, OPT_TARGET_LL = 1, 2
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80000000, 0x40000000, 0x20000000
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = "33:33:00:00:00:01"
HOP_LIMIT = 255  # RFC 4861: anything else is not from a neighbour, and is dropped
BURST = (0.0, 0.05, 0.2, 0.5, 1.0)  # seconds after the takeover, as the GARPs


def _mac(text: str) -> bytes:
    return bytes(int(b, 16) for b in text.split(":"))


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def advertisement(target: str, mac: str, dst_ip=ALL_NODES, dst_mac: str = ALL_NODES_MAC,
                  solicited: bool = False) -> bytes:
    """An Ethernet frame: neighbour advertisement "``target`` is at ``mac``",
    from ``target`` itself, with the Override flag (and Solicited when it
    answers a solicitation) and the target link-layer address option."""
    src, dst = ipaddress.IPv6Address(target), ipaddress.IPv6Address(dst_ip)
    flags = NA_OVERRIDE | (NA_SOLICITED if solicited else 0)
    body = struct.pack("!BBHI", NA, 0, 0, flags) + src.packed + struct.pack("!BB", OPT_TARGET_LL, 1) + _mac(mac)
    pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(body), PROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    ip = struct.pack("!IHBB", 6 << 28, len(body), PROTO_ICMPV6, HOP_LIMIT) + src.packed + dst.packed
    return _mac(dst_mac) + _mac(mac) + struct.pack("!H", ETH_IPV6) + ip + body


def answer_solicitation(frame: bytes, held, mac: str) -> bytes | None:
    """The advertisement answering ``frame`` (a neighbour solicitation as
    the switch sent it up) when its target is one of ``held`` (IPv6 EIPs as
    text); None for anything else (not a well-formed solicitation from a
    neighbour, or for an address this node does not hold).  A solicitation
    from the unspecified address (duplicate address detection) is answered
    to all nodes, without the Solicited flag (RFC 4861 7.2.4)."""
    if len(frame) < 14 + 40 + 24 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV6:
        return None
    ip = frame[14:54]
    if ip[0] >> 4 != 6 or ip[6] != PROTO_ICMPV6 or ip[7] != HOP_LIMIT:
        return None
    icmp = frame[54:54 + struct.unpack("!H", ip[4:6])[0]]
    if len(icmp) < 24 or icmp[0] != NS or icmp[1] != 0:
        return None
    target = str(ipaddress.IPv6Address(icmp[8:24]))
    if target not in {str(ipaddress.ip_address(h)) for h in held if ":" in str(h)}:
        return None
    src = ipaddress.IPv6Address(ip[8:24])
    if src.is_unspecified:
        return advertisement(target, mac)
    dst_mac = _mac_text(frame[6:12])
    options = icmp[24:]
    while len(options) >= 8 and options[1]:  # the solicitor's own link-layer address, when it gives it
        if options[0] == OPT_SOURCE_LL:
            dst_mac = _mac_text(options[2:8])
            break
        options = options[options[1] * 8:]
    return advertisement(target, mac, src, dst_mac, solicited=True)


def frames(ip: str, mac: str) -> bytes:
    """What announces ``ip`` at ``mac`` once: a gratuitous ARP (IPv4) or an
    unsolicited neighbour advertisement to all nodes (IPv6)."""
    if ":" in ip:
        return advertisement(ip, mac)
    from sdn_egress.agent.switch import gratuitous_arp
    return gratuitous_arp(ip, mac)


def announce(switch, ip: str, mac: str, port: int, schedule: tuple[float, ...] = BURST) -> None:
    """A burst announcing ``ip`` at ``mac`` out of ``port`` of ``switch``, in
    the background: the first at once, the rest in case one is lost."""
    if ":" not in ip:
        switch.announce(ip, mac, port, schedule)  # GARPs, as always
        return
    send_burst(switch.packet_out, frames(ip, mac), port, schedule, f"na-{ip}")


def send_burst(packet_out, data: bytes, port: int, schedule: tuple[float, ...], name: str) -> None:
    """``packet_out(data, port)`` at each time of ``schedule`` (seconds from
    now), in a thread of its own; a lost connection ends the burst."""
    def burst():
        start = time.monotonic()
        for at in schedule:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                packet_out(data, port)
            except Exception:  # noqa: BLE001 - connection gone; nothing to announce on
                return

    threading.Thread(target=burst, name=name, daemon=True).start()


def on_solicitation(switch, view, data: bytes) -> bool:
    """The packet-in of ``flows.nd``: answer it out of the uplink it came in
    on.  True when an advertisement was sent."""
    if not view.ports.uplink:
        return False
    held = frozenset(str(h.eip) for h in view.held if h.eip.version == 6 and not h.node_ip)
    try:
        reply = answer_solicitation(data, held, view.brex_mac)
    except (ValueError, struct.error):
        return False
    if reply is None:
        return False
    switch.packet_out(reply, view.ports.uplink)
    return True
