"""Flows as text: ``ovs-ofctl add-flow`` syntax, and one-line descriptions
for people reading dumps."""
from __future__ import annotations

import netaddr

from flows import cookie as C
from flows import fields as F
from flows.records import (CT, Bundle, CheckLarger, Controller, Drop, Flow, Goto, InPort, Load, Move, Nat, Normal,
                           Output, SetField, Unknown)
from flows.tables import table_id

_PROTO = {F.ETH_IP: "ip", F.ETH_ARP: "arp", F.ETH_IPV6: "ipv6"}


def ct_state_text(value: int, mask: int) -> str:
    parts = []
    for bit, name in F.CT_STATE_NAMES.items():
        if mask & bit:
            parts.append(("+" if value & bit else "-") + name)
    rest = mask & ~sum(F.CT_STATE_NAMES)
    if rest:
        return f"{value:#x}/{mask:#x}"
    return "".join(parts)


def _value(name: str, value) -> str:
    f = F.FIELDS.get(name)
    if f is not None and f.kind == F.INT and name not in ("in_port", "arp_op", "ct_zone"):
        return f"{value:#x}"
    return str(value)


def match_text(flow: Flow) -> str:
    parts = []
    for entry in flow.match:
        name, value = entry[0], entry[1]
        mask = entry[2] if len(entry) == 3 else None
        if name == "eth_type" and mask is None and value in _PROTO:
            parts.insert(0, _PROTO[value])
            continue
        if name == "ct_state":
            parts.append(f"ct_state={ct_state_text(value, mask if mask is not None else 0xFFFFFFFF)}")
            continue
        f = F.FIELDS.get(name)
        ofctl = f.ofctl if f else name
        if mask is None:
            parts.append(f"{ofctl}={_value(name, value)}")
        elif f is not None and f.kind in (F.IPV4, F.IPV6) and netaddr.IPAddress(mask).is_netmask():
            parts.append(f"{ofctl}={value}/{netaddr.IPAddress(mask).netmask_bits()}")
        else:
            parts.append(f"{ofctl}={_value(name, value)}/{_value(name, mask)}")
    return ",".join(parts)


def _nat_text(nat: Nat) -> str:
    if nat.kind is None:
        return "nat"
    addr = f"[{nat.addr}]" if nat.ports and ":" in nat.addr else nat.addr
    ports = f":{nat.ports[0]}-{nat.ports[1]}" if nat.ports else ""
    return f"nat({nat.kind}={addr}{ports})"


def action_text(bridge: str, a, table_label=None) -> str:
    """One action in ovs-ofctl syntax; ``table_label(name)`` renders table
    references (ids by default)."""
    label = table_label or (lambda name: str(table_id(bridge, name)))
    if isinstance(a, Output):
        return f"output:{a.port}"
    if isinstance(a, Bundle):
        return f"bundle(symmetric_l4,0,active_backup,ofport,members:{','.join(map(str, a.ports))})"
    if isinstance(a, InPort):
        return "IN_PORT"
    if isinstance(a, Controller):
        return "CONTROLLER:65535"
    if isinstance(a, CheckLarger):
        return f"check_pkt_larger({a.length})->{F.field(a.field).nxm}[{a.bit}]"
    if isinstance(a, Normal):
        return "NORMAL"
    if isinstance(a, Drop):
        return "drop"
    if isinstance(a, Goto):
        return f"goto_table:{label(a.table)}"
    if isinstance(a, (SetField, Load)):
        f = F.FIELDS.get(a.field)
        return f"set_field:{_value(a.field, a.value)}->{f.ofctl if f else a.field}"
    if isinstance(a, Move):
        return f"move:{F.field(a.src).nxm}[]->{F.field(a.dst).nxm}[]"
    if isinstance(a, CT):
        args = []
        if a.commit:
            args.append("commit")
        if a.table is not None:
            args.append(f"table={label(a.table)}")
        args.append(f"zone={a.zone}")
        if a.nat is not None:
            args.append(_nat_text(a.nat))
        if a.actions:
            args.append("exec(" + ",".join(action_text(bridge, x, label) for x in a.actions) + ")")
        return "ct(" + ",".join(args) + ")"
    if isinstance(a, Unknown):
        return a.text
    raise TypeError(f"not an action record: {a!r}")


def actions_text(flow: Flow, table_label=None) -> str:
    return ",".join(action_text(flow.bridge, a, table_label) for a in flow.actions)


def to_ofctl(flow: Flow) -> str:
    """The flow in ``ovs-ofctl add-flow`` syntax (table ids, not names)."""
    head = f"table={table_id(flow.bridge, flow.table)},priority={flow.priority},cookie={flow.cookie:#x}"
    match = match_text(flow)
    return f"{head},{match + ',' if match else ''}actions={actions_text(flow)}"


def describe(flow: Flow, legend: C.Legend | None = None) -> str:
    """A one-line, human description: bridge/table, priority, decoded cookie
    (named through ``legend`` when given), match -> actions, tables by name."""
    ck = C.decode(flow.cookie)
    feature = ck.feature.name if isinstance(ck.feature, C.Feature) else f"feature{ck.feature}"
    who = legend.explain(ck) if legend is not None else ""
    if not who and ck.object:
        who = f"#{ck.object:012x}"
    tag = f"{feature}{' ' + who if who else ''}"
    if ck.generation != C.GENERATION:
        tag += f" (generation {ck.generation}, current {C.GENERATION})"
    return (f"{flow.bridge}/{flow.table} prio={flow.priority} [{tag}] "
            f"{match_text(flow) or '*'} -> {actions_text(flow, lambda name: name)}")
