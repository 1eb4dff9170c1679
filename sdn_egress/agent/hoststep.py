"""The host-routing step of a pass: the kernel's policy routing for the
steered pods, the new-pod hold over the node's pod CIDRs, and the node-IP
port reservation.  The routing itself is :class:`~sdn_egress.agent.routing.HostRouting`
behind :class:`HostRoutes`; the unit tests give a fake."""
from __future__ import annotations

import time
from typing import Protocol

import netaddr

from flows.view import NODE_IP_PORTS, NodeView
from sdn_egress.agent.rules import NEVER_HELD, Hold, local_addresses
from sdn_egress.model import ClusterState


class HostRoutes(Protocol):
    hold_state: dict  # what the hold does now, for the status

    def sync(self, steers, tunnel_mtu: int, local_pods: dict[str, str] | None = None,
             hold: Hold | None = None, pod_cidrs: tuple = ()) -> tuple[int, int]: ...

    def reserve_ports(self, lo: int, hi: int) -> bool: ...

    def hold_due(self, hold: Hold | None, local_pods: dict[str, str]) -> bool: ...


class HostStep:
    def __init__(self, node: str, routing: HostRoutes, new_pod_hold: float | None, hold_poll: float,
                 clock=time.monotonic):
        self.node = node
        self.routing = routing
        self.new_pod_hold = new_pod_hold
        self.hold_poll = hold_poll
        self.clock = clock
        self.hold: Hold | None = None
        self._local_pods: dict[str, str] = {}
        self._ports_reserved = False
        self._next_hold_check = 0.0

    def sync(self, state: ClusterState, view: NodeView) -> None:
        self._local_pods = local_addresses(state.pods.values(), self.node)  # both families
        self.hold = self._hold_of(state, view)
        self.routing.sync(view.steers, view.tunnel_mtu, local_pods=self._local_pods, hold=self.hold,
                          pod_cidrs=view.pod_cidrs)
        if any(h.node_ip for h in view.held) and not self._ports_reserved:
            self.routing.reserve_ports(*NODE_IP_PORTS)
            self._ports_reserved = True

    def _hold_of(self, state: ClusterState, view: NodeView) -> Hold | None:
        if not self.new_pod_hold or not view.pod_cidrs:
            return None
        return Hold(pod_cidrs=tuple(view.pod_cidrs),
                    exempt=tuple(netaddr.cidr_merge(list(state.cluster_cidrs(4)) + list(state.cluster_cidrs(6))
                                                    + list(NEVER_HELD))),
                    bound=self.new_pod_hold)

    def hold_due(self) -> bool:
        """A held pod address has reached the hold's bound (looked at every
        ``hold_poll`` seconds)."""
        if self.hold is None:
            return False
        now = self.clock()
        if now < self._next_hold_check:
            return False
        self._next_hold_check = now + self.hold_poll
        try:
            return self.routing.hold_due(self.hold, self._local_pods)
        except Exception:  # noqa: BLE001 - judged again at the pass
            return False

    def status(self) -> dict | None:
        if self.hold is None:
            return None
        return {"bound": self.hold.bound, **self.routing.hold_state}
