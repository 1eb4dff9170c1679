"""br-ex: EIP traffic from the uplink goes to br-int, SNATed frames from
br-int go to the uplink; the node's own traffic (and the Geneve underlay)
is left to NORMAL, the table's miss."""
from __future__ import annotations

from flows import cookie as C
from flows import family
from flows.records import Drop, Output
from flows.tables import flow
from flows.view import NODE_IP_PORTS, NodeView

BR = "br-ex"
PRIO_EIP = 100
PRIO_PATCH = 100
IPPROTO_TCP, IPPROTO_UDP = 6, 17
# NODE_IP_PORTS as one masked match: the ports whose top four bits are set.
NODE_IP_PORT_BITS = 0xF000
if NODE_IP_PORTS != (NODE_IP_PORT_BITS, 0xFFFF):
    raise ImportError("flows.view.NODE_IP_PORTS must stay one masked match (0xf000/0xf000)")


def flows(view: NodeView):
    p = view.ports
    if not p.uplink:
        return []
    out = []
    if p.ex_patch:
        out.append(flow(BR, "classify", PRIO_PATCH, {"in_port": p.ex_patch}, (Output(p.uplink),),
                        C.encode(C.Feature.UPLINK)))
    for h in view.held:
        fam = family.of(h.eip)
        # Without the patch the EIP's traffic must not fall to NORMAL (the host
        # would route it): drop it.
        actions = (Output(p.ex_patch),) if p.ex_patch and p.int_patch else (Drop(),)
        cookie = C.encode(C.Feature.UPLINK, C.object_id(C.eip_key(h.eip)))
        if h.node_ip:
            # The node's own address: only replies to the SNAT's ports are
            # ours; everything else to it stays the host's (NORMAL).
            if p.ex_patch and p.int_patch:
                for proto, port_field in ((IPPROTO_TCP, "tcp_dst"), (IPPROTO_UDP, "udp_dst")):
                    out.append(flow(BR, "classify", PRIO_EIP,
                                    {"in_port": p.uplink, "eth_type": fam.eth_type, fam.dst: h.eip,
                                     "ip_proto": proto, port_field: (NODE_IP_PORT_BITS, NODE_IP_PORT_BITS)},
                                    actions, cookie))
            continue
        out.append(flow(BR, "classify", PRIO_EIP,
                        {"in_port": p.uplink, "eth_type": fam.eth_type, fam.dst: h.eip}, actions, cookie))
    return out
