"""Why a pod's packet to a destination is (or is not) steered to an egress IP,
in the policies' own terms.  Uses the same selection code as the agent
(``sdn_egress.view``), so the explanation cannot disagree with the flows."""
from __future__ import annotations

from dataclasses import dataclass, field

import netaddr

from sdn_egress.allocation import Allocation
from sdn_egress.model import ClusterState
from flows.view import deciding
from sdn_egress.view import NEVER_STEERED, pod_steers, selected_policies


@dataclass
class Explanation:
    pod: str
    dst: str
    policy: str | None = None  # the policy that steers it, if any
    eip: str | None = None
    gateways: tuple[str, ...] = ()
    reasons: list[str] = field(default_factory=list)

    @property
    def steered(self) -> bool:
        return self.policy is not None

    def to_dict(self) -> dict:
        return {"pod": self.pod, "dst": self.dst, "steered": self.steered, "policy": self.policy,
                "eip": self.eip, "gateways": list(self.gateways), "reasons": self.reasons}


def _labels(labels) -> str:
    return ",".join(f"{k}={v}" for k, v in labels) or "<none>"


def _precedence(winner, other) -> str:
    """Why ``winner`` goes before ``other`` in :func:`sdn_egress.view.selected_policies`'s order."""
    if winner.priority != other.priority:
        return f"priority {winner.priority} > {other.priority}"
    if winner.cluster != other.cluster:
        return "same priority, a namespaced policy goes before a cluster policy"
    return f"same priority, {winner.key} sorts first"


def explain(state: ClusterState, alloc: Allocation, pod_key: str, dst: str,
            dead: frozenset[str] = frozenset()) -> Explanation:
    """``dead``: gateway nodes the pod's node sees BFD-down (its agent's report)."""
    ip = netaddr.IPAddress(dst)
    out = Explanation(pod_key, dst)
    pod = state.pods.get(pod_key)
    if pod is None:
        out.reasons.append(f"pod {pod_key} is not in the cluster state (unknown, not scheduled, or no IP)")
        return out
    steer = deciding(pod_steers(state, alloc, pod, ip.version), ip)
    if steer is not None and steer.exclude:
        steer = None  # an exclusion decides it: not steered (the policies below say whose)
    if steer is not None:
        out.policy, out.eip = steer.policy, str(steer.eip)
        a = alloc.eip(steer.eip)
        out.gateways = tuple(a.nodes) if a else ()
        out.reasons.append(f"policy {steer.policy} selects pod {pod_key} and covers {dst} "
                           f"(steered piece {steer.dest}): egress IP {steer.eip}")
        if not out.gateways:
            out.reasons.append(f"EIP {steer.eip} has no gateway node: its traffic is dropped on the "
                               "pod's node, never sent with the node IP")
        elif all(g in dead for g in out.gateways if g != pod.node) and pod.node not in out.gateways:
            out.reasons.append(f"no live gateway for EIP {steer.eip}: BFD is down to "
                               f"{', '.join(out.gateways)}; the packet is dropped on the pod's node, "
                               "never sent with the node IP")
    cluster = netaddr.IPSet(state.cluster_cidrs(ip.version))
    if ip in cluster:
        out.reasons.append(f"{dst} is a cluster address (pod CIDR, node IP or configured cluster CIDR): "
                           "never steered")
    elif ip in NEVER_STEERED[ip.version]:
        out.reasons.append(f"{dst} is loopback, link-local or multicast: never steered")
    ns_labels = state.namespace_labels(pod.namespace)
    # The view's order first (the one the flows follow), then the policies it
    # passes over (not selecting the pod, or without an EIP), by priority.
    ranked = selected_policies(state, alloc, pod)
    candidates = ranked + sorted((p for p in state.policies.values() if (p.cluster or p.namespace == pod.namespace)
                                  and p not in ranked), key=lambda p: (-p.priority, p.key))
    others = [p for p in state.policies.values() if not p.cluster and p.namespace != pod.namespace
              and p.pod_selector is not None and p.pod_selector.matches(pod.labels)]
    for p in candidates:
        if p.key == out.policy:
            continue
        if not p.selects(pod, ns_labels):
            if p.pod_selector is not None:
                why = f"selector {p.pod_selector}; pod labels {_labels(pod.labels)}"
            else:
                why = f"podSubnet {', '.join(map(str, p.pod_subnets))}; pod IPs {', '.join(map(str, pod.ips))}"
            if p.cluster and p.namespace_selector is not None:
                why += f"; namespaceSelector {p.namespace_selector}"
            out.reasons.append(f"policy {p.key} does not select the pod ({why})")
            continue
        status = alloc.policies.get(p.key)
        if status is None or status.eip(ip.version) is None:
            why = ""
            if status is not None:
                bad = [c for c in status.conditions if c.status != "True"]
                why = "; ".join(f"{c.type}={c.status} {c.reason}: {c.message}" for c in bad)
            out.reasons.append(f"policy {p.key} selects the pod but has no egress IP"
                               + (f" ({why})" if why else ""))
            continue
        dests = [d for d in p.dest_subnets if d.version == ip.version]
        if dests and ip not in netaddr.IPSet(dests):
            out.reasons.append(f"policy {p.key} selects the pod but {dst} is outside its destSubnet "
                               f"{', '.join(map(str, dests))}")
            continue
        excl = [x for x in p.exclude_subnets if x.version == ip.version and ip in x]
        if excl:
            out.reasons.append(f"policy {p.key} selects the pod but {dst} is in its excludeSubnet {excl[0]}")
            continue
        if out.policy is not None:
            winner = state.policies[out.policy]
            out.reasons.append(f"policy {p.key} also matches; {winner.key} wins ({_precedence(winner, p)})")
    for p in others:
        out.reasons.append(f"policy {p.key} would select these labels but is in namespace "
                           f"{p.namespace}: a namespaced policy selects only its own pods")
    if out.policy is None and not candidates and not others:
        out.reasons.append(f"no egress policy in namespace {pod.namespace}")
    return out
