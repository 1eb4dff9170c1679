"""What the steering and the new-pod hold ask of the host's policy routing,
as data: :class:`Rule`, :class:`Hold`, and the rules a view's steers
(:func:`desired_rules`) and the hold (:func:`hold_rules`) want.  Pure: no
kernel here; :class:`sdn_egress.agent.routing.HostRouting` applies them."""
from __future__ import annotations

from dataclasses import dataclass

import netaddr

from flows.view import MAX_STEER_RANKS, Steer

STEER_TABLE = 7100  # routing table holding the route into egw0
STEER_PRIORITY = 7100  # rule priority: before main (32766), after local (0)
# A Steer of rank r (flows.view.Steer) at STEER_PRIORITY - 2r, an exclusion
# (to the main table) one below that: ranks take 7100 down to 7037.
LOWEST_STEER_PRIORITY = STEER_PRIORITY - 2 * MAX_STEER_RANKS + 1
MAIN_TABLE = 254
# The new-pod hold (docs/pod-lifecycle.md): after the steering rules, a
# classified pod's own address from its own interface goes to the main table
# (RELEASE); the node's pod CIDR to cluster destinations too (EXEMPT); any other
# packet from the node's pod CIDR, from an address the agent has not
# classified yet, is dropped (HOLD) instead of leaving with the node address.
RELEASE_PRIORITY = 7200
EXEMPT_PRIORITY = 7210
HOLD_PRIORITY = 7220
PRIORITIES = {STEER_PRIORITY - i: (MAIN_TABLE if i % 2 else STEER_TABLE)
              for i in range(STEER_PRIORITY - LOWEST_STEER_PRIORITY + 1)}
PRIORITIES.update({RELEASE_PRIORITY: MAIN_TABLE, EXEMPT_PRIORITY: MAIN_TABLE, HOLD_PRIORITY: 0})
ANY = netaddr.IPNetwork("0.0.0.0/0")
ANY6 = netaddr.IPNetwork("::/0")
UNSPECIFIED6 = netaddr.IPNetwork("::/127")  # :: and ::1
EVERYWHERE = {4: ANY, 6: ANY6}
HOST_PREFIX = {4: 32, 6: 128}
# Never held whatever the cluster: loopback, link-local, multicast, broadcast (0.0.0.0/8
# is never forwarded, and the kernel takes no rule to it).
NEVER_HELD = tuple(netaddr.IPNetwork(c) for c in ("127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4",
                                                   "255.255.255.255/32", "::1/128", "fe80::/10", "ff00::/8"))


@dataclass(frozen=True, order=True)
class Rule:
    """One policy-routing rule of ours.  ``table`` 0 means blackhole."""

    priority: int
    src: netaddr.IPNetwork
    dst: netaddr.IPNetwork = ANY
    iif: str = ""
    table: int = STEER_TABLE

    def __str__(self) -> str:
        where = f"from {self.src}" + (f" to {self.dst}" if self.dst.prefixlen else "") + \
            (f" iif {self.iif}" if self.iif else "")
        action = "blackhole" if self.table == 0 else f"lookup {'main' if self.table == MAIN_TABLE else self.table}"
        return f"{self.priority}: {where} {action}"


@dataclass(frozen=True)
class Hold:
    """What the hold needs: the node's pod CIDRs, the destinations never
    held (cluster CIDRs and the like), and how long an address the agent has
    not classified is held at most (seconds from when its route appeared)."""

    pod_cidrs: tuple[netaddr.IPNetwork, ...]
    exempt: tuple[netaddr.IPNetwork, ...]
    bound: float = 5.0


def steer_rule(pod_ip, dest, iif: str = "", rank: int = 0, exclude: bool = False) -> Rule:
    """A steer into table 7100, or (``exclude``) an exclusion: to the main
    table, before the steers of its rank (a lower number is looked at first)."""
    ip = netaddr.IPAddress(pod_ip)
    return Rule(STEER_PRIORITY - 2 * rank - int(exclude), netaddr.IPNetwork(f"{ip}/{HOST_PREFIX[ip.version]}"),
                netaddr.IPNetwork(dest), iif, MAIN_TABLE if exclude else STEER_TABLE)


def address_key(pod: str, ip) -> str:
    """The key of one pod address in ``local_pods``/``bound``: the pod's key
    for its IPv4 address (as always), ``pod@v6`` for its IPv6 one."""
    return pod if netaddr.IPAddress(ip).version == 4 else f"{pod}@v6"


def local_addresses(pods, node: str) -> dict[str, str]:
    """key (:func:`address_key`) -> address of every pod of ``node``, the
    first address of each family."""
    out = {}
    for pod in pods:
        if pod.node != node:
            continue
        for version in (4, 6):
            ip = next((ip for ip in pod.ips if ip.version == version), None)
            if ip is not None:
                out[address_key(pod.key, ip)] = str(ip)
    return out


def _rules_of(s: Steer, iif: str = "") -> tuple[Rule, ...]:
    """The steer's rule; a steer to everywhere (``::/0``: an IPv6 policy
    without destSubnet, its exclusions being rules of their own) is two, the
    halves of the address space.  The kernel takes a rule without a
    destination for a duplicate of every rule of the same priority, source,
    iif and table whatever that one's destination (fib_rules' compare skips
    an absent dst): it refused ``to ::/0`` with EEXIST while the rule of a
    narrower destSubnet was still there, as adds go before deletes, and the
    agent never finished a pass again (issue 12: a policy replaced by a
    wider one)."""
    if s.dest.prefixlen:
        return (steer_rule(s.pod_ip, s.dest, iif, s.rank, s.exclude),)
    return tuple(steer_rule(s.pod_ip, half, iif, s.rank, s.exclude) for half in s.dest.subnet(1))


def desired_rules(steers: tuple[Steer, ...], interfaces: dict[str, str] | None = None,
                  bound: dict[str, str] | None = None) -> set[Rule]:
    """The steering rules.  ``interfaces`` (pod IP -> the host interface of
    its /32 route, as a routed CNI makes them) binds each rule to its pod's
    interface, so an address a deleted pod had is not steered for the next
    pod that gets it; where the node has such routes, a pod without one (its
    network is gone, its object not yet) gets no rule.  ``bound`` (pod ->
    interface, :meth:`HostRouting.bind`) names the interface each pod was
    classified with, where that is known; a pod not in it gets no rule.
    Without any routes (a bridge CNI, or ``None``), rules match the address
    alone."""
    # To ::/128 or ::/127 (exclusions of IPv6's never-steered :: and ::1) the kernel takes no
    # rule (EINVAL for a destination whose address is ::), and never forwards a packet there.
    steers = tuple(s for s in steers if not (s.dest.version == 6 and s.dest in UNSPECIFIED6))
    if not interfaces:
        return {r for s in steers for r in _rules_of(s)}
    if bound is None:
        bound = {address_key(s.pod, s.pod_ip): interfaces[str(s.pod_ip)] for s in steers
                 if str(s.pod_ip) in interfaces}
    return {r for s in steers if (k := address_key(s.pod, s.pod_ip)) in bound for r in _rules_of(s, bound[k])}


def hold_rules(hold: Hold, released) -> set[Rule]:
    """``released``: (local pod IP, its interface) pairs (or a dict of them)
    whose traffic the main table routes (classified pods, and those held
    longer than the bound)."""
    pairs = released.items() if isinstance(released, dict) else released
    rules = set()
    for ip, iif in pairs:
        v = netaddr.IPAddress(ip).version
        rules.add(Rule(RELEASE_PRIORITY, netaddr.IPNetwork(f"{ip}/{HOST_PREFIX[v]}"), EVERYWHERE[v], iif, MAIN_TABLE))
    for cidr in hold.pod_cidrs:
        v = cidr.version
        rules |= {Rule(EXEMPT_PRIORITY, cidr, dst, "", MAIN_TABLE) for dst in hold.exempt if dst.version == v}
        rules.add(Rule(HOLD_PRIORITY, cidr, EVERYWHERE[v], "", 0))
    return rules
