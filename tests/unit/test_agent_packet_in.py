"""The agent's packet-in handler for ``uplink_mtu``: what it sends to which
port of br-int, and what it leaves alone."""
from __future__ import annotations

import struct

from test_pmtu import EXT, frame, ipv4, udp

from flows import cookie as C
from flows.tables import table_id
from sdn_egress.agent import pmtu
from sdn_egress.agent.core import AgentConfig, AgentCore, PassResult


class RecordingSwitch:
    bridge = "br-int"

    def __init__(self):
        self.out: list[tuple[str, bytes, int]] = []

    def packet_out(self, data: bytes, port: int) -> None:
        self.out.append(("port", data, port))

    def packet_out_to_table(self, data: bytes, table: int) -> None:
        self.out.append(("table", data, table))


def core_with(view) -> AgentCore:
    core = AgentCore(AgentConfig(node=view.node, ovs_db="unix:/nonexistent"), source=None, store=None,
                     routing=object())
    core.last_result = PassResult(view=view)
    return core


MTU_COOKIE = C.encode(C.Feature.MTU)


def test_df_packet_is_answered_out_of_the_patch_towards_the_uplink(lab):
    view = lab.view_n0()
    core, sw = core_with(view), RecordingSwitch()
    core.packet_in(sw, MTU_COOKIE, frame(ipv4(EXT, str(lab.EIP), udp(1472), df=True)))
    [(kind, data, port)] = sw.out
    assert (kind, port) == ("port", view.ports.int_patch)
    assert struct.unpack_from("!BB", data, 14 + 20) == (3, 4)
    assert core.oversized == {"icmp": 1, "fragmented": 0, "dropped": 0}


def test_packet_without_df_goes_back_to_uplink_mtu_in_fragments(lab):
    core, sw = core_with(lab.view_n0()), RecordingSwitch()
    core.packet_in(sw, MTU_COOKIE, frame(ipv4(EXT, str(lab.EIP), udp(1472), df=False)))
    assert [(k, t) for k, _, t in sw.out] == [("table", table_id("br-int", "uplink_mtu"))] * 2
    assert all(len(d) - 14 <= lab.view_n0().tunnel_mtu for _, d, _ in sw.out)
    assert core.oversized["fragmented"] == 1


def test_other_packet_ins_and_other_eips_are_left_alone(lab):
    core, sw = core_with(lab.view_n0()), RecordingSwitch()
    core.packet_in(sw, C.encode(C.Feature.STEER), frame(ipv4(EXT, str(lab.EIP), udp(1472), df=True)))
    core.packet_in(sw, MTU_COOKIE, frame(ipv4(EXT, "192.0.2.99", udp(1472), df=True)))
    core.packet_in(sw, MTU_COOKIE, b"\x00" * 7)
    assert sw.out == []
    assert core.oversized == {"icmp": 0, "fragmented": 0, "dropped": 2}
    assert pmtu.answer(b"\x00" * 7, 1450, frozenset()).dropped == "runt frame"


class SerializingDatapath:
    """Enough of an os-ken Datapath to serialize what a Switch sends."""

    def __init__(self):
        from os_ken.ofproto import ofproto_v1_4, ofproto_v1_4_parser
        self.ofproto, self.ofproto_parser, self.id, self.sent = ofproto_v1_4, ofproto_v1_4_parser, 1, []

    def set_xid(self, msg):
        msg.set_xid(len(self.sent) + 1)

    def send_msg(self, msg):
        self.set_xid(msg)
        msg.serialize()
        self.sent.append(msg)
        return True


def test_fragments_go_back_as_packet_outs_from_the_controller_resubmitted_to_uplink_mtu():
    from sdn_egress.agent.switch import Switch
    dp = SerializingDatapath()
    Switch("br-int", dp).packet_out_to_table(b"\x01" * 64, table_id("br-int", "uplink_mtu"))
    (msg,) = dp.sent
    assert msg.in_port == dp.ofproto.OFPP_CONTROLLER  # never a patch port: see Switch
    (action,) = msg.actions
    assert (type(action).__name__, action.table_id, action.in_port) == (
        "NXActionResubmitTable", table_id("br-int", "uplink_mtu"), 0xFFF8)
    assert bytes(msg.buf).endswith(b"\x01" * 64)


def test_a_handler_that_raises_does_not_stop_the_agents_event_loop(caplog):
    from sdn_egress.agent.app import guarded

    calls = []

    @guarded
    def handler(self, ev):
        calls.append(ev)
        raise ValueError("boom")

    handler(None, "ev")  # must not raise: os-ken's native hub would end the event loop
    assert calls == ["ev"]
    assert "handler failed on str" in caplog.text and "boom" in caplog.text
