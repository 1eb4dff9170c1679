"""br-ex: neighbour solicitations for the IPv6 EIPs this node holds go to
the agent, which answers them (:mod:`sdn_egress.agent.announce`).

The IPv4 twin (:mod:`flows.arp`) answers in the switch.  An IPv6 answer
needs the advertisement's flags (Solicited, Override) in the ICMPv6
"reserved" word and the target link-layer option in place of the source's:
Open vSwitch has fields for both (``nd_reserved``, ``nd_options_type``, OVS
2.11+) but os-ken cannot encode them, and the kernel datapath cannot set
ICMPv6 fields (every answer would take OVS's slow path anyway).  So the
switch sends the solicitation up, as OVN's controller answers ``nd_na``;
packet-ins are rate-limited per bridge (ovs_setup).  Solicitations for an
address this node does not hold go on to NORMAL, as before.
"""
from __future__ import annotations

from flows import cookie as C
from flows import fields as F
from flows.records import Controller
from flows.tables import flow
from flows.view import NodeView

BR = "br-ex"
PRIO_ND = 200


def flows(view: NodeView):
    p = view.ports
    if not (p.uplink and p.ex_patch and p.int_patch):
        return []  # EIP traffic could not be served here: do not claim the address
    return [flow(BR, "classify", PRIO_ND,
                 {"in_port": p.uplink, "eth_type": F.ETH_IPV6, "ip_proto": F.IPPROTO_ICMPV6,
                  "icmpv6_type": F.ND_NEIGHBOR_SOLICIT, "ipv6_nd_target": h.eip},
                 (Controller(),), C.encode(C.Feature.ND, C.object_id(C.eip_key(h.eip))))
            for h in view.held if h.eip.version == 6 and not h.node_ip]  # the host answers for its own
