"""Flow cookies: ``generation(8) | feature(8) | object(48)``.

* **generation** -- :data:`GENERATION`, the pipeline's shape version.  Bump
  it whenever tables, priorities or matches change meaning.  An older
  generation's flows need no clean-up of their own: the agent's diff removes
  every flow of the switch that the desired set does not hold, whatever its
  cookie; the generation tells a reader of a dump which pipeline made a flow.
* **feature** -- which part of the pipeline made the flow (:class:`Feature`).
* **object** -- a stable hash of the object the flow serves (an EIP, a node,
  a pod CIDR); for STEER flows ``hash24(policy) << 24 | hash24(pod)``, so a
  dump reads back as "policy X, pod Y" (:class:`Legend` names the hashes).

Hashes are BLAKE2b of the object's key, never Python's ``hash()``: the same
object gets the same cookie in every process and after every restart.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from dataclasses import dataclass
from enum import IntEnum

GENERATION = 2  # 2: reply_route checks the reply states once, then one flow per pod CIDR

GENERATION_SHIFT, FEATURE_SHIFT = 56, 48
OBJECT_MASK = (1 << 48) - 1
FEATURE_MASK = 0xFF << FEATURE_SHIFT
GENERATION_MASK = 0xFF << GENERATION_SHIFT


class Feature(IntEnum):
    PIPELINE = 1  # a table's miss flow (object: bridge/table)
    STEER = 2  # classify: a selected pod to a policy destination (object: policy, pod)
    UNSTEERED = 3  # classify: anything else from egw0 dies (never leaks); with an object (policy,
    # pod): an exclusion of that policy for that pod, dropped should the host send it
    EIP_OUT = 4  # eip_out: to the EIP's gateway, or "no live gateway" (object: EIP)
    EIP_IN = 5  # classify: an EIP's traffic arriving by tunnel at its gateway (object: EIP)
    SNAT = 6  # snat, snat_out (object: EIP)
    DENAT = 7  # classify uplink->from_uplink (object 0); from_uplink (object: EIP)
    RETURN = 8  # reply_route: a pod CIDR's replies to its node (object: node)
    TO_HOST = 9  # classify tunnelled replies, to_host (object: tunnel peer / pod CIDR)
    ARP = 10  # br-ex: ARP responder for a held EIP (object: EIP)
    UPLINK = 11  # br-ex: EIP traffic to br-int (object: EIP), br-int to the uplink (0)
    NO_GATEWAY = 12  # eip_out: the EIP has no live gateway (or no tunnel to it yet): drop
    MTU = 13  # uplink_mtu: a packet to an EIP too big for the tunnel goes to the agent (object 0)
    ND = 14  # br-ex: neighbour solicitations for a held IPv6 EIP go to the agent (object: EIP)
    NOT_REPLY = 15  # reply_route: not a reply to a connection our SNAT committed (untracked,
    # invalid, new): dropped before the routes (object 0)
    SENDER = 16  # classify, gateway nodes: BFD arriving on gnv-flow (from a node this one has no
    # port to) goes to the agent, which makes one (object 0)


@lru_cache(maxsize=1 << 16)
def stable_hash(key: str, bits: int) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << bits) - 1)


def object_id(key: str) -> int:
    """The 48-bit object id of one object key ("" -> 0: no particular object)."""
    return stable_hash(key, 48) if key else 0


def steer_object(policy: str, pod: str) -> int:
    return stable_hash(policy, 24) << 24 | stable_hash(pod, 24)


# Object keys, namespaced so that a node and a pod CIDR never share a hash input.
def eip_key(eip) -> str:
    return f"eip:{eip}"


def node_key(node: str) -> str:
    return f"node:{node}"


def cidr_key(cidr) -> str:
    return f"cidr:{cidr}"


def tunnel_key(peer: str) -> str:
    return f"tunnel:{peer}"


def table_key(bridge: str, table: str) -> str:
    return f"table:{bridge}/{table}"


def encode(feature: Feature, obj: int = 0, generation: int = GENERATION) -> int:
    if not 0 <= generation <= 0xFF:
        raise ValueError(f"cookie generation {generation} outside 0..255")
    if not 0 <= obj <= OBJECT_MASK:
        raise ValueError(f"cookie object {obj:#x} does not fit in 48 bits")
    return generation << GENERATION_SHIFT | int(Feature(feature)) << FEATURE_SHIFT | obj


@dataclass(frozen=True)
class Cookie:
    generation: int
    feature: Feature | int  # an int when a switch holds a feature this code does not know
    object: int

    @property
    def policy_hash(self) -> int:
        return self.object >> 24

    @property
    def pod_hash(self) -> int:
        return self.object & 0xFFFFFF

    def __str__(self) -> str:
        name = self.feature.name if isinstance(self.feature, Feature) else f"feature{self.feature}"
        return f"g{self.generation}/{name}/{self.object:012x}"


def decode(value: int) -> Cookie:
    feature = (value & FEATURE_MASK) >> FEATURE_SHIFT
    try:
        feature = Feature(feature)
    except ValueError:
        pass
    return Cookie(value >> GENERATION_SHIFT, feature, value & OBJECT_MASK)


class Legend:
    """Names for the hashes in cookies: built from the keys a view holds."""

    def __init__(self):
        self._objects: dict[int, str] = {}
        self._policies: dict[int, str] = {}
        self._pods: dict[int, str] = {}

    def add(self, key: str, text: str | None = None) -> None:
        self._objects[object_id(key)] = text or key.split(":", 1)[-1]

    def add_steer(self, policy: str, pod: str) -> None:
        self._policies[stable_hash(policy, 24)] = policy
        self._pods[stable_hash(pod, 24)] = pod

    def explain(self, cookie: Cookie) -> str:
        if cookie.feature == Feature.STEER or (cookie.feature == Feature.UNSTEERED and cookie.object):
            policy = self._policies.get(cookie.policy_hash, f"#{cookie.policy_hash:06x}")
            pod = self._pods.get(cookie.pod_hash, f"#{cookie.pod_hash:06x}")
            what = "exclusion of policy" if cookie.feature == Feature.UNSTEERED else "policy"
            return f"{what} {policy}, pod {pod}"
        if cookie.object == 0:
            return ""
        return self._objects.get(cookie.object, f"#{cookie.object:012x}")


def legend(view) -> Legend:
    """A :class:`Legend` naming every object a :class:`~flows.view.NodeView`
    can put into a cookie."""
    from flows.tables import PIPELINE

    leg = Legend()
    for s in view.steers:
        leg.add_steer(s.policy, s.pod)
    for eip in {str(r.eip) for r in view.eip_routes} | {str(h.eip) for h in view.held}:
        policies = sorted({p for h in view.held if str(h.eip) == eip for p in h.policies}
                          | {s.policy for s in view.steers if str(s.eip) == eip})
        leg.add(eip_key(eip), f"EIP {eip}" + (f" ({', '.join(policies)})" if policies else ""))
    for r in view.return_routes:
        leg.add(node_key(r.node), f"node {r.node}")
    for c in view.pod_cidrs:
        leg.add(cidr_key(c), f"pod CIDR {c}")
    for peer, _ in view.ports.tunnels:
        leg.add(tunnel_key(peer), f"tunnel from {peer}")
    leg.add(tunnel_key("flow"), "tunnel gnv-flow")
    for b in PIPELINE.values():
        for t in b.tables:
            leg.add(table_key(b.bridge, t.name), f"{b.bridge}/{t.name} miss")
    return leg
