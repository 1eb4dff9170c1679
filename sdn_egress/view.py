"""From the cluster state and the controller's allocation to one node's view.

This is where policy semantics meet a node: which local pods a policy selects,
which destinations it steers once priorities, excludes and cluster CIDRs are
taken out, which EIPs this node must SNAT for.  The result
(:class:`flows.view.NodeView`) is everything ``flows/`` and the routing code
need; both are pure functions of it.
"""
from __future__ import annotations

import operator
import threading
from dataclasses import dataclass
from itertools import chain
from typing import Iterable

import netaddr

from flows.memo import Memo as ViewMemo
from flows.view import (DEFAULT_TUNNEL_MTU, MAX_STEER_RANKS, EipRoute, HeldEip, NodeView, Ports, ReturnRoute, Steer,
                        eips_of)
from sdn_egress.allocation import Allocation
from sdn_egress.model import ClusterState, EgressPolicy, Pod
from sdn_egress.ranges import Ranges
from sdn_egress.source.index import policy_index

# Destinations no policy ever steers, whatever it says: they are not "outside
# the cluster" in any sense a gateway could serve.
NEVER_STEERED = {
    4: netaddr.IPSet(["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
                      "255.255.255.255/32"]),
    6: netaddr.IPSet(["::/128", "::1/128", "fe80::/10", "ff00::/8"]),
}
EVERYTHING = {4: "0.0.0.0/0", 6: "::/0"}


@dataclass(frozen=True)
class NodeFacts:
    """What the agent reads from its own node (OVSDB, kernel)."""

    ports: Ports
    egw_mac: str
    brex_mac: str
    next_hop_macs: tuple[tuple[str, str], ...] = ()  # EIP (str) -> next hop MAC
    tunnel_mtu: int = DEFAULT_TUNNEL_MTU  # the largest IP packet this node's tunnels carry whole

    def next_hop_mac(self, eip: netaddr.IPAddress) -> str | None:
        return dict(self.next_hop_macs).get(str(eip))


def selected_policies(state: ClusterState, alloc: Allocation, pod: Pod) -> list[EgressPolicy]:
    """The policies that select ``pod`` (``EgressPolicy.selects``: its own
    namespace's policies by selector, subnet or annotation; cluster policies
    by namespaceSelector too) and have an EIP, best first: higher priority,
    then a namespaced policy before a cluster policy, then by key."""
    found = []
    namespace_labels = state.namespace_labels(pod.namespace)
    for policy in policy_index(state.policies).candidates(pod):
        if not policy.selects(pod, namespace_labels):
            continue
        status = alloc.policies.get(policy.key)
        if status is None or (status.eip_v4 is None and status.eip_v6 is None):
            continue
        found.append(policy)
    found.sort(key=lambda p: (-p.priority, p.cluster, p.key))
    return found


def never_steered(state: ClusterState, version: int = 4) -> netaddr.IPSet:
    """The destinations no pod of ``state`` is steered to: the cluster's
    own (pod CIDRs, node addresses, extras) and :data:`NEVER_STEERED`.
    Computed once per pass and family (it reads every node), not once per
    pod, and again only when the nodes or the extras changed."""
    asked = _UNSTEERED.get("state")
    if asked is None or asked[0] is not state:  # not asked of this state yet: are the nodes and extras the same?
        key = asked[1] if asked is not None else None
        if key is None or not _same_nodes(key, state):
            key = (state.extra_cluster_cidrs, tuple(state.nodes.values()), state.nodes)
        asked = _UNSTEERED["state"] = (state, key)
    key = asked[1]
    cached = _UNSTEERED.get(version)
    if cached is None or cached[0] is not key:
        cached = _UNSTEERED[version] = (key, netaddr.IPSet(state.cluster_cidrs(version)) | NEVER_STEERED[version])
    return cached[1]


def _same_nodes(key: tuple, state: ClusterState) -> bool:
    """Whether ``state`` has the extras and the very Node objects of ``key``:
    the same dict of them (a source hands out the same while its cache did
    not move), else compared one pointer each, without a new tuple of every node."""
    extra, nodes, by_name = key
    return extra == state.extra_cluster_cidrs and (by_name is state.nodes or (
        len(nodes) == len(state.nodes) and all(map(operator.is_, nodes, state.nodes.values()))))


# family -> the last (key, never_steered); "state": (the state last asked of, its key). One per process.
_UNSTEERED: dict = {}


def pod_steers(state: ClusterState, alloc: Allocation, pod: Pod, version: int = 4,
               unsteered: netaddr.IPSet | None = None) -> list[Steer]:
    """One pod's steering entries of one family (see :class:`flows.view.Steer`).

    Policies best first; each takes what no better one took (cluster CIDRs
    and never-steered ranges are taken from the start).  A policy's
    exclusions are cut out of its destinations when that costs no more
    entries than listing them; otherwise (scattered exclusions split the
    destinations into many CIDRs) its destinations are listed whole and each
    exclusion becomes an ``exclude`` entry, and the policies after it get a
    higher rank: where they cover one of its exclusions, they win.

    IPv6 the same, except that the cluster's own ranges may be entries too:
    cutting a few /64s and /128s out of ::/0 makes over a hundred CIDRs each,
    so when listing them is cheaper they are ``exclude`` entries of the top
    rank (:data:`CLUSTER_RANK`), which nothing outranks.  (IPv4 keeps cutting,
    as it always has.)  ``unsteered``: :func:`never_steered` of ``state``,
    when the caller has it.

    The entries depend on the pod only through its addresses: the rest
    (:func:`destinations`) is computed once for the policies and shared by
    every pod they select."""
    ips = [ip for ip in pod.ips if ip.version == version]
    if not ips:
        return []
    never = unsteered if unsteered is not None else never_steered(state, version)
    policies = tuple((p, eip) for p in selected_policies(state, alloc, pod)
                     if (eip := alloc.policies[p.key].eip_v4 if version == 4 else alloc.policies[p.key].eip_v6))
    return [Steer(pod=pod.key, pod_ip=ip, dest=d.dest, policy=d.policy, eip=d.eip, rank=d.rank, exclude=d.exclude)
            for d in destinations(policies, version, never) for ip in ips]


CLUSTER_RANK = MAX_STEER_RANKS - 1  # policies' exclusions use the ranks below it


@dataclass(frozen=True)
class Destination:
    """A :class:`~flows.view.Steer` without its pod."""

    dest: netaddr.IPNetwork
    policy: str
    eip: netaddr.IPAddress
    rank: int = 0
    exclude: bool = False


def destinations(policies: tuple, version: int, never: netaddr.IPSet) -> tuple[Destination, ...]:
    """The steering entries, without a pod, of ``policies`` ((policy, its
    EIP of ``version``) pairs, best first) for a pod of that family, with
    ``never`` (:func:`never_steered`) not steered.  What they depend on is
    the policies' destinations, exclusions and EIPs: computed once per set
    of policies while they and ``never`` stay (the same objects: one pointer
    each), not once per pod, and kept across passes (a pod selected again
    finds them)."""
    key = (version, tuple(p.key for p, _ in policies))
    inputs = (policies, never)
    with _DESTINATIONS_LOCK:
        hit = _DESTINATIONS.get(key)
    if hit is not None and hit[0][1] is never and hit[0][0] == policies:
        return hit[1]
    out = tuple(_destinations(policies, version, never))
    with _DESTINATIONS_LOCK:
        if len(_DESTINATIONS) >= _DESTINATIONS_MAX:
            _DESTINATIONS.clear()
        _DESTINATIONS[key] = (inputs, out)
    return out


# (version, policy keys) -> ((policies, never), their destinations): one per process (a debug
# command's thread may build a view too); bounded, cleared whole when full.
_DESTINATIONS: dict[tuple, tuple] = {}
_DESTINATIONS_MAX = 1024  # sets of policies (a node has a few per local pod at most)
_DESTINATIONS_LOCK = threading.Lock()


def _destinations(policies, version: int, never: netaddr.IPSet) -> list[Destination]:
    unsteered = _ranges_of(version, never)
    cut = _entries(policies, version, unsteered)
    if version == 4 or not cut:
        return cut
    listed = _entries(policies, version, Ranges(version))
    covered = Ranges.of(version, (d.dest for d in listed if not d.exclude))
    first = listed[0]
    cluster = [Destination(dest=cidr, policy=first.policy, eip=first.eip, rank=CLUSTER_RANK, exclude=True)
               for cidr in (unsteered & covered).cidrs()]
    return listed + cluster if len(listed) + len(cluster) < len(cut) else cut


def _ranges_of(version: int, ipset: netaddr.IPSet) -> Ranges:
    """``ipset`` (:func:`never_steered`'s, one per family and pass) as :class:`Ranges`, converted once."""
    last = _RANGES_OF.get(version)
    if last is None or last[0] is not ipset:
        last = _RANGES_OF[version] = (ipset, Ranges.of_set(version, ipset))
    return last[1]


_RANGES_OF: dict[int, tuple] = {}  # family -> (the IPSet, as Ranges): one per process


def _entries(policies, version: int, claimed: Ranges) -> list[Destination]:
    out: list[Destination] = []
    rank = 0
    for policy, eip in policies:
        # No destSubnet: everything; destSubnets of the other family only: nothing of this one.
        wanted = (Ranges.of(version, policy.dest_subnets) if policy.dest_subnets
                  else Ranges.everything(version))
        excluded = Ranges.of(version, policy.exclude_subnets)
        free = wanted - claimed
        region = free - excluded
        claimed = claimed | region
        holes = free & excluded if rank < CLUSTER_RANK - 1 else Ranges(version)
        listed = bool(holes) and free.count_cidrs() + holes.count_cidrs() < region.count_cidrs()
        if listed:
            entries = [(cidr, False) for cidr in free.cidrs()] + [(cidr, True) for cidr in holes.cidrs()]
        else:
            entries = [(cidr, False) for cidr in region.cidrs()]
        address = netaddr.IPAddress(eip)
        out.extend(Destination(dest=cidr, policy=policy.key, eip=address, rank=rank, exclude=exclude)
                   for cidr, exclude in entries)
        if listed:
            rank += 1
    return out


def underlay_address(node) -> netaddr.IPAddress | None:
    """The address a node's tunnels run from: IPv4 when it has one (a
    dual-stack cluster tunnels over IPv4), else IPv6."""
    return node.address(4) or node.address(6)


def live_order(nodes: tuple[str, ...], dead: frozenset[str]) -> tuple[str, ...]:
    """An EIP's gateway list without the nodes this node sees dead (BFD)."""
    return tuple(n for n in nodes if n not in dead)


def contested_eips(node_name: str, alloc: Allocation, dead: frozenset[str]) -> list[str]:
    """The EIPs ``node_name`` would hold with the ``dead`` peers dead while
    another node of their list is alive, which may hold them now (a standby
    that took over while this node was cut off)."""
    out = []
    for a in alloc.eips:
        alive = live_order(a.nodes, dead)
        if alive[:1] == (node_name,) and len(alive) > 1:
            out.append(str(a.ip))
    return out


def _return_routes(n, node_name: str) -> tuple[ReturnRoute, ...]:
    """Where replies for a node's pods go.  Replies of both families travel
    back over the underlay's family."""
    ip = underlay_address(n)
    if ip is None:
        return ()
    return tuple(ReturnRoute(node=n.name, node_ip=ip, pod_cidr=cidr, local=n.name == node_name)
                 for cidr in n.pod_cidrs)


def _local_steers(node_name: str, state: ClusterState, alloc: Allocation,
                  memo: ViewMemo) -> tuple[list[tuple[Steer, ...]], set[str]]:
    """The steers of the node's pods, one tuple per pod with steers (by pod
    key), and the EIPs they use.  A pod's are computed again only when
    something they depend on changed: the pod, its namespace's labels, the
    policies that may select it (the index's candidates) with their
    allocation, the cluster's own ranges."""
    steers: list[tuple[Steer, ...]] = []
    used: set[str] = set()
    local = sorted((p for p in state.pods.values() if p.node == node_name), key=lambda p: p.key)
    if not local:
        return steers, used
    unsteered = {v: never_steered(state, v) for v in (4, 6)}
    index = policy_index(state.policies)
    labels: dict[str, tuple] = {}
    for pod in local:
        ns = labels.get(pod.namespace)
        if ns is None:
            ns = labels[pod.namespace] = tuple(sorted(state.namespace_labels(pod.namespace).items()))
        inputs = (pod, ns, unsteered[4], unsteered[6], index.candidate_pairs(pod, alloc.policies))

        def make(pod=pod):
            mine = tuple(s for version in (4, 6)
                         for s in pod_steers(state, alloc, pod, version, unsteered=unsteered[version]))
            return mine, eips_of(mine)
        mine, eips = memo.get(("steers", pod.key), inputs, make)
        if mine:
            steers.append(mine)
        used |= eips
    return steers, used


def _eip_route(a, node_name: str, dead: frozenset[str]) -> EipRoute:
    alive = live_order(a.nodes, dead)
    return EipRoute(eip=netaddr.IPAddress(a.ip), tunnel_key=a.tunnel_key, gateways=tuple(a.nodes),
                    local=bool(alive) and alive[0] == node_name)


def _held(node_name: str, alloc: Allocation, facts: NodeFacts, dead: frozenset[str]):
    """(EIP -> its assignment, the EIPs this node holds)."""
    held = tuple(
        HeldEip(eip=netaddr.IPAddress(a.ip), tunnel_key=a.tunnel_key,
                next_hop_mac=facts.next_hop_mac(a.ip), policies=tuple(sorted(a.policies)),
                node_ip=a.node_ip)
        for a in sorted(alloc.eips, key=lambda a: a.tunnel_key)
        if live_order(a.nodes, dead)[:1] == (node_name,))
    return {str(a.ip): a for a in alloc.eips}, held


def build_view(node_name: str, state: ClusterState, alloc: Allocation, facts: NodeFacts,
               dead: frozenset[str] = frozenset(), memo: ViewMemo | None = None) -> NodeView:
    """``dead``: gateway nodes this node's BFD sessions see down.  A standby
    whose predecessors in an EIP's list are all dead holds the EIP (takes it
    over); workers keep every gateway in their bundle, the switch skips the
    dead ones by itself.  ``memo``: a :class:`~flows.memo.Memo` kept from
    this node's last build: a pod's steers and a node's return routes are
    computed again only when what they are computed from changed (the view
    is exactly the one built without it)."""
    memo = memo if memo is not None else ViewMemo()
    node = state.nodes[node_name]
    node_ip = underlay_address(node)
    groups, used = _local_steers(node_name, state, alloc, memo)

    by_ip, held = memo.get("eips", (alloc.eips, dead, facts.next_hop_macs, node_name),
                           lambda: _held(node_name, alloc, facts, dead))
    eip_routes = [memo.get(("route", eip), (by_ip[eip], dead, node_name),
                           lambda a=by_ip[eip]: _eip_route(a, node_name, dead)) for eip in sorted(used)]

    return_routes: tuple[ReturnRoute, ...] = ()
    if held:
        return_routes = tuple(rr for name in sorted(state.nodes)
                              for rr in memo.get(("return", name), (state.nodes[name], name == node_name),
                                                 lambda n=state.nodes[name]: _return_routes(n, node_name)))
    memo.turn()

    return NodeView(
        node=node_name, node_ip=node_ip, ports=facts.ports, egw_mac=facts.egw_mac,
        brex_mac=facts.brex_mac, steers=tuple(chain.from_iterable(groups)), eip_routes=tuple(eip_routes), held=held,
        return_routes=return_routes,
        pod_cidrs=tuple(c for c in node.pod_cidrs if c.version == 4) + tuple(
            c for c in node.pod_cidrs if c.version == 6),
        tunnel_mtu=facts.tunnel_mtu, gateway_node=node_name in gateway_nodes(alloc.eips),
    ).with_steer_groups(tuple(groups))


def tunnel_peers(node_name: str, state: ClusterState, alloc: Allocation,
                 keep: Iterable[str] = (), memo: ViewMemo | None = None,
                 senders: Iterable[str] = ()) -> dict[str, str]:
    """Nodes this node keeps a Geneve port (with BFD) to.

    A worker: the gateway nodes, active and standbys, of the EIPs its own
    selected pods use, so that failover never waits for a port (BFD decides
    which one carries); none while no local pod has ever been selected.
    ``keep``: the peers it has; those still gateway nodes stay, so a pod
    selected again (or the next one) finds its port up, BFD and all, not a
    new port whose session must first come up (the bundle sends nothing
    while it is down).  They are at most the cluster's gateway nodes.  A
    gateway node (of any EIP) has those too, plus every other gateway node
    (the standbys judge the active by BFD) and ``senders``: the nodes it
    heard BFD from (it watches only its own node's pods, so it cannot tell
    which workers send to it; a session needs both ends).  ``memo``: see
    :func:`used_gateways`."""
    gateways = gateway_nodes(alloc.eips)
    wanted = used_gateways(node_name, state, alloc, memo) | (set(keep) & gateways)
    if node_name in gateways:
        wanted |= gateways | set(senders)
    names = tuple(sorted(n for n in wanted if n != node_name and n in state.nodes))
    nodes = tuple(state.nodes[n] for n in names)

    def make() -> dict[str, str]:
        return {n: str(ip) for n, node in zip(names, nodes, strict=True) if (ip := underlay_address(node)) is not None}
    # Their addresses again only when they or their Node objects changed (compared by identity first).
    return dict(memo.get("peers", (names, nodes), make)) if memo is not None else make()


def used_gateways(node_name: str, state: ClusterState, alloc: Allocation,
                  memo: ViewMemo | None = None) -> set[str]:
    """Every gateway node of every EIP of a policy selecting a pod of
    ``node_name``.  ``memo``: kept between calls, a pod's are found again
    only when the pod, its namespace's labels, its candidate policies or
    their allocation changed."""
    memo = memo if memo is not None else ViewMemo()
    index = policy_index(state.policies)
    out: set[str] = set()
    for pod in state.pods.values():
        if pod.node != node_name:
            continue
        namespace_labels = state.namespace_labels(pod.namespace)
        candidates = index.candidate_pairs(pod, alloc.policies)
        out |= memo.get(("gateways", pod.key), (pod, namespace_labels, candidates, alloc.eips),
                        lambda pod=pod, labels=namespace_labels, candidates=candidates:
                        _pod_gateways(pod, labels, candidates, alloc))
    memo.turn()
    return out


def _pod_gateways(pod: Pod, namespace_labels, candidates, alloc: Allocation) -> frozenset[str]:
    # selected_policies' rule, over the policies that have an EIP only (the others lead nowhere)
    nodes_of = _nodes_of(alloc.eips)
    out: set[str] = set()
    for policy, st in candidates:
        if st is None or (st.eip_v4 is None and st.eip_v6 is None) or not policy.selects(pod, namespace_labels):
            continue
        for ip in (st.eip_v4, st.eip_v6):
            if ip is not None:
                out.update(nodes_of.get(str(ip), ()))
    return frozenset(out)


def gateway_nodes(eips) -> frozenset[str]:
    """Every node of every EIP's list (active and standbys), found again only
    for another allocation (one pointer per assignment)."""
    global _GATEWAY_NODES
    last = _GATEWAY_NODES
    if last[0] != eips:
        last = _GATEWAY_NODES = (eips, frozenset(n for a in eips for n in a.nodes))
    return last[1]


_GATEWAY_NODES: tuple = (None, frozenset())  # (the EIP assignments, their nodes): one per process
_NODES_OF: tuple = (None, None)  # (the EIP assignments, EIP -> its gateway nodes): one per process


def _nodes_of(eips) -> dict[str, tuple[str, ...]]:
    global _NODES_OF
    last = _NODES_OF
    if last[0] != eips:  # the same assignments (one allocation version): one pointer each
        last = _NODES_OF = (eips, {str(a.ip): a.nodes for a in eips})
    return last[1]
