"""Cross-object checks every source applies (policies against gateways, gateways
against each other, immutable fields on update)."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable, Iterable, Mapping

import netaddr

from sdn_egress.model.manifests import (
    Object,
    quote,
)
from sdn_egress.model import (
    Accepted,
    EgressGateway,
    EgressPolicy,
    ObjectError,
)

LOG = logging.getLogger(__name__)

KEPT_NOTE = "; its last valid version stays in force"

# -- cross-object checks ----------------------------------------------------------------------------

def check_policies(
    gateways: Mapping[str, EgressGateway],
    policies: Iterable[tuple[EgressPolicy, str]],
    incumbents: Mapping[str, EgressPolicy | Accepted] | None = None,
    fallbacks: Mapping[str, tuple[EgressPolicy, str]] | None = None,
    namespace_labels: Callable[[str], Mapping[str, str]] | None = None,
) -> tuple[dict[str, EgressPolicy], list[ObjectError]]:
    """Checks that span objects; a policy that fails one is dropped alone.

    ``policies`` are (policy, source) pairs.  A policy that names a gateway
    must name an existing one, and its explicit EIPs must lie in that
    gateway's pool (and, in a dual-stack gateway, pair with each other).  An
    explicit EIP may be claimed by one policy only: when two claim one, the
    one that already held the claim in ``incumbents`` (the last accepted
    versions) keeps it; otherwise the first by key.  ``fallbacks`` are last
    valid versions to keep, in place of a refused new version, when they still
    pass.  A namespaced policy that names a gateway whose namespaceSelector
    does not match its namespace (``namespace_labels``) claims nothing, so it
    cannot stand in anyone's way.  A policy that names no gateway is checked against its default
    gateway by the allocation, which resolves it.  Returns the accepted
    policies by key and the errors.
    """
    incumbents = incumbents or {}
    fallbacks = fallbacks or {}

    def held_claim(p: EgressPolicy) -> bool:
        old = incumbents.get(p.key)
        return old is not None and any(
            ip is not None and ip == old_ip
            for ip, old_ip in ((p.eip_v4, old.eip_v4), (p.eip_v6, old.eip_v6)))

    def allowed(p: EgressPolicy) -> bool:
        """A namespaced policy of a gateway that does not serve its namespace
        claims nothing (the allocation refuses it: NamespaceNotAllowed)."""
        gw = gateways.get(p.gateway) if p.gateway else None
        return (gw is None or p.cluster or namespace_labels is None
                or gw.serves_namespace(namespace_labels(p.namespace)))

    ordered = sorted(policies, key=lambda ps: (not held_claim(ps[0]), ps[0].key))
    accepted: dict[str, EgressPolicy] = {}
    claims: dict[netaddr.IPAddress, EgressPolicy] = {}
    errors: list[ObjectError] = []

    def problem(p: EgressPolicy, source: str) -> ObjectError | None:
        gw = gateways.get(p.gateway) if p.gateway else None
        if p.gateway and gw is None:
            return ObjectError(p.ref, "spec.egressGatewayName",
                               f"no EgressGateway named {quote(p.gateway)}", source)
        for version, ip in ((4, p.eip_v4), (6, p.eip_v6)):
            if ip is None:
                continue
            path = f"spec.egressIP.ipv{version}"
            if gw is not None and not gw.in_pool(ip):
                return ObjectError(p.ref, path, f"{quote(str(ip))} is not in the pool of EgressGateway "
                                                f"{gw.name} ({gw.pool_text(version)})", source)
            holder = claims.get(ip)
            if holder is not None and holder.key != p.key and allowed(p):
                return ObjectError(p.ref, path, f"{quote(str(ip))} is already the egress IP of {holder.ref}",
                                   source)
        if gw is not None and gw.dual_stack and p.eip_v4 and p.eip_v6 and gw.pair_of(p.eip_v4) != p.eip_v6:
            return ObjectError(p.ref, "spec.egressIP.ipv6",
                               f"{quote(str(p.eip_v6))} does not pair with {p.eip_v4} in EgressGateway "
                               f"{gw.name}: {p.eip_v4} pairs with {gw.pair_of(p.eip_v4)} (the n-th IPv4 "
                               "address of the pool pairs with the n-th IPv6 address); give that one, "
                               "or only one of the two", source)
        return None

    for policy, source in ordered:
        err = problem(policy, source)
        chosen = policy if err is None else None
        if err is not None:
            old = fallbacks.get(policy.key)
            if old is not None and old[0] != policy and problem(*old) is None:
                chosen = old[0]
                err = replace(err, message=err.message + KEPT_NOTE)
            errors.append(err)
        if chosen is not None:
            accepted[chosen.key] = chosen
            for ip in (chosen.eip_v4, chosen.eip_v6):
                if ip is not None and allowed(chosen):
                    claims[ip] = chosen
    return accepted, errors


def check_gateways(gateways: Mapping[str, EgressGateway],
                   sources: Mapping[str, str] | None = None, incumbent: str | None = None
                   ) -> tuple[dict[str, EgressGateway], list[ObjectError]]:
    """Only one gateway may be the cluster default: the ``incumbent`` (the one
    that already was) while it still asks to be, else the first by name; the
    others lose the flag (with an error)."""
    sources = sources or {}
    out: dict[str, EgressGateway] = {}
    errors: list[ObjectError] = []
    default = incumbent if incumbent in gateways and gateways[incumbent].cluster_default else None
    for name, gw in sorted(gateways.items()):
        if name == default:
            out[name] = gw
            continue
        if gw.cluster_default:
            if default is None:
                default = name
            else:
                errors.append(ObjectError(gw.ref, "spec.clusterDefault",
                                          f"EgressGateway {default} is already the cluster default; only "
                                          "one gateway may be (this one is not)", sources.get(name, "")))
                gw = replace(gw, cluster_default=False)
        out[name] = gw
    return out, errors


def check_update(old: Object | Accepted, new: Object, source: str = "") -> ObjectError | None:
    """Fields that may not change once set: a policy's explicit EIPs and the
    gateway it names.  (Kubernetes refuses such an update by the CRD's CEL
    rules; the sources refuse it too, so the manifest directory behaves alike.)
    ``old``: the last accepted version, or what the stored allocation
    recorded of it (:class:`~sdn_egress.model.Accepted`)."""
    if not (isinstance(old, (EgressPolicy, Accepted)) and isinstance(new, EgressPolicy)):
        return None
    for path, before, after in (("spec.egressGatewayName", old.gateway, new.gateway),
                                ("spec.egressIP.ipv4", old.eip_v4, new.eip_v4),
                                ("spec.egressIP.ipv6", old.eip_v6, new.eip_v6)):
        if before and after != before:
            return ObjectError(new.ref, path, f"is immutable once set (it is {quote(str(before))}): delete "
                                              f"the {new.kind} and create it anew to change it", source)
    return None


