"""The only module that speaks os-ken's OpenFlow parser: project flow records
to flow-mods, and flow statistics back to project flow records.

Works with any OpenFlow 1.3+ datapath: everything comes from
``datapath.ofproto`` / ``datapath.ofproto_parser``.  Conntrack and NAT are
Nicira extensions (``NXActionCT``/``NXActionNAT``), registers and tunnel
fields are Nicira OXM fields (``reg0``, ``tun_ipv4_dst``), the tunnel key is
OXM ``tunnel_id``.

``from_stats(flow_mod's flow as the switch reports it) == flow``: the agent
relies on this to diff what it wants against what the switch holds.
"""
from __future__ import annotations

import sys

from os_ken.ofproto import nicira_ext

from flows import fields as F
from flows.records import (CT, Bundle, CheckLarger, Controller, Drop, Flow, Goto, InPort, Load, Move,
                           Nat, Normal, Output, SetField, Unknown)
from flows.tables import bridge as bridge_tables

# Open vSwitch's nx_nat flags (os-ken does not name them).
NX_NAT_F_SRC = 1 << 0
NX_NAT_F_DST = 1 << 1

COMMANDS = ("add", "delete_strict", "modify_strict")

NXAST_CHECK_PKT_LARGER = 49  # Open vSwitch's subtype; os-ken has no class for it


# -- records -> os-ken ------------------------------------------------------------

def _match(parser, flow: Flow):
    kwargs = {}
    for entry in flow.match:
        kwargs[entry[0]] = entry[1] if len(entry) == 2 else (entry[1], entry[2])
    return parser.OFPMatch(**kwargs)


_PADDED_NAT: dict = {}


def _nat_class(parser):
    """os-ken's NXActionNAT, with its body padded to a multiple of 8 bytes.

    os-ken rounds the action's length up but appends no padding bytes, so a
    NAT with a port range (min+max address, 2+2 bytes of ports) would make the
    switch read the next action 4 bytes early.  Zero bytes after the ranges
    are what Open vSwitch itself sends."""
    cls = _PADDED_NAT.get(parser)
    if cls is None:
        head = 10  # experimenter header (8) + NX subtype (2), before the body

        class PaddedNAT(parser.NXActionNAT):
            def serialize_body(self):
                data = super().serialize_body()
                return data + bytes(-(head + len(data)) % 8)

        cls = _PADDED_NAT[parser] = PaddedNAT
    return cls


_CHECK_LARGER: dict = {}


def _check_larger_class(parser):
    """``check_pkt_larger(pkt_len)->dst[offset]`` (OVS 2.12+), which os-ken
    does not know: the body is pkt_len, the result bit's offset and the
    destination's OXM/NXM header, zero-padded to a 24-byte action (the
    layout of OVS's ``struct nx_action_check_pkt_larger``).  Registered with
    the parser so that flow statistics read it back."""
    cls = _CHECK_LARGER.get(parser)
    if cls is not None:
        return cls
    ofproto = parser.ofproto
    import struct

    class NXActionCheckPktLarger(parser.NXAction):
        _subtype = NXAST_CHECK_PKT_LARGER

        def __init__(self, pkt_len, offset, dst, type_=None, len_=None, experimenter=None,
                     subtype=None):
            super().__init__()
            self.pkt_len, self.offset, self.dst = pkt_len, offset, dst

        @classmethod
        def parser(cls, buf):
            pkt_len, offset = struct.unpack_from("!HH", buf, 0)
            n, _ = ofproto.oxm_parse_header(buf, 4)
            return cls(pkt_len, offset, ofproto.oxm_to_user_header(n))

        def serialize_body(self):
            header = bytearray()
            ofproto.oxm_serialize_header(ofproto.oxm_from_user_header(self.dst), header, 0)
            data = struct.pack("!HH", self.pkt_len, self.offset) + bytes(header)
            return data + bytes(24 - 10 - len(data))

    parser.NXAction.register(NXActionCheckPktLarger)
    cls = _CHECK_LARGER[parser] = NXActionCheckPktLarger
    return cls


def _register_extensions() -> None:
    """Teach os-ken's parsers the actions they lack, before any flow
    statistics arrive to be parsed."""
    from os_ken.ofproto import ofproto_v1_3_parser, ofproto_v1_4_parser, ofproto_v1_5_parser
    for parser in (ofproto_v1_3_parser, ofproto_v1_4_parser, ofproto_v1_5_parser):
        _check_larger_class(parser)


def _nat(parser, nat: Nat):
    NAT = _nat_class(parser)
    if nat.kind is None:
        return NAT(flags=0)
    flags = NX_NAT_F_SRC if nat.kind == "src" else NX_NAT_F_DST
    # Both ends of the range, always: os-ken does not pad the action body, and
    # min+max is the layout whose length is a multiple of 8 (v4 and v6).  OVS
    # reports min == max as the single address.
    ports = {"range_proto_min": nat.ports[0], "range_proto_max": nat.ports[1]} if nat.ports else {}
    if ":" in nat.addr:
        return NAT(flags=flags, range_ipv6_min=nat.addr, range_ipv6_max=nat.addr, **ports)
    return NAT(flags=flags, range_ipv4_min=nat.addr, range_ipv4_max=nat.addr, **ports)


def _action(ofp, parser, bridge: str, a):
    if isinstance(a, Output):
        return parser.OFPActionOutput(a.port, 0)
    if isinstance(a, Bundle):
        return parser.NXActionBundle(algorithm=nicira_ext.NX_BD_ALG_ACTIVE_BACKUP,
                                     fields=nicira_ext.NX_HASH_FIELDS_SYMMETRIC_L4, basis=0,
                                     slave_type=nicira_ext.NXM_OF_IN_PORT, n_slaves=len(a.ports),
                                     ofs_nbits=0, dst=0, slaves=list(a.ports))
    if isinstance(a, InPort):
        return parser.OFPActionOutput(ofp.OFPP_IN_PORT, 0)
    if isinstance(a, Controller):
        return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)
    if isinstance(a, CheckLarger):
        return _check_larger_class(parser)(a.length, a.bit, a.field)
    if isinstance(a, Normal):
        return parser.OFPActionOutput(ofp.OFPP_NORMAL, 0)
    if isinstance(a, (SetField, Load)):
        return parser.OFPActionSetField(**{a.field: a.value})
    if isinstance(a, Move):
        return parser.NXActionRegMove(src_field=a.src, dst_field=a.dst,
                                      n_bits=F.field(a.src).bits, src_ofs=0, dst_ofs=0)
    if isinstance(a, CT):
        nested = ([_nat(parser, a.nat)] if a.nat is not None else [])
        nested += [_action(ofp, parser, bridge, x) for x in a.actions]
        table = (nicira_ext.NX_CT_RECIRC_NONE if a.table is None
                 else bridge_tables(bridge).id(a.table))
        return parser.NXActionCT(flags=nicira_ext.NX_CT_F_COMMIT if a.commit else 0,
                                 zone_src="", zone_ofs_nbits=a.zone, recirc_table=table,
                                 alg=0, actions=nested)
    raise ValueError(f"{bridge}: cannot send action {a!r} to a switch")


def instructions(datapath, flow: Flow) -> list:
    """Apply-actions (absent for a drop) then, for a trailing Goto, goto-table."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    apply = [_action(ofp, parser, flow.bridge, a) for a in flow.actions
             if not isinstance(a, (Drop, Goto))]
    out = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, apply)] if apply else []
    if isinstance(flow.actions[-1], Goto):
        out.append(parser.OFPInstructionGotoTable(bridge_tables(flow.bridge).id(flow.actions[-1].table)))
    return out


def flow_mod(datapath, flow: Flow, command: str = "add"):
    """An ``OFPFlowMod`` adding, strictly deleting or strictly modifying
    ``flow`` (strict: same table, priority and match; out_port/out_group ANY,
    so a delete never depends on the actions)."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    commands = {"add": ofp.OFPFC_ADD, "delete_strict": ofp.OFPFC_DELETE_STRICT,
                "modify_strict": ofp.OFPFC_MODIFY_STRICT}
    if command not in commands:
        raise ValueError(f"flow_mod: command must be one of {COMMANDS}, not {command!r}")
    return parser.OFPFlowMod(
        datapath, cookie=flow.cookie, cookie_mask=0,
        table_id=bridge_tables(flow.bridge).id(flow.table), command=commands[command],
        idle_timeout=0, hard_timeout=0, priority=flow.priority, buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, flags=0, match=_match(parser, flow),
        instructions=[] if command == "delete_strict" else instructions(datapath, flow))


# -- os-ken -> records ------------------------------------------------------------

def _field_name(name: str) -> str:
    """os-ken's name for a field as the switch encoded it -> ours.  OVS encodes
    the fields of ``move`` with their NXM headers, which os-ken names
    ``eth_src_nxm``, ``arp_spa_nxm``...; it is the same field."""
    if name.endswith("_nxm") and name[:-4] in F.FIELDS:
        return name[:-4]
    return name


def _nat_back(a) -> Nat | Unknown:
    kind = "src" if a.flags & NX_NAT_F_SRC else "dst" if a.flags & NX_NAT_F_DST else None
    extra = a.flags & ~(NX_NAT_F_SRC | NX_NAT_F_DST)
    lo = a.range_ipv4_min or a.range_ipv6_min
    hi = a.range_ipv4_max or a.range_ipv6_max
    ports = None
    if a.range_proto_min is not None or a.range_proto_max is not None:
        ports = (a.range_proto_min, a.range_proto_max if a.range_proto_max is not None else a.range_proto_min)
    if extra or (hi and hi != lo) or (kind is None) != (not lo) or (ports and not lo):
        return Unknown(str(a))
    return Nat(kind, lo or None, ports)


def _action_back(ofp, names, a):
    cls = type(a).__name__
    if cls == "OFPActionOutput":
        if a.port == ofp.OFPP_IN_PORT:
            return InPort()
        if a.port == ofp.OFPP_NORMAL:
            return Normal()
        if a.port == ofp.OFPP_CONTROLLER and a.max_len == ofp.OFPCML_NO_BUFFER:
            return Controller()
        if 0 < a.port < 0xFFFFFF00:
            return Output(a.port)
    elif cls == "OFPActionSetField":
        key = _field_name(a.key)
        if not isinstance(a.value, tuple):
            return Load(key, a.value) if F.is_register(key) else SetField(key, a.value)
    elif cls == "NXActionBundle":
        if (a.algorithm == nicira_ext.NX_BD_ALG_ACTIVE_BACKUP and a.basis == 0
                and a.fields == nicira_ext.NX_HASH_FIELDS_SYMMETRIC_L4 and len(a.slaves) >= 2):
            return Bundle(tuple(a.slaves))
    elif cls == "NXActionCheckPktLarger":
        if F.is_register(a.dst):
            return CheckLarger(a.pkt_len, a.dst, a.offset)
    elif cls == "NXActionRegMove":
        src, dst = _field_name(a.src_field), _field_name(a.dst_field)
        if (src in F.FIELDS and dst in F.FIELDS and a.src_ofs == a.dst_ofs == 0
                and a.n_bits == F.FIELDS[src].bits == F.FIELDS[dst].bits):
            return Move(src, dst)
    elif cls == "NXActionCT":
        nat, rest = None, []
        for x in a.actions:
            if type(x).__name__ == "NXActionNAT" and nat is None and not rest:
                nat = _nat_back(x)
            else:
                rest.append(_action_back(ofp, names, x))
        if (not a.zone_src and a.alg == 0 and not isinstance(nat, Unknown)
                and not any(isinstance(x, Unknown) for x in rest)
                and not a.flags & ~nicira_ext.NX_CT_F_COMMIT
                and (a.flags & nicira_ext.NX_CT_F_COMMIT or not rest)):
            table = None if a.recirc_table == nicira_ext.NX_CT_RECIRC_NONE else names(a.recirc_table)
            return CT(commit=bool(a.flags & nicira_ext.NX_CT_F_COMMIT), zone=a.zone_ofs_nbits,
                      table=table, nat=nat, actions=tuple(rest))
    return Unknown(str(a))


def from_stats(bridge: str, table_names: dict[int, str], stats) -> Flow:
    """The canonical :class:`Flow` of one ``OFPFlowStats`` entry.  Tables
    missing from ``table_names`` become ``table<N>``; actions this project
    does not model become :class:`Unknown` (such a flow can still be deleted,
    never re-added)."""
    ofproto = sys.modules[type(stats).__module__].ofproto  # of the version that parsed it

    def names(table_id: int) -> str:
        return table_names.get(table_id, f"table{table_id}")

    match = []
    for name, value in stats.match.items():
        name = _field_name(name)
        match.append((name, *value) if isinstance(value, tuple) else (name, value))
    actions: list = []
    goto = None
    for inst in stats.instructions:
        kind = type(inst).__name__
        if kind == "OFPInstructionActions" and inst.type == ofproto.OFPIT_APPLY_ACTIONS:
            actions.extend(_action_back(ofproto, names, a) for a in inst.actions)
        elif kind == "OFPInstructionGotoTable":
            goto = Goto(names(inst.table_id))
        else:
            actions.append(Unknown(str(inst)))
    if goto is not None:
        actions.append(goto)
    return Flow(bridge, names(stats.table_id), stats.priority, tuple(match), tuple(actions),
                stats.cookie)


_register_extensions()
