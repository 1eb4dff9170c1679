"""EIP allocation and gateway election: ClusterState (+ the previous result) -> Allocation.

The rules, in the order they are applied (:func:`allocate`, one function each
in :mod:`.rules`: ``rule_0_gateway`` .. ``rule_4_node_ip``; docs/policies.md):

0. **Which gateway**: the one the policy names; else the one that served it
   before (a default, once applied, sticks); else its namespace's default
   (label ``sdn-egress.io/default-gateway``), else the gateway with
   ``clusterDefault: true``.  A gateway being deleted serves only the
   policies it served already (``GatewayDeleting`` for newcomers).
1. **Sticky**: a policy keeps the EIP it had while it exists, is served by the
   same gateway and (when it names an EIP explicitly) still names that one.
   An address in use that left the pool stays with its holder (an error on
   the gateway says so) until the holder releases it.
2. **Explicit**: ``spec.egressIP`` is honoured when it lies in the gateway's
   pool and no policy holds it (``EIPInUse`` otherwise, the holder named).  In
   a dual-stack gateway the other family's address is its pair.
3. **Pool**: every other policy gets, per family, the lowest free address
   (``allocatorPolicy: default``) or the first free one after the last handed
   out (``rr``); in a dual-stack gateway, a free pair.  None left ->
   ``PoolExhausted``, no EIP, never a stolen one.  EIPs are unique across
   all gateways.
4. **Node IP** (``useNodeIP``): no pool address; the policy leaves with the
   address of one gateway node: the one it had while that node qualifies,
   else the eligible node with the fewest active EIPs.  Its traffic is
   SNATed there to that address (ports 61440-65535: see flows/view.py);
   there is no standby (another node is another address): when the node
   goes, the policy moves to another node and its address with it.

Each EIP gets a Geneve tunnel key (1..2**24-1): the one it had, else the lowest
free.  Its gateway nodes are the ready nodes (with an address) matching the
gateway's nodeSelector, active first: the previous active while it still
qualifies, else the previous first standby that still qualifies (the node the
data plane fails over to), else the node holding the fewest EIPs as active
(ties by name).  Standbys keep their previous order; new ones follow, fewest
EIPs first.  Every gateway gets a status (nodes, address usage, users,
conditions).  The same inputs always give the same output.

The package: :mod:`.types` (what an allocation is) and :mod:`.codec` (its
JSON, read strictly); :mod:`.pools` (pool arithmetic); :mod:`.ledger` and
:mod:`.rules` (the rules above); :mod:`.election` (gateway nodes, tunnel
keys); :mod:`.status` (policy and gateway status); :mod:`.store` (the
:class:`AllocationStore` protocol), :mod:`.store_file` (standalone: files in a
status directory) and :mod:`.store_kube` (Kubernetes: one ConfigMap per EIP
and per object, :mod:`.records`).
"""
from __future__ import annotations

from sdn_egress.allocation.election import eligible_nodes
from sdn_egress.allocation.pools import lowest_free
from sdn_egress.allocation.rules import allocate, default_gateway, namespace_refusal, quote_name
from sdn_egress.allocation.status import listing
from sdn_egress.allocation.store import AllocationReader, AllocationStore
from sdn_egress.allocation.store_file import FileAllocationStore
from sdn_egress.allocation.types import (  # the types and condition names, as before the split
    ALLOCATED,
    DELETION_BLOCKED,
    EIP_IN_USE,
    GATEWAY_DELETING,
    GATEWAY_NODE_SELECTED,
    GATEWAY_NOT_FOUND,
    IN_USE,
    IN_USE_ADDRESS_REMOVED,
    IP_ALLOCATED,
    IP_NOT_ALLOCATED,
    MAX_LISTED,
    NAMESPACE_NOT_ALLOWED,
    NODES_SELECTED,
    NODE_IP,
    NOT_IN_POOL,
    NOT_PAIRED,
    NO_GATEWAY_NODE,
    NO_POOL,
    POLICIES_USE,
    POOL_EXHAUSTED,
    POOL_VALID,
    READY,
    TUNNEL_KEY_MAX,
    TUNNEL_KEY_MIN,
    UNUSED,
    VALID,
    Allocation,
    Condition,
    EipAssignment,
    GatewayNode,
    GatewayStatus,
    PolicyStatus,
)

__all__ = [
    "ALLOCATED",
    "Allocation",
    "AllocationReader",
    "AllocationStore",
    "Condition",
    "DELETION_BLOCKED",
    "EIP_IN_USE",
    "EipAssignment",
    "FileAllocationStore",
    "GATEWAY_DELETING",
    "GATEWAY_NODE_SELECTED",
    "GATEWAY_NOT_FOUND",
    "GatewayNode",
    "GatewayStatus",
    "IN_USE",
    "IN_USE_ADDRESS_REMOVED",
    "IP_ALLOCATED",
    "IP_NOT_ALLOCATED",
    "MAX_LISTED",
    "NAMESPACE_NOT_ALLOWED",
    "NODES_SELECTED",
    "NODE_IP",
    "NOT_IN_POOL",
    "NOT_PAIRED",
    "NO_GATEWAY_NODE",
    "NO_POOL",
    "POLICIES_USE",
    "POOL_EXHAUSTED",
    "POOL_VALID",
    "PolicyStatus",
    "READY",
    "TUNNEL_KEY_MAX",
    "TUNNEL_KEY_MIN",
    "UNUSED",
    "VALID",
    "allocate",
    "default_gateway",
    "eligible_nodes",
    "listing",
    "lowest_free",
    "namespace_refusal",
    "quote_name",
]
