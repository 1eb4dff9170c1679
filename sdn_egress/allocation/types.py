"""The allocation's types: what :func:`~sdn_egress.allocation.allocate` returns and the stores keep.

Their JSON (written by :mod:`.codec`, read back strictly) is the stored shape:
one document in ``allocation.json``, one record per object in the per-object
stores (:mod:`.records`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import netaddr

from sdn_egress.model import Accepted, ObjectError

TUNNEL_KEY_MIN = 1
TUNNEL_KEY_MAX = 2**24 - 1
MAX_LISTED = 20  # names one message lists before "and N more"

# Condition types and reasons, as they appear in status.
IP_ALLOCATED = "IPAllocated"
READY = "Ready"
ALLOCATED = "Allocated"
POOL_EXHAUSTED = "PoolExhausted"
GATEWAY_NOT_FOUND = "GatewayNotFound"
NOT_IN_POOL = "NotInPool"
EIP_IN_USE = "EIPInUse"
NO_POOL = "NoPool"
GATEWAY_NODE_SELECTED = "GatewayNodeSelected"
NO_GATEWAY_NODE = "NoGatewayNode"
IP_NOT_ALLOCATED = "IPNotAllocated"
GATEWAY_DELETING = "GatewayDeleting"
NOT_PAIRED = "NotPaired"
NAMESPACE_NOT_ALLOWED = "NamespaceNotAllowed"
NODE_IP = "NodeIP"
# Gateway conditions.
NODES_SELECTED = "NodesSelected"
POOL_VALID = "PoolValid"
VALID = "Valid"
IN_USE_ADDRESS_REMOVED = "InUseAddressRemoved"
IN_USE = "InUse"
POLICIES_USE = "PoliciesUse"
DELETION_BLOCKED = "DeletionBlocked"
UNUSED = "Unused"


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" or "False", as Kubernetes writes conditions
    reason: str
    message: str = ""


@dataclass(frozen=True)
class PolicyStatus:
    eip_v4: netaddr.IPAddress | None = None
    eip_v6: netaddr.IPAddress | None = None
    gateway: str = ""
    node: str | None = None  # the active gateway node of the policy's EIP (IPv4 first)
    ready: bool = False
    conditions: tuple[Condition, ...] = ()

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)

    def eip(self, version: int) -> netaddr.IPAddress | None:
        return self.eip_v4 if version == 4 else self.eip_v6


@dataclass(frozen=True)
class EipAssignment:
    ip: netaddr.IPAddress
    gateway: str
    policies: tuple[str, ...]  # namespace/name of the policies using this EIP
    tunnel_key: int
    nodes: tuple[str, ...] = ()  # active first, then standbys; empty: no gateway node
    node_ip: bool = False  # ``ip`` is the address of nodes[0] (useNodeIP), not a pool EIP

    @property
    def active(self) -> str | None:
        return self.nodes[0] if self.nodes else None


@dataclass(frozen=True)
class GatewayNode:
    """One node a gateway's nodeSelector matches."""

    name: str
    ready: bool  # may hold EIPs: Ready, with an address
    eips: tuple[netaddr.IPAddress, ...] = ()  # the EIPs it is the active gateway of


@dataclass(frozen=True)
class GatewayStatus:
    nodes: tuple[GatewayNode, ...] = ()
    ipv4_total: int = 0
    ipv4_free: int = 0
    ipv6_total: int = 0
    ipv6_free: int = 0
    policies: tuple[str, ...] = ()  # keys of the policies it serves (its users: they block its deletion)
    conditions: tuple[Condition, ...] = ()

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)



@dataclass(frozen=True)
class Allocation:
    eips: tuple[EipAssignment, ...] = ()  # sorted by address family, then address
    policies: Mapping[str, PolicyStatus] = field(default_factory=dict)  # key namespace/name
    # Every refusal: the state source's (first) and the allocation's own.
    errors: tuple[ObjectError, ...] = ()
    gateways: Mapping[str, GatewayStatus] = field(default_factory=dict)
    # Per gateway and family ("edge", 4): the last address handed out from the
    # pool, where round-robin allocation goes on from.
    rr_last: Mapping[tuple[str, int], netaddr.IPAddress] = field(default_factory=dict)
    # str(ObjectRef) -> what decided incumbency (the state's ``accepted``): a
    # restarted controller hands it to its source, so a restart changes nothing.
    accepted: Mapping[str, Accepted] = field(default_factory=dict)

    def eip(self, ip: netaddr.IPAddress | str) -> EipAssignment | None:
        ip = netaddr.IPAddress(str(ip))
        return next((a for a in self.eips if a.ip == ip), None)

    # -- JSON (sdn_egress.allocation.codec) ----------------------------------------------------------
    def to_dict(self) -> dict:
        from sdn_egress.allocation import codec

        return codec.allocation_to_dict(self)

    def to_json(self) -> str:
        from sdn_egress.allocation import codec

        return codec.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> "Allocation":
        from sdn_egress.allocation import codec

        return codec.allocation_from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Allocation":
        from sdn_egress.allocation import codec

        return codec.allocation_from_dict(codec.loads(text))
