"""br-int on a gateway node: SNAT an EIP's traffic and return the replies.

classify (BFD on gnv-flow: a node with no port here yet) -> the agent.
classify (tunnel, tun_id = EIP key) -> snat -> ct(commit, SNAT zone,
nat(src=EIP)) -> snat_out -> next hop MACs -> patch to br-ex.
classify (patch from br-ex) -> from_uplink -> ct(SNAT zone, nat) ->
reply_route -> not a reply: drop; by pod CIDR: tunnel to the pod's node
(tun_id = REPLY) or to_host.  A packet to an EIP that is not a reply never
passes reply_route.

Flow count: O(EIPs) per held EIP, plus one ``reply_route`` flow per pod CIDR
of the cluster (the reply states are checked once, before the routes), plus
a constant: 2 x (EIPs + nodes) at most, whatever the number of tunnel ports.
"""
from __future__ import annotations

from flows import cookie as C
from flows import family
from flows import fields as F
from flows.records import CT, CheckLarger, Controller, Drop, Flow, Goto, Load, Nat, Output, SetField
from flows.tables import flow
from flows.memo import Memo
from flows.view import NODE_IP_PORTS, NodeView, ReturnRoute

BR = "br-int"

PRIO_TUNNEL = 100
PRIO_SENDER = 110
PRIO_EIP = 100
PRIO_UPLINK = 100
PRIO_RETURN = 100  # + the pod CIDR's prefix length
PRIO_NOT_REPLY = 1000  # above every route
PRIO_LARGER = 200

# Only replies go back towards a pod: packets of connections our SNAT
# committed (+est) and ICMP errors about them (+rel).  Everything else is
# dropped before the routes, once for every pod CIDR: untracked (-trk),
# invalid (+inv), and neither +est nor +rel (+new: an outside host opening a
# connection to an EIP).
NOT_REPLY_STATES = (F.ct_state(off=(F.CT_TRK,)), F.ct_state(F.CT_TRK, F.CT_INV),
                    F.ct_state(F.CT_TRK, off=(F.CT_EST, F.CT_REL)))


def _eip_cookie(feature: C.Feature, eip) -> int:
    return C.encode(feature, C.object_id(C.eip_key(eip)))


def tunnel_in(view: NodeView) -> list[Flow]:
    """An EIP's traffic arriving from workers: its key selects the EIP, one
    flow per EIP whatever the number of tunnel ports (O(EIPs), not
    O(EIPs x nodes)).  No in_port is needed: only a Geneve port sets a
    tunnel key, every other packet enters br-int with tun_id 0."""
    return [flow(BR, "classify", PRIO_TUNNEL, {"tunnel_id": h.tunnel_key},
                 (Load(F.REG_EIP.field, h.tunnel_key), Goto("snat")),
                 _eip_cookie(C.Feature.EIP_IN, h.eip))
            for h in view.held]


def senders(view: NodeView) -> list[Flow]:
    """A gateway node has a Geneve port (and a BFD session) only to the nodes
    that send to it.  A worker that starts to (its pod is selected) makes its
    port to every gateway node of the EIP; its BFD packets arrive here on
    gnv-flow, the only port that takes a tunnel from an unknown peer, and go
    to the agent, which reads the tunnel's source address and makes the port
    back (``sdn_egress.agent.facts``).  OVS sends BFD inside the tunnel as
    UDP to 169.254.1.0:3784, tunnel key 0 (a pod's reply, also key 0, is to
    a pod address); the bridge's packet-in rate limit bounds what reaches
    the agent."""
    if not view.gateway_node:
        return []
    return [flow(BR, "classify", PRIO_SENDER,
                 {"in_port": view.ports.tun_flow, "eth_type": F.ETH_IP, "ipv4_dst": F.BFD_DST,
                  "ip_proto": F.IPPROTO_UDP, "udp_dst": F.BFD_PORT, "tunnel_id": 0},
                 (Controller(),), C.encode(C.Feature.SENDER))]


def snat(view: NodeView) -> list[Flow]:
    out = []
    for h in view.held:
        fam = family.of(h.eip)
        out.append(flow(
            BR, "snat", PRIO_EIP, {F.REG_EIP.field: h.tunnel_key, "eth_type": fam.eth_type},
            (CT(commit=True, zone=F.CT_ZONE_SNAT, table="snat_out",
                nat=Nat("src", str(h.eip), NODE_IP_PORTS if h.node_ip else None),
                actions=(SetField(F.CT_MARK_EIP, h.tunnel_key),)),),
            _eip_cookie(C.Feature.SNAT, h.eip)))
    return out


def snat_out(view: NodeView) -> list[Flow]:
    out = []
    for h in view.held:
        fam = family.of(h.eip)
        if h.next_hop_mac is None or not view.ports.int_patch:
            actions = (Drop(),)  # nowhere to send it yet: drop, never leak
        else:
            actions = (SetField("eth_src", view.brex_mac), SetField("eth_dst", h.next_hop_mac),
                       Output(view.ports.int_patch))
        out.append(flow(BR, "snat_out", PRIO_EIP,
                        {F.REG_EIP.field: h.tunnel_key, "eth_type": fam.eth_type}, actions,
                        _eip_cookie(C.Feature.SNAT, h.eip)))
    return out


def from_uplink(view: NodeView) -> list[Flow]:
    if not view.ports.int_patch:
        return []
    out = []
    for fam in sorted({family.of(h.eip) for h in view.held}, key=lambda f: f.version):
        out.append(flow(BR, "classify", PRIO_UPLINK,
                        {"in_port": view.ports.int_patch, "eth_type": fam.eth_type},
                        (Goto("from_uplink"),), C.encode(C.Feature.DENAT)))
    # Measured before the de-NAT, so that the agent sees the packet exactly as
    # its sender sent it: the ICMP frag-needed it answers embeds that header.
    larger = CheckLarger(view.tunnel_mtu + F.ETH_HLEN, F.REG_FLAGS.field, F.FLAG_LARGER)
    for h in view.held:
        fam = family.of(h.eip)
        out.append(flow(BR, "from_uplink", PRIO_EIP, {"eth_type": fam.eth_type, fam.dst: h.eip},
                        (larger, Goto("uplink_mtu")), _eip_cookie(C.Feature.DENAT, h.eip)))
    return out


def uplink_mtu(view: NodeView) -> list[Flow]:
    """Packets to an EIP that the tunnel cannot carry whole go to the agent
    (it answers ICMP "fragmentation needed" to the sender when DF is set,
    else sends them back here in fragments that fit); the rest is de-NATed."""
    if not view.ports.int_patch or not view.held:
        return []
    flag = 1 << F.FLAG_LARGER
    out = [flow(BR, "uplink_mtu", PRIO_LARGER, {F.REG_FLAGS.field: (flag, flag)}, (Controller(),),
                C.encode(C.Feature.MTU))]
    for fam in sorted({family.of(h.eip) for h in view.held}, key=lambda f: f.version):
        out.append(flow(BR, "uplink_mtu", PRIO_EIP, {"eth_type": fam.eth_type},
                        (CT(zone=F.CT_ZONE_SNAT, table="reply_route", nat=Nat()),),
                        C.encode(C.Feature.DENAT)))
    return out


def reply_route(view: NodeView, memo: Memo | None = None) -> list[Flow]:
    """With ``memo``: a route's flows are built again only when the route
    (the same object) or the flow-based tunnel port changed."""
    if not view.held:
        return []
    # Distinct priorities: the three may overlap (+inv is also -est-rel).
    out = [flow(BR, "reply_route", PRIO_NOT_REPLY + i, {"ct_state": state}, (Drop(),),
                C.encode(C.Feature.NOT_REPLY))
           for i, state in enumerate(NOT_REPLY_STATES)]
    for rr in view.return_routes:
        if memo is None:
            out.extend(_reply_flows(rr, view.ports.tun_flow))
        else:
            out.extend(memo.get(("return", id(rr)), (rr, view.ports.tun_flow),
                                lambda rr=rr: tuple(_reply_flows(rr, view.ports.tun_flow))))
    return out


def _reply_flows(rr: ReturnRoute, tun_flow: int) -> list[Flow]:
    """One flow per pod CIDR: the reply states were checked above it."""
    fam = family.of(rr.pod_cidr)
    if rr.local:
        actions = (Goto("to_host"),)
    else:
        actions = (SetField("tunnel_id", F.TUNNEL_KEY_REPLY),
                   SetField(family.of(rr.node_ip).tun_dst, rr.node_ip),
                   Output(tun_flow))
    cookie = C.encode(C.Feature.RETURN, C.object_id(C.node_key(rr.node)))
    return [flow(BR, "reply_route", PRIO_RETURN + rr.pod_cidr.prefixlen,
                 {"eth_type": fam.eth_type, fam.dst: rr.pod_cidr}, actions, cookie)]


def flows(view: NodeView, memo: Memo | None = None) -> list[Flow]:
    return (senders(view) + tunnel_in(view) + snat(view) + snat_out(view) + from_uplink(view) + uplink_mtu(view)
            + reply_route(view, memo))
