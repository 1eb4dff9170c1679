"""A node's view of the desired state: the only input of ``flows/``.

Built by the agent (``sdn_egress.view``) from the cluster state, the
controller's allocation and the node's OVSDB facts (port numbers, MACs).
Everything here is immutable and already resolved: no lookups, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import groupby
from operator import attrgetter

import netaddr

# The host stack reaches br-int through egw0 via this link-local next hop; the
# agent installs a permanent neighbour entry for it with GW_MAC, and replies
# handed back to the host carry GW_MAC as their source.
GW_NEXTHOP_V4 = netaddr.IPAddress("169.254.0.1")
GW_NEXTHOP_V6 = netaddr.IPAddress("fe80::a9fe:1")  # the IPv6 twin, link-local on egw0
GW_MAC = "0a:58:a9:fe:00:01"

# Tunnel key 0 marks replies travelling from a gateway back to a pod's node;
# every EIP has a key in 1..2**24-1 (Geneve VNI).
REPLY_TUNNEL_KEY = 0

# The largest IP packet a Geneve tunnel of this node carries whole when the
# underlay is 1500 bytes and IPv4: 1500 - 20 (IP) - 8 (UDP) - 8 (Geneve) - 14
# (inner Ethernet).  The agent derives the real value from the uplink's MTU.
DEFAULT_TUNNEL_MTU = 1450


@dataclass(frozen=True)
class Ports:
    """OpenFlow port numbers, read from OVSDB by the agent."""

    egw: int  # br-int: the egw0 internal port (host stack <-> OVS)
    tun_flow: int  # br-int: the flow-based Geneve port (remote_ip=flow, key=flow)
    tunnels: tuple[tuple[str, int], ...] = ()  # br-int: peer node name -> its Geneve port
    int_patch: int = 0  # br-int side of the patch to br-ex (0: none)
    uplink: int = 0  # br-ex: the uplink NIC (0: no br-ex)
    ex_patch: int = 0  # br-ex side of the patch to br-int

    def tunnel(self, peer: str) -> int | None:
        return dict(self.tunnels).get(peer)


# A pod's steering entries come in ranks (see Steer); at most this many per
# pod and family, so that flow priorities and ip rule priorities stay in the
# bands the pipeline and the routing code reserve for them.
MAX_STEER_RANKS = 32


@dataclass(frozen=True)
class Steer:
    """One selected local pod x one destination CIDR, steered to one EIP, or
    (``exclude``) not steered: an exclusion of the policy, an entry of its own
    instead of a hole cut into the destinations (256 scattered /32 exclusions
    of 0.0.0.0/0 are 257 entries, not 5,712).

    Per pod and family, the entry with the highest ``(rank, exclude,
    dest.prefixlen)`` among those containing a destination decides it; the
    view builder guarantees that two entries of one pod, rank and kind never
    overlap, so the flows (priority) and the ip rules (rule priority) need no
    other order.  Most pods have rank 0 only: the higher ranks exist for
    lower-priority policies that fill the exclusions of a better one."""

    pod: str  # namespace/name
    pod_ip: netaddr.IPAddress
    dest: netaddr.IPNetwork
    policy: str  # namespace/name of the policy that won
    eip: netaddr.IPAddress  # the policy's EIP of this family (also on an exclusion)
    rank: int = 0
    exclude: bool = False


def deciding(steers, ip) -> Steer | None:
    """The entry that decides where a packet from the entries' pod to ``ip``
    goes (None: none covers it); an ``exclude`` entry means not steered."""
    ip = netaddr.IPAddress(ip)
    found = [s for s in steers if s.dest.version == ip.version and ip in s.dest]
    return max(found, key=lambda s: (s.rank, s.exclude, s.dest.prefixlen), default=None)


@dataclass(frozen=True)
class EipRoute:
    """How this node reaches the gateways of one EIP its pods use."""

    eip: netaddr.IPAddress
    tunnel_key: int
    gateways: tuple[str, ...]  # ordered: active first, then standbys; empty: none alive (drop)
    local: bool = False  # this node is the active gateway (no tunnel)


# useNodeIP: the SNAT to a node's own address takes source ports from this
# range only, and only replies to it are taken from the host (TCP and UDP;
# 0xf000/0xf000 in one masked match).  Below the kernel's ephemeral range
# (32768-60999 by default) nothing of the host's own collides; the agent also
# lists the range in net.ipv4.ip_local_reserved_ports.
NODE_IP_PORTS = (61440, 65535)


@dataclass(frozen=True)
class HeldEip:
    """An EIP this node SNATs for and answers ARP for (this node is active).
    ``node_ip``: the address is this node's own (useNodeIP): SNAT to it takes
    ports from :data:`NODE_IP_PORTS`, no ARP (the host answers), and only
    TCP/UDP replies to those ports are taken from the uplink."""

    eip: netaddr.IPAddress
    tunnel_key: int
    next_hop_mac: str | None  # the uplink next hop's resolved MAC; None: not resolved yet (drop)
    policies: tuple[str, ...] = ()  # namespace/name, for cookies and dumps
    node_ip: bool = False


@dataclass(frozen=True)
class ReturnRoute:
    """Where replies for pods of one pod CIDR go: a node, by tunnel or locally."""

    node: str
    node_ip: netaddr.IPAddress
    pod_cidr: netaddr.IPNetwork
    local: bool = False


@dataclass(frozen=True)
class NodeView:
    node: str
    node_ip: netaddr.IPAddress
    ports: Ports
    egw_mac: str  # egw0's MAC (the host side of the steering link)
    brex_mac: str  # br-ex's MAC: source of SNATed frames and of EIP ARP replies
    steers: tuple[Steer, ...] = ()
    eip_routes: tuple[EipRoute, ...] = ()
    held: tuple[HeldEip, ...] = ()
    return_routes: tuple[ReturnRoute, ...] = ()  # filled on gateway nodes (held non-empty)
    pod_cidrs: tuple[netaddr.IPNetwork, ...] = ()  # this node's own pod CIDRs, both families (replies to the host)
    tunnel_mtu: int = DEFAULT_TUNNEL_MTU  # the largest IP packet its Geneve tunnels carry whole
    # A gateway node of some EIP (active or standby): it learns which nodes send
    # to it from their BFD, which arrives on gnv-flow until it has a port to them.
    gateway_node: bool = False

    @cached_property
    def steer_groups(self) -> tuple[tuple[Steer, ...], ...]:
        """The steers in runs of one pod (a view lists a pod's steers
        together), cut once per view.  The agent's view builder hands over
        the runs it made (``with_steer_groups``), the same tuples pass after
        pass while a pod's steers stay, so what is kept per pod compares them
        by identity."""
        return tuple(tuple(g) for _, g in groupby(self.steers, key=attrgetter("pod")))

    def with_steer_groups(self, groups: tuple[tuple[Steer, ...], ...]) -> "NodeView":
        """This view, told its :attr:`steer_groups` (``groups``: ``steers``
        in runs of one pod, each run non-empty and whole)."""
        self.__dict__["steer_groups"] = groups  # a cached value, not a field: replace() starts afresh
        return self


def eips_of(steers) -> frozenset[str]:
    """The EIPs of ``steers`` as text, each EIP object formatted once (a
    pod's steers share the few EIPs of its policies)."""
    return frozenset(str(e) for e in {id(s.eip): s.eip for s in steers}.values())
