"""The allocation as small records: one per EIP, one per object it speaks about.

:func:`split` cuts an :class:`~.types.Allocation` into records, :func:`join`
puts them together again (the same allocation, errors in the same order).
Each record's JSON is the parts :mod:`.codec` writes in ``allocation.json``:

- ``eip`` (one per EIP): ``{"eip": <the EIP's entry>, "accepted": {ref: ...}}``
  with the incumbency records of its policies and its gateway.  Everything an
  agent needs of that EIP: its tunnel key, gateway nodes, the policies using
  it (so the policies' EIPs), and what its source's incumbency checks need.
- ``object`` (one per policy, gateway, or other object with an error):
  ``{"ref": ..., "policy"|"gateway": <status>, "rr_last": ..., "accepted":
  ..., "errors": [{"at": i, "error": ...}]}``: what only the controller reads
  (conditions, gateway status, round-robin cursors, refusals).

A record's size is bounded by one object's, not by the cluster's: an EIP's
record grows with the policies sharing it (useNodeIP), a gateway's with the
nodes its selector matches.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterable

from sdn_egress.allocation import codec
from sdn_egress.allocation.types import Allocation, PolicyStatus
from sdn_egress.model import ObjectRef

EIP = "eip"
OBJECT = "object"
PREFIX = "sdn-egress-"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


@dataclass(frozen=True)
class Record:
    name: str  # unique among the records (the ConfigMap's name in Kubernetes)
    part: str  # EIP or OBJECT
    data: dict  # its JSON value
    gateway: str = ""  # an EIP's gateway


def _hashed(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


EIP_PREFIX = f"{PREFIX}eip-"  # every EIP record's name starts so


def eip_name(ip) -> str:
    return f"{EIP_PREFIX}v{ip.version}-" + str(ip).replace(".", "-").replace(":", "-")


def object_name(ref: ObjectRef) -> str:
    """``sdn-egress-egresspolicy-shop.web`` where the names allow (a namespace
    holds no dot, so namespace.name is unique), else a hash of the reference."""
    readable = f"{PREFIX}{ref.kind.lower()}-" + (f"{ref.namespace}.{ref.name}" if ref.namespace else ref.name)
    if _NAME.match(readable) and len(readable) <= 253 and ref.kind.isalpha():
        return readable
    return f"{PREFIX}ref-{_hashed(repr((ref.kind, ref.namespace, ref.name)))}"


def policy_ref(key: str) -> ObjectRef:
    """The reference of the policy with this key: ``namespace/name``, or
    ``name`` for a cluster policy (names hold no slash)."""
    ns, _, name = key.rpartition("/")
    return ObjectRef("EgressPolicy" if ns else "EgressClusterPolicy", ns, name)


def parse_ref(text: str) -> ObjectRef:
    """str(ObjectRef) back: ``Kind ns/name`` or ``Kind name``."""
    kind, _, rest = text.partition(" ")
    ns, _, name = rest.rpartition("/")
    return ObjectRef(kind, ns, name)


def split(alloc: Allocation) -> dict[str, Record]:
    """The records of an allocation, by name."""
    objects: dict[ObjectRef, dict[str, Any]] = {}

    def obj(ref: ObjectRef) -> dict[str, Any]:
        return objects.setdefault(ref, {"ref": {"kind": ref.kind, "namespace": ref.namespace, "name": ref.name}})

    for key, s in alloc.policies.items():
        obj(policy_ref(key))["policy"] = codec.policy_to_dict(s)
    for name, g in alloc.gateways.items():
        obj(ObjectRef("EgressGateway", "", name))["gateway"] = codec.gateway_to_dict(g)
    for (name, version), ip in alloc.rr_last.items():
        obj(ObjectRef("EgressGateway", "", name)).setdefault("rr_last", {})[f"ipv{version}"] = str(ip)
    for ref, a in alloc.accepted.items():
        obj(parse_ref(ref))["accepted"] = codec.accepted_to_dict(a)
    for i, e in enumerate(alloc.errors):
        obj(e.ref).setdefault("errors", []).append({"at": i, "error": e.to_dict()})
    out = {}
    for a in alloc.eips:
        users = [str(policy_ref(k)) for k in a.policies] + [str(ObjectRef("EgressGateway", "", a.gateway))]
        accepted = {r: codec.accepted_to_dict(alloc.accepted[r]) for r in sorted(users) if r in alloc.accepted}
        rec = Record(eip_name(a.ip), EIP, {"eip": codec.eip_to_dict(a), "accepted": accepted}, a.gateway)
        out[rec.name] = rec
    for ref, data in objects.items():
        rec = Record(object_name(ref), OBJECT, data)
        out[rec.name] = rec
    return out


NODE_LABEL = "node.sdn-egress.io/"  # + a gateway node of the EIP: the records that node may hold
POLICY_LABEL = "policy.sdn-egress.io/"  # + a policy using the EIP: the records a worker with its pods needs
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")


def node_label(node: str) -> str:
    """The label an EIP record carries for each of its gateway nodes
    (``node.sdn-egress.io/NODE``; a hash where the name would not fit a
    label's 63 characters)."""
    name = node if len(node) <= 63 and _LABEL_NAME.match(node) else f"h-{_hashed(node)}"
    return NODE_LABEL + name


def policy_label(key: str) -> str:
    """The label an EIP record carries for each policy using it:
    ``policy.sdn-egress.io/`` and a hash of the policy's key (``ns/name``
    holds a slash, and a cluster policy's name could be a namespaced one's
    ``ns.name``)."""
    return POLICY_LABEL + _hashed(key)


def selection_labels(data: dict) -> dict[str, str]:
    """The labels that select an EIP record (its JSON value) for the agents
    that need it: its gateway nodes and its policies."""
    eip = data.get("eip") if isinstance(data, dict) else None
    if not isinstance(eip, dict):
        return {}
    labels = {node_label(str(n)): "" for n in eip.get("nodes") or ()}
    labels.update({policy_label(str(k)): "" for k in eip.get("policies") or ()})
    return labels


def join(records: Iterable[tuple[str, Any]]) -> Allocation:
    """An allocation from (name, JSON value) records; raises ValueError naming
    the record and field that cannot be read.  Without object records (an
    agent's part), each policy's status holds its EIPs and gateway only."""
    r = codec._Reader()
    eips, policies, gateways, rr_last, accepted, errors = [], {}, {}, {}, {}, []
    for name, data in sorted(records, key=lambda nd: nd[0]):
        top = r.mapping(data, name, ("eip", "accepted", "ref", "policy", "gateway", "rr_last", "errors"))
        if "eip" in top:
            eips.append(codec.eip_from_dict(r, top["eip"], f"{name}.eip"))
            for ref, a in r.table(top.get("accepted"), f"{name}.accepted").items():
                accepted.setdefault(ref, codec.accepted_from_dict(r, a, f"{name}.accepted[{ref}]"))
            continue
        ref = r.mapping(top.get("ref"), f"{name}.ref", ("kind", "namespace", "name"))
        ref = ObjectRef(*(r.text(ref.get(k, ""), f"{name}.ref.{k}") for k in ("kind", "namespace", "name")))
        if "policy" in top:
            policies[ref.key] = codec.policy_from_dict(r, top["policy"], f"{name}.policy")
        if "gateway" in top:
            gateways[ref.name] = codec.gateway_from_dict(r, top["gateway"], f"{name}.gateway")
        if "rr_last" in top:
            rr_last.update(codec.rr_from_dict(r, {ref.name: top["rr_last"]}, f"{name}.rr_last"))
        if "accepted" in top:
            accepted[str(ref)] = codec.accepted_from_dict(r, top["accepted"], f"{name}.accepted")
        for j, e in enumerate(r.seq(top.get("errors"), f"{name}.errors")):
            e = r.mapping(e, f"{name}.errors[{j}]", ("at", "error"))
            errors.append((r.count(e.get("at"), f"{name}.errors[{j}].at"),
                           codec.error_from_dict(r, e.get("error"), f"{name}.errors[{j}].error")))
    eips.sort(key=lambda a: (a.ip.version, a.ip.value))
    if not policies:
        policies = _policies_of(eips)
    return Allocation(eips=tuple(eips), policies=dict(sorted(policies.items())),
                      errors=tuple(e for _, e in sorted(errors, key=lambda ie: ie[0])),
                      gateways=dict(sorted(gateways.items())), rr_last=dict(sorted(rr_last.items())),
                      accepted=dict(sorted(accepted.items())))


def _policies_of(eips) -> dict[str, PolicyStatus]:
    """Each policy's EIPs, gateway and node, from the EIPs' entries: what an
    agent's view reads of a policy's status."""
    got: dict[str, dict[str, Any]] = {}
    for a in eips:
        for key in a.policies:
            entry = got.setdefault(key, {"gateway": a.gateway, "node": None})
            entry[f"eip_v{a.ip.version}"] = a.ip
            entry["node"] = entry["node"] or a.active
    return {key: PolicyStatus(eip_v4=v.get("eip_v4"), eip_v6=v.get("eip_v6"), gateway=v["gateway"],
                              node=v["node"], ready=bool(v["node"])) for key, v in got.items()}
