"""The one object the allocation rules work on (:mod:`.rules`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import netaddr

from sdn_egress.allocation.election import selected_nodes
from sdn_egress.allocation.pools import FreeCursor
from sdn_egress.allocation.types import Allocation
from sdn_egress.model import ClusterState, EgressGateway, EgressPolicy


@dataclass
class Problem:
    reason: str
    field: str
    message: str


@dataclass
class Ledger:
    """Who is served by which gateway and holds which EIP, and what went
    wrong, while :func:`~sdn_egress.allocation.allocate` runs."""

    state: ClusterState
    previous: Allocation
    policies: list[EgressPolicy] = field(default_factory=list)  # by key
    served: dict[str, EgressGateway] = field(default_factory=dict)  # policy key -> its gateway
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # policy key -> refusals
    gateway_problems: dict[str, list[Problem]] = field(default_factory=dict)
    taken: dict[netaddr.IPAddress, str] = field(default_factory=dict)  # EIP -> policy key, all gateways
    got: dict[tuple[str, int], netaddr.IPAddress] = field(default_factory=dict)  # (policy key, family) -> EIP
    rr_last: dict[tuple[str, int], netaddr.IPAddress] = field(default_factory=dict)
    cursor: FreeCursor = field(default_factory=FreeCursor)
    selected: dict[str, list[str]] = field(default_factory=dict)  # gateway -> its nodes (selector)

    @classmethod
    def start(cls, state: ClusterState, previous: Allocation) -> "Ledger":
        policies = sorted(state.policies.values(), key=lambda p: p.key)
        return cls(state=state, previous=previous, policies=policies,
                   problems={p.key: [] for p in policies},
                   rr_last={k: v for k, v in previous.rr_last.items() if k[0] in state.gateways},
                   selected=selected_nodes(state))

    def refuse(self, p: EgressPolicy, reason: str, field_: str, message: str) -> None:
        self.problems[p.key].append(Problem(reason, field_, message))

    def take(self, p: EgressPolicy, version: int, ip: netaddr.IPAddress) -> None:
        self.taken[ip] = p.key
        self.got[(p.key, version)] = ip

    def release(self, p: EgressPolicy, version: int) -> None:
        ip = self.got.pop((p.key, version), None)
        if ip is not None:
            del self.taken[ip]

    def has(self, p: EgressPolicy, version: int) -> bool:
        return (p.key, version) in self.got

    def holder(self, ip: netaddr.IPAddress) -> str:
        return str(self.state.policies[self.taken[ip]].ref)

    def pool_served(self):
        """(policy, gateway) of every served policy that takes pool addresses (not useNodeIP)."""
        for p in self.policies:
            gw = self.served.get(p.key)
            if gw is not None and not p.use_node_ip:
                yield p, gw
