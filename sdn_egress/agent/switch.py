"""One connected bridge, seen through os-ken: dump flows, apply changes in an
atomic bundle, and wait for what the switch answered.

os-ken delivers replies as events on its own thread; the agent's reconcile
thread waits here on the request's xid.  Nothing in this module decides which
flows to hold: it only carries out a change set computed elsewhere.
"""
from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

from flows import ofp as flows_ofp
from flows.records import Flow

LOG = logging.getLogger(__name__)

NX_IN_PORT = 0xFFF8  # OFPP_IN_PORT in the 16-bit port numbers of Nicira's resubmit

REQUEST_TIMEOUT = 10.0


class SwitchError(RuntimeError):
    """The switch refused a request or did not answer."""


@dataclass
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    replies: list = field(default_factory=list)
    error: object = None


class SwitchPort(Protocol):
    """What the agent core asks of one connected bridge.  :class:`Switch` is
    the real one (os-ken); the unit tests' fake holds flows in memory."""

    bridge: str
    dpid: int

    def dump_flows(self, table_names: dict[int, str]) -> set[Flow]: ...

    def apply(self, adds: list[Flow], deletes: list[Flow]) -> None: ...

    def flow_stats(self) -> list: ...

    def packet_out(self, data: bytes, port: int) -> None: ...

    def packet_out_to_table(self, data: bytes, table_id: int) -> None: ...

    def announce(self, ip: str, mac: str, port: int, schedule: tuple[float, ...] = ...) -> None:
        """Gratuitous ARPs for an IPv4 EIP, at the times of ``schedule`` (seconds)."""


class Switch:
    """A bridge (``br-int``/``br-ex``) behind one os-ken Datapath."""

    _bundle_ids = itertools.count(1)

    def __init__(self, bridge: str, datapath):
        self.bridge = bridge
        self.dp = datapath
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()

    @property
    def dpid(self) -> int:
        return self.dp.id

    # -- called from os-ken's event thread -------------------------------------
    def on_reply(self, msg, more: bool = False) -> None:
        with self._lock:
            pending = self._pending.get(msg.xid)
        if pending is None:
            return
        pending.replies.append(msg)
        if not more:
            pending.event.set()

    def on_error(self, msg) -> None:
        with self._lock:
            pending = self._pending.get(msg.xid)
            if pending is None:
                # An error for a message inside a bundle carries that message's
                # xid; the commit then fails too, so fail every waiter.
                waiters = list(self._pending.values())
            else:
                waiters = [pending]
        for w in waiters:
            w.error = msg
            w.event.set()

    # -- called from the agent's thread ---------------------------------------
    def _request(self, msg, what: str) -> list:
        self.dp.set_xid(msg)
        pending = _Pending()
        with self._lock:
            self._pending[msg.xid] = pending
        try:
            if not self.dp.send_msg(msg):
                raise SwitchError(f"{self.bridge}: connection closed while sending {what}")
            if not pending.event.wait(REQUEST_TIMEOUT):
                raise SwitchError(f"{self.bridge}: no answer to {what} within {REQUEST_TIMEOUT:.0f}s")
            if pending.error is not None:
                raise SwitchError(f"{self.bridge}: {what} refused: {_describe_error(pending.error)}")
            return pending.replies
        finally:
            with self._lock:
                self._pending.pop(msg.xid, None)

    def dump_flows(self, table_names: dict[int, str]) -> set[Flow]:
        """Every flow the bridge holds, as canonical ``Flow`` records."""
        parser, ofp = self.dp.ofproto_parser, self.dp.ofproto
        req = parser.OFPFlowStatsRequest(self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         0, 0, parser.OFPMatch())
        flows = set()
        for reply in self._request(req, "flow dump"):
            for stat in reply.body:
                flows.add(flows_ofp.from_stats(self.bridge, table_names, stat))
        return flows

    def flow_stats(self) -> list:
        """Raw flow statistics (counters), for metrics and dumps."""
        parser, ofp = self.dp.ofproto_parser, self.dp.ofproto
        req = parser.OFPFlowStatsRequest(self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         0, 0, parser.OFPMatch())
        return [stat for reply in self._request(req, "flow dump") for stat in reply.body]

    def apply(self, adds: list[Flow], deletes: list[Flow]) -> None:
        """Delete then add, atomically: the switch holds either the old or the
        new set, never a mixture (OpenFlow 1.4 bundle)."""
        if not adds and not deletes:
            return
        parser, ofp = self.dp.ofproto_parser, self.dp.ofproto
        mods = [flows_ofp.flow_mod(self.dp, f, "delete_strict") for f in deletes]
        mods += [flows_ofp.flow_mod(self.dp, f, "add") for f in adds]
        bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
        flags = ofp.OFPBF_ATOMIC | ofp.OFPBF_ORDERED
        self._request(parser.OFPBundleCtrlMsg(self.dp, bundle_id, ofp.OFPBCT_OPEN_REQUEST, flags, []),
                      "bundle open")
        try:
            for mod in mods:
                # The bundle-add message gives its xid to the message inside.
                add = parser.OFPBundleAddMsg(self.dp, bundle_id, flags, mod, [])
                self.dp.set_xid(add)
                if not self.dp.send_msg(add):
                    raise SwitchError(f"{self.bridge}: connection closed inside a bundle")
            self._request(parser.OFPBundleCtrlMsg(self.dp, bundle_id, ofp.OFPBCT_COMMIT_REQUEST,
                                                  flags, []),
                          f"bundle commit ({len(deletes)} deletes, {len(adds)} adds)")
        except SwitchError:
            try:
                self._request(parser.OFPBundleCtrlMsg(self.dp, bundle_id,
                                                      ofp.OFPBCT_DISCARD_REQUEST, flags, []),
                              "bundle discard")
            except SwitchError:
                pass
            raise

    def packet_out(self, data: bytes, port: int) -> None:
        parser, ofp = self.dp.ofproto_parser, self.dp.ofproto
        self.dp.send_msg(parser.OFPPacketOut(self.dp, buffer_id=ofp.OFP_NO_BUFFER,
                                             in_port=ofp.OFPP_CONTROLLER,
                                             actions=[parser.OFPActionOutput(port, 0)], data=data))

    def packet_out_to_table(self, data: bytes, table_id: int) -> None:
        """Hand ``data`` back to the pipeline at ``table_id``
        (``resubmit(,table)``), coming from the controller.  Never with a
        patch port as in_port: a patch port has no datapath port, and the
        userspace datapath then loses the packet at its first ct()
        recirculation (seen on OVS 3.1)."""
        parser, ofp = self.dp.ofproto_parser, self.dp.ofproto
        self.dp.send_msg(parser.OFPPacketOut(
            self.dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
            actions=[parser.NXActionResubmitTable(in_port=NX_IN_PORT, table_id=table_id)],
            data=data))

    def announce(self, ip: str, mac: str, port: int,
                 schedule: tuple[float, ...] = (0.0, 0.05, 0.2, 0.5, 1.0)) -> None:
        """A burst of gratuitous ARPs (``ip`` is at ``mac``) out of ``port``,
        in the background: the first at once, the rest in case one is lost."""
        from sdn_egress.agent.announce import send_burst
        send_burst(self.packet_out, gratuitous_arp(ip, mac), port, schedule, f"garp-{ip}")


def gratuitous_arp(ip: str, mac: str) -> bytes:
    """An ARP request for ``ip`` from ``ip`` at ``mac``, broadcast."""
    from os_ken.lib.packet import arp, ethernet, ether_types, packet

    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=mac, ethertype=ether_types.ETH_TYPE_ARP))
    pkt.add_protocol(arp.arp(opcode=arp.ARP_REQUEST, src_mac=mac, src_ip=ip,
                             dst_mac="00:00:00:00:00:00", dst_ip=ip))
    pkt.serialize()
    return bytes(pkt.data)


def _describe_error(msg) -> str:
    try:
        from os_ken.ofproto import ofproto_v1_4 as ofp
        types = {v: k for k, v in vars(ofp).items() if k.startswith("OFPET_")}
        return f"{types.get(msg.type, msg.type)} code {msg.code}"
    except Exception:  # noqa: BLE001 - description only
        return f"type {getattr(msg, 'type', '?')} code {getattr(msg, 'code', '?')}"
