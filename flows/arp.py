"""br-ex: answer ARP requests for the EIPs this node holds, in the switch.

The request is turned into the reply in place and sent back out of the port
it came in on; the host stack never sees it (it does not own the EIP).
IPv6 neighbour solicitations go to the agent instead (:mod:`flows.nd`).
"""
from __future__ import annotations

from flows import cookie as C
from flows import fields as F
from flows.records import InPort, Move, SetField
from flows.tables import flow
from flows.view import NodeView

BR = "br-ex"
PRIO_ARP = 200
ARP_REQUEST, ARP_REPLY = 1, 2


def responder_actions(mac: str, ip) -> tuple:
    return (
        Move("eth_src", "eth_dst"),
        SetField("eth_src", mac),
        SetField("arp_op", ARP_REPLY),
        Move("arp_sha", "arp_tha"),
        Move("arp_spa", "arp_tpa"),
        SetField("arp_sha", mac),
        SetField("arp_spa", ip),
        InPort(),
    )


def flows(view: NodeView):
    p = view.ports
    if not (p.uplink and p.ex_patch and p.int_patch):
        return []  # EIP traffic could not be served here: do not claim the address
    return [flow(BR, "classify", PRIO_ARP,
                 {"in_port": p.uplink, "eth_type": F.ETH_ARP, "arp_op": ARP_REQUEST,
                  "arp_tpa": h.eip},
                 responder_actions(view.brex_mac, h.eip),
                 C.encode(C.Feature.ARP, C.object_id(C.eip_key(h.eip))))
            for h in view.held if h.eip.version == 4 and not h.node_ip]  # the host answers for its own
