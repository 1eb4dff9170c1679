"""The cluster state from the Kubernetes API: a :class:`~sdn_egress.source.StateSource`.

One :class:`~sdn_egress.kube.informer.Informer` per kind (Nodes, Namespaces,
Pods, EgressGateways, EgressPolicies, EgressClusterPolicies) keeps a cache,
trimmed on arrival to the fields the model reads
(:data:`~sdn_egress.kube.resources.TRIMS`).  An agent's source (``node=``)
lists and watches only its own node's pods (field selector
``spec.nodeName``); the controller's watches no pod at all
(:data:`~sdn_egress.kube.resources.CONTROLLER_WATCHED`).

A snapshot parses with the same parsers and the same rules as the manifest
directory (:class:`sdn_egress.source.Assembler`): an invalid object is an
:class:`~sdn_egress.model.ObjectError` citing its API path, a refused new
version (or one changing an immutable field) keeps the last valid one.  It is
incremental: each object is parsed once per version (:class:`_Parsed`), an
informer whose cache did not move is not looked at, and the cross-object
checks (namespaces, gateways, policies) run only when one of those changed;
nodes and pods take part in none, their last valid versions are kept here.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Iterable

import netaddr

from sdn_egress.kube.informer import Changed, Informer
from sdn_egress.kube.resources import PODS, SERVICE_CIDRS, TRIMS, WATCHED, Resource
from sdn_egress.model import ClusterState, ObjectError, ObjectRef
from sdn_egress.model.manifests import UNNAMED
from sdn_egress.source.assemble import Assembler, Kept, Pass, parse_guarded
from sdn_egress.source.checks import KEPT_NOTE

LOG = logging.getLogger(__name__)


class KubeSource:
    """``extra_cluster_cidrs``: configured ranges never steered.  The service
    CIDRs are also detected where the cluster serves ServiceCIDR objects
    (``networking.k8s.io/v1``, Kubernetes 1.33+): their ``spec.cidrs`` join the
    configured ones (``detect_service_cidrs=False``: configuration only)."""

    def __init__(self, api_client, extra_cluster_cidrs: Iterable[str | netaddr.IPNetwork] = (),
                 resources: Iterable[Resource] = WATCHED, watch_timeout: int | None = None,
                 backoff_max: float | None = None, detect_service_cidrs: bool = True,
                 node: str | None = None):
        """``node``: an agent's node; its source lists and watches only that
        node's pods."""
        self.api_client = api_client
        self.extra_cluster_cidrs = tuple(netaddr.IPNetwork(str(c)) for c in extra_cluster_cidrs)
        self._changed = Changed()
        self._changed.set()  # no snapshot taken yet
        kwargs = {k: v for k, v in (("watch_timeout", watch_timeout), ("backoff_max", backoff_max)) if v}
        self.informers = {
            r.kind: Informer(api_client, r, on_change=self._changed.set, trim=TRIMS.get(r.kind),
                             field_selector=f"spec.nodeName={node}" if node and r == PODS else None, **kwargs)
            for r in resources}
        self._parsed = {kind: _Parsed(inf.res) for kind, inf in self.informers.items()}
        self._checked: dict | None = None  # the Assembler's last result (namespaces, gateways, policies)
        self._checked_with: dict | None = None  # the incumbency it started from
        self._compared: tuple | None = None  # (incumbency, _checked_with, equal) as last compared
        self.service_cidr_informer = (
            Informer(api_client, SERVICE_CIDRS, on_change=self._changed.set, optional=True, **kwargs)
            if detect_service_cidrs else None)
        self._history = Assembler()
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------
    def _all(self) -> list[Informer]:
        return list(self.informers.values()) + [i for i in (self.service_cidr_informer,) if i is not None]

    def start(self) -> "KubeSource":
        for inf in self._all():
            inf.start()
        return self

    def stop(self) -> None:
        for inf in self._all():
            inf.stop()

    @property
    def synced(self) -> bool:
        """Every informer has listed once (before that, a snapshot would miss objects)."""
        return all(inf.synced.is_set() for inf in self._all())

    def wait_synced(self, timeout: float | None = None, stop: threading.Event | None = None) -> bool:
        """Block until every informer has listed once (or ``timeout``, or ``stop``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for inf in self._all():
            while not inf.synced.wait(0.1):
                if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline):
                    return False
        return True

    def remember(self, accepted) -> None:
        """Incumbency from the stored allocation (see :class:`sdn_egress.source.Assembler`)."""
        with self._lock:
            self._history.remember(accepted)

    # -- StateSource --------------------------------------------------------------------------------------
    def wait_for_change(self, timeout: float) -> bool:
        return self._changed.wait(max(timeout, 0.0))

    def on_change(self, fn) -> None:
        """Call ``fn`` (from an informer's thread) at every change."""
        self._changed.listen(fn)

    def snapshot(self) -> ClusterState:
        with self._lock:
            self._changed.clear()  # before reading: a change while we read is seen next time
            moved = {kind for kind, inf in self.informers.items() if self._parsed[kind].update(inf)}
            checked = self._check(moved)
            errors: list[ObjectError] = []
            parts: dict = {}
            # The errors in the order a whole pass gives them: parse errors by
            # kind (as WATCHED reads them), then the cross-object checks.
            for kind, attr in (("Node", "nodes"), ("Namespace", None), ("Pod", "pods")):
                if kind not in self._parsed:
                    continue
                if attr is None:
                    errors.extend(checked["errors"][:checked["namespace_errors"]])
                    continue
                parts[attr], kind_errors = self._parsed[kind].result()
                errors.extend(kind_errors)
            errors.extend(checked["errors"][checked["namespace_errors"]:])
            extra = tuple(netaddr.cidr_merge(list(self.extra_cluster_cidrs) + list(self.service_cidrs())))
            return ClusterState(errors=tuple(errors), extra_cluster_cidrs=extra, **parts,
                                **{k: checked["by_kind"][k] for k in ("namespaces", "gateways", "policies",
                                                                        "accepted")})

    def _check(self, moved: set[str]) -> dict:
        """Namespaces, gateways and policies through the Assembler's rules
        (last valid versions, immutable fields, the cross-object checks):
        again only when one of them, or the incumbency, changed."""
        kinds = [k for k in ("Namespace", "EgressGateway", "EgressPolicy", "EgressClusterPolicy")
                 if k in self._parsed]
        if self._checked is not None and not moved.intersection(kinds) and self._same_incumbency():
            return self._checked
        run = Pass()
        namespace_errors = 0
        for kind in kinds:
            self._parsed[kind].feed(run)
            if kind == "Namespace":
                namespace_errors = len(run.errors)
        by_kind = self._history.finish(run)
        self._checked_with = self._history.accepted
        self._checked = {"by_kind": by_kind, "errors": tuple(run.errors), "namespace_errors": namespace_errors}
        return self._checked

    def _same_incumbency(self) -> bool:
        """Whether the incumbency is the one the last check started from;
        compared once per pair of mappings (neither is changed in place:
        each is replaced), not object by object at every snapshot."""
        pair = (self._history.accepted, self._checked_with)
        last = self._compared
        if last is None or last[0] is not pair[0] or last[1] is not pair[1]:
            last = self._compared = (*pair, pair[0] == pair[1])
        return last[2]

    def service_cidrs(self) -> list[netaddr.IPNetwork]:
        """The CIDRs of the cluster's ServiceCIDR objects (none where it serves none)."""
        inf = self.service_cidr_informer
        return service_cidrs_of(inf.items() if inf is not None else [])

    # -- raw objects, for status writers -----------------------------------------------------------------
    def raw(self, ref: ObjectRef) -> dict | None:
        inf = self.informers.get(ref.kind)
        return inf.get(ref.name, ref.namespace) if inf is not None else None

    def raw_items(self, kind: str) -> list[dict]:
        inf = self.informers.get(kind)
        return inf.items() if inf is not None else []


def assemble(history: Assembler, objects: Iterable[tuple[Resource, Iterable[dict]]],
             extra_cluster_cidrs: Iterable[netaddr.IPNetwork] = ()) -> ClusterState:
    """A snapshot of API objects (per resource, its objects), each cited by its
    API path, by ``history``'s rules (its last valid versions and incumbency);
    ``extra_cluster_cidrs`` merged."""
    def cited():
        for res, items in objects:
            for obj in items:
                meta = obj.get("metadata") or {}
                yield obj, res.path(meta.get("namespace") or "", str(meta.get("name") or ""))
    return history.assemble(cited(), netaddr.cidr_merge(list(extra_cluster_cidrs)))


def service_cidrs_of(objects: Iterable[dict]) -> list[netaddr.IPNetwork]:
    """``spec.cidrs`` of ServiceCIDR objects; a malformed entry is logged and skipped."""
    out = []
    for obj in objects:
        for cidr in ((obj.get("spec") or {}).get("cidrs") or []):
            try:
                out.append(netaddr.IPNetwork(str(cidr)))
            except (netaddr.AddrFormatError, ValueError, TypeError):
                LOG.warning("ServiceCIDR %s: spec.cidrs: %r is not a CIDR; ignored",
                            (obj.get("metadata") or {}).get("name"), cidr)
    return out


class _Entry:
    """One object of an informer's cache, parsed (once per version)."""

    __slots__ = ("raw", "parsed", "error", "chosen", "chosen_error")

    def __init__(self, raw: dict, parsed: Kept | None, error: ObjectError | None, last: "_Entry | None"):
        self.raw, self.parsed, self.error = raw, parsed, error
        # What a pass takes of it (nodes, pods): the parsed object, or, for a
        # refused new version, the last valid one (and the error says so).
        self.chosen, self.chosen_error = parsed, error
        kept = last.chosen if last is not None else None
        if error is not None and kept is not None and error.ref == kept.obj.ref:
            self.chosen = kept
            self.chosen_error = dataclasses.replace(error, message=error.message + KEPT_NOTE)


class _Parsed:
    """An informer's objects as model objects, by cache key.  An object is
    parsed again only when its raw version changed (a new dict, or a relist's
    copy of another resourceVersion)."""

    def __init__(self, res: Resource):
        self.res = res
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.generation: int | None = None
        self._result: tuple[dict, list[ObjectError]] | None = None

    def update(self, inf: Informer) -> bool:
        """Catch up with the informer's cache; whether anything moved."""
        generation = inf.generation  # before reading: a change while we read is seen next time
        if generation == self.generation:
            return False
        entries = {}
        for key, raw in inf.items_by_key():
            old = self.entries.get(key)
            entries[key] = old if old is not None and _same(old.raw, raw) else self._parse(key, raw, old)
        self.entries, self.generation, self._result = entries, generation, None
        return True

    def _parse(self, key: tuple[str, str], raw: dict, last: _Entry | None) -> _Entry:
        path = self.res.path(key[0], str(key[1]))
        obj, error = parse_guarded(raw, path)
        parsed = Kept(obj, path, path) if obj is not None else None
        return _Entry(raw, parsed, error, last)

    def feed(self, run: Pass) -> None:
        """The parsed objects into an Assembler's pass (as ``Pass.add`` would)."""
        for entry in self.entries.values():
            if entry.error is not None:
                if entry.error.ref.name != UNNAMED:
                    run.refused.setdefault(entry.error.ref, len(run.errors))
                run.errors.append(entry.error)
            elif entry.parsed is not None:
                ref = entry.parsed.obj.ref
                if ref in run.chosen:
                    run.duplicates.setdefault(ref, []).append(entry.parsed)
                else:
                    run.chosen[ref] = entry.parsed

    def result(self) -> tuple[dict, list[ObjectError]]:
        """(key -> object in ref order, errors in cache order): for the kinds
        no cross-object check reads (nodes, pods).  The same dict while the
        cache did not move (so a pass tells "the same nodes" by one pointer):
        it is not to be changed."""
        if self._result is None:
            chosen = sorted((e.chosen.obj for e in self.entries.values() if e.chosen is not None),
                            key=lambda o: (o.ref.namespace, o.ref.name))
            errors = [e.chosen_error for e in self.entries.values() if e.chosen_error is not None]
            self._result = ({o.ref.key: o for o in chosen}, errors)
        return self._result


def _same(old: dict, new: dict) -> bool:
    """The same version of an object: the same dict, or one of the same
    (non-empty) resourceVersion."""
    if old is new:
        return True
    rv = (old.get("metadata") or {}).get("resourceVersion") if isinstance(old.get("metadata"), dict) else None
    return bool(rv) and isinstance(new.get("metadata"), dict) and new["metadata"].get("resourceVersion") == rv \
        and old["metadata"].get("uid") == new["metadata"].get("uid")

