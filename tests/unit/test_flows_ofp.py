"""flows.ofp (os-ken messages) and flows.render (ovs-ofctl text), checked
against Open vSwitch's own parser (``ovs-ofctl``, no daemon) and against
os-ken's flow-stats parser."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest
from os_ken.ofproto import (ofproto_v1_3, ofproto_v1_3_parser, ofproto_v1_4,
                            ofproto_v1_4_parser)

import flows
from flows import cookie as C
from flows import ofp, render
from flows.records import Bundle, Flow, Goto, Move, Output, SetField, Unknown
from flows.tables import table_names

VERSIONS = {
    "OpenFlow13": (ofproto_v1_3, ofproto_v1_3_parser),
    "OpenFlow14": (ofproto_v1_4, ofproto_v1_4_parser),
}


class FakeDatapath:
    """What flow_mod needs of an os-ken Datapath: the negotiated version's modules."""

    def __init__(self, version: str):
        self.ofproto, self.ofproto_parser = VERSIONS[version]
        self.id = 1


@pytest.fixture(params=sorted(VERSIONS))
def dp(request):
    return FakeDatapath(request.param)


def all_flows(lab) -> list[Flow]:
    built = flows.build(lab.rich_view())
    return [f for b in sorted(built) for f in sorted(built[b], key=render.to_ofctl)]


def wire(msg) -> bytes:
    msg.set_xid(0)
    msg.serialize()
    return bytes(msg.buf)


def ovs_lines(text: str) -> list[str]:
    """The FLOW_MOD lines of ovs-ofctl output, without the xid."""
    return [re.sub(r" \(xid=0x[0-9a-f]+\)", "", line) for line in text.splitlines()
            if "FLOW_MOD" in line]


@pytest.fixture
def ovs_ofctl():
    path = shutil.which("ovs-ofctl")
    if path is None:
        pytest.skip("ovs-ofctl (openvswitch-common) is not installed")
    return path


def test_ovs_reads_every_message_as_the_ofctl_text_says(lab, dp, ovs_ofctl, tmp_path):
    fl = all_flows(lab)
    (tmp_path / "msgs.bin").write_bytes(b"".join(wire(ofp.flow_mod(dp, f)) for f in fl))
    (tmp_path / "flows.txt").write_text("".join(render.to_ofctl(f) + "\n" for f in fl))
    ours = subprocess.run([ovs_ofctl, "ofp-parse", str(tmp_path / "msgs.bin")],
                          capture_output=True, text=True, check=True)
    version = {4: "OpenFlow13", 5: "OpenFlow14"}[dp.ofproto.OFP_VERSION]
    text = subprocess.run([ovs_ofctl, "-O", version, "parse-flows", str(tmp_path / "flows.txt")],
                          capture_output=True, text=True, check=True)
    assert "error" not in ours.stdout + ours.stderr
    got, want = ovs_lines(ours.stdout), ovs_lines(text.stdout)
    assert len(got) == len(want) == len(fl)
    for g, w, f in zip(got, want, fl, strict=True):
        assert g == w, render.describe(f)
    # and OVS understood what we meant: spot-check the interesting ones
    joined = "\n".join(got)
    assert "ct(commit,table=3,zone=7100,nat(src=192.0.2.200),exec(set_field:0x7->ct_mark))" in joined
    assert "ct(table=6,zone=7100,nat)" in joined
    assert "check_pkt_larger(1464)->NXM_NX_REG1[0],goto_table:5" in joined
    assert (f"priority=200,reg1=0x1/0x1 cookie:{C.encode(C.Feature.MTU):#x} actions=CONTROLLER:65535"
            in joined)
    assert "ct_state=-est-rel+trk" in joined and "ct_state=-trk" in joined
    assert "ct_state=+inv+trk" in joined
    assert "set_field:192.0.2.12->tun_dst" in joined
    assert "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[]" in joined


def test_delete_and_modify_are_strict_and_ignore_actions(lab, dp, ovs_ofctl, tmp_path):
    f = next(f for f in all_flows(lab) if f.table == "snat" and f.match_dict().get("reg0") == (7, None))
    (tmp_path / "m.bin").write_bytes(wire(ofp.flow_mod(dp, f, "delete_strict"))
                                     + wire(ofp.flow_mod(dp, f, "modify_strict")))
    out = subprocess.run([ovs_ofctl, "ofp-parse", str(tmp_path / "m.bin")],
                         capture_output=True, text=True, check=True).stdout
    delete, modify = ovs_lines(out)
    assert " DEL_STRICT table:2 priority=100,ip,reg0=0x7 " in delete
    assert "out_port" not in delete  # OFPP_ANY: the delete does not depend on actions
    assert "actions=drop" in delete
    assert " MOD_STRICT table:2 " in modify and "nat(src=192.0.2.200)" in modify


def test_flow_mod_refuses_unknown_commands_and_unknown_actions(dp):
    f = Flow("br-int", "classify", 5, {"in_port": 1}, (Unknown("learn(...)"),))
    with pytest.raises(ValueError, match="command must be one of"):
        ofp.flow_mod(dp, f, "delete")
    with pytest.raises(ValueError, match="cannot send action"):
        ofp.flow_mod(dp, f, "add")
    assert ofp.flow_mod(dp, f, "delete_strict").instructions == []


# -- from_stats ---------------------------------------------------------------------------

def stats_entry(dp, table_id: int, priority: int, cookie: int, match, instructions):
    """An OFPFlowStats as os-ken parses it from a switch's reply."""
    ofproto, parser = dp.ofproto, dp.ofproto_parser
    body = bytearray()
    match.serialize(body, 0)
    for inst in instructions:
        inst.serialize(body, len(body))
    head = struct.pack(ofproto.OFP_FLOW_STATS_0_PACK_STR, ofproto.OFP_FLOW_STATS_0_SIZE + len(body),
                       table_id, 1, 2, priority, 0, 0, 0, *([0] if dp.ofproto.OFP_VERSION == 5 else []),
                       cookie, 10, 1000)
    return parser.OFPFlowStats.parser(head + bytes(body), 0)


def test_from_stats_gives_back_the_installed_flow(lab, dp):
    for f in all_flows(lab):
        mod = ofp.flow_mod(dp, f)
        stats = stats_entry(dp, mod.table_id, mod.priority, mod.cookie, mod.match, mod.instructions)
        assert ofp.from_stats(f.bridge, table_names(f.bridge), stats) == f, render.describe(f)


def test_from_stats_reads_moves_as_ovs_encodes_them(lab, dp):
    # OVS 3.1 reports the fields of move with NXM headers (os-ken: eth_src_nxm).
    f = next(f for f in all_flows(lab) if any(isinstance(a, Move) for a in f.actions))
    mod = ofp.flow_mod(dp, f)
    parser = dp.ofproto_parser
    actions = [parser.NXActionRegMove(src_field=a.src_field + "_nxm", dst_field=a.dst_field + "_nxm",
                                      n_bits=a.n_bits)
               if type(a).__name__ == "NXActionRegMove" else a
               for a in mod.instructions[0].actions]
    inst = [parser.OFPInstructionActions(dp.ofproto.OFPIT_APPLY_ACTIONS, actions)]
    stats = stats_entry(dp, mod.table_id, mod.priority, mod.cookie, mod.match, inst)
    assert stats.instructions[0].actions[0].src_field == "eth_src_nxm"
    assert ofp.from_stats("br-ex", table_names("br-ex"), stats) == f


def test_from_stats_keeps_what_it_does_not_model(dp):
    parser, ofproto = dp.ofproto_parser, dp.ofproto
    match = parser.OFPMatch(in_port=4, vlan_vid=0x1005)
    inst = [parser.OFPInstructionActions(ofproto.OFPIT_APPLY_ACTIONS, [
                parser.NXActionResubmitTable(in_port=0xfff8, table_id=3),
                parser.OFPActionOutput(ofproto.OFPP_CONTROLLER, 128),
                parser.OFPActionOutput(7, 0)]),
            parser.OFPInstructionGotoTable(12)]
    f = ofp.from_stats("br-int", table_names("br-int"), stats_entry(dp, 9, 7, 0x42, match, inst))
    assert (f.table, f.priority, f.cookie) == ("table9", 7, 0x42)
    assert f.match_dict() == {"in_port": (4, None), "vlan_vid": (0x1005, None)}
    assert [type(a) for a in f.actions] == [Unknown, Unknown, Output, Goto]
    assert f.actions[-1] == Goto("table12")
    # it can still be deleted, at the table id it came from
    mod = ofp.flow_mod(dp, f, "delete_strict")
    assert mod.table_id == 9 and mod.priority == 7


def test_from_stats_of_an_empty_instruction_list_is_drop(dp):
    stats = stats_entry(dp, 0, 0, 0, dp.ofproto_parser.OFPMatch(), [])
    f = ofp.from_stats("br-int", table_names("br-int"), stats)
    assert f == Flow("br-int", "classify", 0, (), (), 0)
    assert render.to_ofctl(f) == "table=0,priority=0,cookie=0x0,actions=drop"


# -- render -----------------------------------------------------------------------------

def test_to_ofctl_text(lab):
    built = flows.build(lab.view_n1())["br-int"]
    steer = next(f for f in built if C.decode(f.cookie).feature == C.Feature.STEER
                 and f.match_dict()["ipv4_src"][0] == str(lab.POD_A))
    assert render.to_ofctl(steer) == (
        f"table=0,priority=1024,cookie={steer.cookie:#x},ip,in_port=1,"
        "nw_dst=198.51.100.0/24,nw_src=203.0.113.34,actions=set_field:0x7->reg0,goto_table:1")
    out = next(f for f in built if f.table == "eip_out" and f.match_dict().get("reg0") == (7, None))
    assert out.actions == (SetField("tunnel_id", lab.EIP_KEY), Bundle((3, 4)))
    assert render.to_ofctl(out).endswith(
        "reg0=0x7,actions=set_field:0x7->tun_id,bundle(symmetric_l4,0,active_backup,ofport,members:3,4)")


def test_describe_reads_back_policy_and_pod(lab):
    view = lab.view_n1()
    legend = C.legend(view)
    text = {render.describe(f, legend) for f in flows.build(view)["br-int"]}
    assert ("br-int/classify prio=1024 [STEER policy default/web, pod default/a] "
            "ip,in_port=1,nw_dst=198.51.100.0/24,nw_src=203.0.113.34 -> "
            "set_field:0x7->reg0,goto_table:eip_out") in text
    assert ("br-int/eip_out prio=100 [NO_GATEWAY EIP 192.0.2.201 (default/dark)] reg0=0x9 -> drop"
            in text)
    assert "br-int/classify prio=10 [UNSTEERED] in_port=1 -> drop" in text


def test_describe_flags_an_old_generation():
    f = Flow("br-int", "classify", 3, {}, (), C.encode(C.Feature.STEER, 5, generation=C.GENERATION + 1))
    assert f"(generation {C.GENERATION + 1}, current {C.GENERATION})" in render.describe(f)
