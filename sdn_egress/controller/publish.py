"""Status, finalizers and Events: what the controller tells the API after a pass.

:class:`StatusPublisher` is the controller's ``publisher`` in Kubernetes mode.
For every EgressPolicy and EgressClusterPolicy it writes ``status.eip``,
``status.gateway``, ``status.node`` and the conditions (``IPAllocated``,
``Ready``; ``Accepted`` when a new version was refused), for every
EgressGateway ``status.nodes``, ``status.ipUsage`` and its conditions.  Writes
go through the ``/status`` subresource with the resourceVersion of the cached
object; on ``409 Conflict`` the object is read again and the write retried.
A write is skipped when the status is already what it should be (a condition
keeps its ``lastTransitionTime`` while its status stays).

Every EgressGateway carries the finalizer :data:`FINALIZER`, removed only when
its deletion was asked and no policy uses it any more: until then its
``InUse`` condition names the policies it waits for.

Events: ``EIPAllocated``, ``GatewayMoved`` (the active node of an EIP
changed), the failing reason of ``IPAllocated`` (``PoolExhausted``,
``NotInPool``, ...), ``Invalid`` for a refused object, and on gateways
``EIPReleased``, ``DeletionBlocked`` and ``InUseAddressRemoved``.  Each is
recorded once, when the state it reports begins.
"""
from __future__ import annotations

import copy
import datetime
import json
import logging

from sdn_egress.kube.client import read_or_none
from sdn_egress.allocation import (
    DELETION_BLOCKED,
    IN_USE,
    IN_USE_ADDRESS_REMOVED,
    IP_ALLOCATED,
    IP_NOT_ALLOCATED,
    POOL_VALID,
    READY,
    Allocation,
    Condition,
    GatewayStatus,
    PolicyStatus,
)
from sdn_egress.kube.events import NORMAL, WARNING, EventRecorder
from sdn_egress.kube.resources import BY_KIND, GATEWAYS, Resource
from sdn_egress.model import API_GROUP, ClusterState, ObjectError, ObjectRef

LOG = logging.getLogger(__name__)

FINALIZER = f"{API_GROUP}/gateway-in-use"
ACCEPTED = "Accepted"
INVALID = "Invalid"
ATTEMPTS = 5
# What the CRD lets a status hold: a condition message of 32,768 characters
# (crds.CONDITIONS); a count the API server and every JSON reader keep exact.
MAX_MESSAGE = 32768
MAX_COUNT = 2**53 - 1


def capped_message(message: str) -> str:
    """A condition message the API server takes: cut, saying how much was cut."""
    if len(message) <= MAX_MESSAGE:
        return message
    tail = f" ... ({len(message) - MAX_MESSAGE} more characters)"
    return message[:MAX_MESSAGE - len(tail) - 10] + tail


def capped_count(n: int) -> int:
    """An address count: beyond 2^53 - 1 (an IPv6 pool of a /75 or larger), that
    bound, which reads "at least this many"."""
    return min(n, MAX_COUNT)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(conditions: tuple[Condition, ...], current: list, generation) -> list[dict]:
    """Conditions as the API holds them; a condition whose status did not
    change keeps its lastTransitionTime."""
    before = {c.get("type"): c for c in current or () if isinstance(c, dict)}
    out = []
    for c in conditions:
        old = before.get(c.type) or {}
        since = old.get("lastTransitionTime") if old.get("status") == c.status else None
        item = {"type": c.type, "status": c.status, "reason": c.reason, "message": capped_message(c.message),
                "lastTransitionTime": since or _now()}
        if generation is not None:
            item["observedGeneration"] = generation
        out.append(item)
    return out


def policy_status(s: PolicyStatus | None, refused: ObjectError | None) -> tuple[dict, tuple[Condition, ...]]:
    """(status without conditions, conditions) of one policy."""
    body: dict = {}
    conditions: tuple[Condition, ...] = ()
    if s is not None:
        eip = {f"ipv{v}": str(ip) for v, ip in ((4, s.eip_v4), (6, s.eip_v6)) if ip is not None}
        if eip:
            body["eip"] = eip
        if s.gateway:
            body["gateway"] = s.gateway
        if s.node:
            body["node"] = s.node
        conditions = s.conditions
    if refused is not None:
        why = f"{refused.field}: {refused.message}"
        if s is None:
            conditions = (Condition(IP_ALLOCATED, "False", INVALID, why), Condition(READY, "False", INVALID, why))
        else:
            conditions = conditions + (Condition(ACCEPTED, "False", INVALID, why),)
    return body, conditions


def gateway_status(g: GatewayStatus | None, refused: ObjectError | None) -> tuple[dict, tuple[Condition, ...]]:
    if g is None:
        why = f"{refused.field}: {refused.message}" if refused else "not part of the cluster state"
        return {}, (Condition(READY, "False", INVALID, why),)
    body = {
        "nodes": [{"name": n.name, "ready": n.ready, "eips": [str(ip) for ip in n.eips]} for n in g.nodes],
        "ipUsage": {k: capped_count(v) for k, v in (("ipv4Total", g.ipv4_total), ("ipv4Free", g.ipv4_free),
                                                    ("ipv6Total", g.ipv6_total), ("ipv6Free", g.ipv6_free))},
    }
    conditions = g.conditions
    if refused is not None:
        conditions = conditions + (Condition(ACCEPTED, "False", INVALID, f"{refused.field}: {refused.message}"),)
    return body, conditions


def _key_of(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta.get("name", "")


def _ref_of(obj: dict) -> ObjectRef:
    meta = obj.get("metadata") or {}
    return ObjectRef(obj.get("kind", ""), meta.get("namespace") or "", meta.get("name") or "")


class StatusPublisher:
    def __init__(self, api_client, source, events: EventRecorder | None = None):
        """``source``: the :class:`~sdn_egress.source.kube.KubeSource` whose
        cached objects are written back."""
        self.api_client = api_client
        self.source = source
        self.events = events if events is not None else EventRecorder(api_client)
        self.writes = 0  # status writes that went through
        self.conflicts = 0  # 409s met (and retried)
        self.failures = 0  # objects whose status could not be written in the last pass

    # -- the pass -----------------------------------------------------------------------------------------
    def publish(self, state: ClusterState, alloc: Allocation, previous: Allocation | None) -> None:
        previous = previous or Allocation()
        refusals: dict[ObjectRef, ObjectError] = {}
        for e in state.errors:  # the source's: a refused object, or a refused new version
            refusals.setdefault(e.ref, e)
        old_errors = set(previous.errors)
        self._released(alloc, previous)  # first: a gateway may go once its finalizer does
        self.failures = 0
        for kind in ("EgressPolicy", "EgressClusterPolicy"):
            for obj in self.source.raw_items(kind):
                self._isolated(obj, self._publish_policy, BY_KIND[kind], obj, alloc, previous, refusals,
                               old_errors)
        for obj in self.source.raw_items("EgressGateway"):
            self._isolated(obj, self._publish_gateway, obj, alloc, previous, refusals, old_errors)
        if self.failures:
            LOG.warning("status: %d object(s) could not be written this pass; the others were", self.failures)

    def _isolated(self, obj: dict, publish, *args) -> None:
        """One object's status: a write the API server refuses (or any other
        failure) is logged and costs only that object, never the others."""
        try:
            publish(*args)
        except Exception as exc:  # noqa: BLE001 - one object's failure stops no other
            self.failures += 1
            LOG.warning("%s %s: status not written: %s", obj.get("kind", "object"), _key_of(obj),
                        getattr(exc, "reason", None) or exc)

    def _publish_policy(self, res: Resource, obj: dict, alloc: Allocation, previous: Allocation,
                        refusals: dict, old_errors: set) -> None:
        key, ref = _key_of(obj), _ref_of(obj)
        s, refused = alloc.policies.get(key), refusals.get(ref)
        if s is None and refused is None:
            return  # arrived after the snapshot: the next pass sees it
        body, conditions = policy_status(s, refused)
        self._write_status(res, obj, body, conditions)
        if refused is not None and refused not in old_errors:
            self.events.record(obj, WARNING, INVALID, f"{refused.field}: {refused.message}")
        if s is not None:
            self._policy_events(obj, s, previous.policies.get(key))

    def _publish_gateway(self, obj: dict, alloc: Allocation, previous: Allocation, refusals: dict,
                         old_errors: set) -> None:
        name, ref = obj["metadata"]["name"], _ref_of(obj)
        g, refused = alloc.gateways.get(name), refusals.get(ref)
        if g is not None or refused is not None:
            body, conditions = gateway_status(g, refused)
            written = self._write_status(GATEWAYS, obj, body, conditions)
            if refused is not None and refused not in old_errors:
                self.events.record(obj, WARNING, INVALID, f"{refused.field}: {refused.message}")
            if written is None:
                return  # gone
            obj = written
        self._finalize(obj, g)
        if g is not None:
            self._gateway_events(obj, g, previous.gateways.get(name))

    # -- writing --------------------------------------------------------------------------------------------
    def _custom(self):
        from kubernetes import client

        return client.CustomObjectsApi(self.api_client)

    def _get(self, res: Resource, obj: dict) -> dict | None:
        meta = obj["metadata"]
        if res.namespaced:
            return read_or_none(lambda: self._custom().get_namespaced_custom_object(
                res.group, res.version, meta["namespace"], res.plural, meta["name"], _preload_content=False))
        return read_or_none(lambda: self._custom().get_cluster_custom_object(
            res.group, res.version, res.plural, meta["name"], _preload_content=False))

    def _replace(self, res: Resource, obj: dict, status: bool) -> dict:
        meta = obj["metadata"]
        api = self._custom()
        if res.namespaced:
            call = api.replace_namespaced_custom_object_status if status else api.replace_namespaced_custom_object
            resp = call(res.group, res.version, meta["namespace"], res.plural, meta["name"], obj,
                        _preload_content=False)
        else:
            call = api.replace_cluster_custom_object_status if status else api.replace_cluster_custom_object
            resp = call(res.group, res.version, res.plural, meta["name"], obj, _preload_content=False)
        return json.loads(resp.data)

    def _update(self, res: Resource, obj: dict, change, what: str) -> tuple[bool, dict | None]:
        """Apply ``change(obj) -> bool (needed)`` and write, re-reading on
        conflict; returns (written, the object as it now is)."""
        from kubernetes.client.rest import ApiException

        for attempt in range(ATTEMPTS):
            body = copy.deepcopy(obj)
            if not change(body):
                return False, obj
            try:
                written = self._replace(res, body, status=what == "status")
                self.writes += what == "status"
                return True, written
            except ApiException as exc:
                if exc.status == 404:
                    return False, None  # deleted meanwhile: nothing to tell it
                if exc.status != 409 or attempt == ATTEMPTS - 1:
                    raise
                self.conflicts += 1
                LOG.debug("%s %s: conflict writing %s; reading it again", res.kind, _key_of(obj), what)
                obj = self._get(res, obj)
                if obj is None:
                    return False, None
        return False, obj

    def _write_status(self, res: Resource, obj: dict, body: dict, conditions: tuple[Condition, ...]
                      ) -> dict | None:
        def change(o: dict) -> bool:
            current = o.get("status") or {}
            desired = dict(body)
            desired["conditions"] = _conditions(conditions, current.get("conditions"),
                                                (o.get("metadata") or {}).get("generation"))
            if current == desired:
                return False
            o["status"] = desired
            return True

        return self._update(res, obj, change, "status")[1]

    def _finalize(self, obj: dict, g: GatewayStatus | None) -> None:
        meta = obj.get("metadata") or {}
        deleting = bool(meta.get("deletionTimestamp"))
        users = g.policies if g is not None else ()

        def change(o: dict) -> bool:
            finalizers = list((o.get("metadata") or {}).get("finalizers") or [])
            if not deleting and FINALIZER not in finalizers:
                o["metadata"]["finalizers"] = finalizers + [FINALIZER]
                return True
            if deleting and not users and FINALIZER in finalizers:
                o["metadata"]["finalizers"] = [f for f in finalizers if f != FINALIZER]
                return True
            return False

        if self._update(GATEWAYS, obj, change, "finalizers")[0] and deleting:
            LOG.info("EgressGateway %s: no policy uses it any more; deletion goes ahead", meta.get("name"))

    # -- events ---------------------------------------------------------------------------------------------
    def _policy_events(self, obj: dict, s: PolicyStatus, old: PolicyStatus | None) -> None:
        eips = [str(ip) for ip in (s.eip_v4, s.eip_v6) if ip is not None]
        old_eips = [str(ip) for ip in (old.eip_v4, old.eip_v6) if ip is not None] if old else []
        if eips and eips != old_eips:
            self.events.record(obj, NORMAL, "EIPAllocated", f"EIP {', '.join(eips)} from EgressGateway {s.gateway}"
                               + (f", active on node {s.node}" if s.node else ""))
        if old is not None and eips == old_eips and old.node and s.node and old.node != s.node:
            self.events.record(obj, NORMAL, "GatewayMoved",
                               f"EIP {', '.join(eips)}: active gateway node {old.node} -> {s.node}")
        for c in s.conditions:
            before = old.condition(c.type) if old else None
            if c.status != "True" and c.reason != IP_NOT_ALLOCATED and (
                    before is None or (before.status, before.reason) != (c.status, c.reason)):
                self.events.record(obj, WARNING, c.reason, c.message)

    def _gateway_events(self, obj: dict, g: GatewayStatus, old: GatewayStatus | None) -> None:
        for type_ in (IN_USE, POOL_VALID):
            c, before = g.condition(type_), old.condition(type_) if old else None
            if c is None or (before is not None and (before.status, before.reason) == (c.status, c.reason)):
                continue
            if c.reason in (DELETION_BLOCKED, IN_USE_ADDRESS_REMOVED):
                self.events.record(obj, WARNING, c.reason, c.message)

    def _released(self, alloc: Allocation, previous: Allocation) -> None:
        now = {a.ip for a in alloc.eips}
        for a in previous.eips:
            if a.ip in now:
                continue
            gw = self.source.raw(ObjectRef("EgressGateway", "", a.gateway))
            if gw is not None:
                self.events.record(gw, NORMAL, "EIPReleased",
                                   f"EIP {a.ip} released (was {', '.join(a.policies)})")
