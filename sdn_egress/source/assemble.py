"""One pass's parsed objects -> a :class:`~sdn_egress.model.ClusterState`, by the
rules every source shares (keep the last valid version, incumbency, the
cross-object checks)."""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import netaddr

from sdn_egress.model.manifests import (
    UNNAMED,
    WHOLE_DOCUMENT,
    Object,
    expand_lists,
    is_relevant,
    parse_object,
    ref_of,
)
from sdn_egress.model import (
    Accepted,
    ClusterState,
    EgressGateway,
    EgressPolicy,
    InvalidObject,
    Namespace,
    Node,
    ObjectError,
    ObjectRef,
    Pod,
)
from sdn_egress.source.checks import KEPT_NOTE, check_gateways, check_policies, check_update

LOG = logging.getLogger(__name__)

STORED_NOTE = "; the value accepted before stays in force"
FILE_KEPT_NOTE = "; the last valid objects it held stay in force"

_KINDS = (
    (Node, "nodes"),
    (Namespace, "namespaces"),
    (Pod, "pods"),
    (EgressGateway, "gateways"),
    (EgressPolicy, "policies"),
)


@dataclass(frozen=True)
class Stamp:
    mtime_ns: int
    size: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> "Stamp":
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class Seen:
    """What a snapshot read of one file."""

    stamp: Stamp
    digest: str
    racy: bool  # modified too close to the read to trust the stamp alone


@dataclass(frozen=True)
class Kept:
    obj: Object
    source: str  # file, document
    file: str



def relevant_items(docs: list, name: str):
    """(object, where) for every object of ours in a file's documents, List
    kinds expanded; ``where`` names the file, the document and the item."""
    for n, doc in enumerate(docs, 1):
        if doc is None:
            continue
        where = f"{name}, document {n}" if len(docs) > 1 else name
        items = list(expand_lists(doc))
        for m, item in enumerate(items, 1):
            if is_relevant(item):
                yield item, (where if items == [doc] else f"{where}, item {m}")


class Assembler:
    """One pass's parsed objects -> the parts of a :class:`ClusterState`, by
    the rules every source shares: a refused new version (or one that changes
    an immutable field) keeps the last valid version, as do the objects of a
    file that no longer parses; then the cross-object checks.

    Incumbency (which of two duplicates is the newcomer, who holds a claimed
    explicit EIP, what an immutable field was, which gateway is the cluster
    default) is decided by :attr:`accepted`: what the last pass accepted, or,
    in a new process, what the stored allocation recorded (:meth:`remember`),
    never by the order in which objects happen to be read.  So a restart, or a
    new leader, changes nothing."""

    def __init__(self) -> None:
        self.kept: dict[ObjectRef, Kept] = {}  # the last valid version of every object
        self.accepted: dict[str, Accepted] = {}  # str(ref) -> incumbency
        self._remembered: tuple = (None, None)  # (the mapping last remembered, the copy made of it)

    def remember(self, accepted: Mapping[str, Accepted]) -> None:
        """Incumbency as the stored allocation records it (its ``accepted``).
        The same mapping again, while :attr:`accepted` is still the copy made
        of it, changes nothing and keeps that copy (a caller that compares
        it by identity sees it unchanged)."""
        if self._remembered[0] is accepted and self._remembered[1] is self.accepted:
            return
        self.accepted = dict(accepted)
        self._remembered = (accepted, self.accepted)

    def assemble(self, objects: Iterable[tuple[Any, str]],
                 extra_cluster_cidrs: Iterable[netaddr.IPNetwork] = ()) -> ClusterState:
        """The cluster state of one pass over ``(document, where)`` pairs, each
        object cited and remembered by ``where`` (an API object: its path);
        what every API source's snapshot is."""
        run = Pass()
        for doc, where in objects:
            run.add(doc, where, where)
        by_kind = self.finish(run)
        return ClusterState(errors=tuple(run.errors), extra_cluster_cidrs=tuple(extra_cluster_cidrs), **by_kind)

    def finish(self, run: "Pass") -> dict[str, dict[str, Any]]:
        self._settle_duplicates(run)
        self._keep_last_valid(run)
        self._refuse_immutable_changes(run)
        by_kind = self._check(run)
        self.kept = run.chosen
        self.accepted = by_kind["accepted"] = self._incumbency(run, by_kind)
        return by_kind

    def _settle_duplicates(self, run: "Pass") -> None:
        """Of two objects of one kind, namespace and name, the one from the
        file (or API path) it was accepted from stays; the other is refused.
        Neither known: the first in path order."""
        for ref, others in run.duplicates.items():
            candidates = [run.chosen[ref], *others]
            known = self.kept.get(ref)
            home = known.file if known is not None else getattr(self.accepted.get(str(ref)), "source", None)
            winner = next((c for c in candidates if c.file == home), candidates[0])
            run.chosen[ref] = winner
            for c in candidates:
                if c is not winner:
                    run.errors.append(ObjectError(ref, "metadata.name",
                                                  f"duplicate: {ref} is already defined in {winner.source}",
                                                  c.source))

    def _refuse_immutable_changes(self, run: "Pass") -> None:
        for ref, new in list(run.chosen.items()):
            old = self.kept.get(ref)
            if old is not None:
                if old is new:
                    continue
                err = check_update(old.obj, new.obj, new.source)
                if err is not None:
                    run.errors.append(replace(err, message=err.message + KEPT_NOTE))
                    run.chosen[ref] = old
                continue
            # A new process: the last version is not known, what was accepted of it is.
            record = self.accepted.get(str(ref))
            err = check_update(record, new.obj, new.source) if record is not None else None
            if err is not None:
                p = new.obj
                pinned = replace(p, gateway=record.gateway or p.gateway, eip_v4=record.eip_v4 or p.eip_v4,
                                 eip_v6=record.eip_v6 or p.eip_v6)
                if pinned.eip_v4 or pinned.eip_v6:
                    pinned = replace(pinned, use_node_ip=False)
                run.errors.append(replace(err, message=err.message + STORED_NOTE))
                run.chosen[ref] = replace(new, obj=pinned)

    def _keep_last_valid(self, run: "Pass") -> None:
        """A refused new version, or a file that no longer parses, keeps the
        last valid objects."""
        for ref, i in run.refused.items():
            if ref not in run.chosen and ref in self.kept:
                run.chosen[ref] = self.kept[ref]
                run.errors[i] = replace(run.errors[i], message=run.errors[i].message + KEPT_NOTE)
        for shown, i in run.failed_files.items():
            kept = [ref for ref, k in self.kept.items() if k.file == shown and ref not in run.chosen]
            for ref in kept:
                run.chosen[ref] = self.kept[ref]
            if kept:
                run.errors[i] = replace(run.errors[i], message=run.errors[i].message + FILE_KEPT_NOTE)

    def _check(self, run: "Pass") -> dict[str, dict[str, Any]]:
        """Sort the objects by kind and run the cross-object checks."""
        by_kind: dict[str, dict[str, Any]] = {attr: {} for _, attr in _KINDS}
        for ref, kept in sorted(run.chosen.items(), key=lambda rk: rk[0]):
            for cls, attr in _KINDS:
                if isinstance(kept.obj, cls):
                    by_kind[attr][ref.key] = kept.obj
        default = next((name for name, gw in by_kind["gateways"].items()
                        if getattr(self.accepted.get(str(gw.ref)), "cluster_default", False)), None)
        gateways, errors = check_gateways(
            by_kind["gateways"], {ref.key: k.source for ref, k in run.chosen.items()
                                  if isinstance(k.obj, EgressGateway)}, incumbent=default)
        run.errors.extend(errors)
        by_kind["gateways"] = gateways
        candidates = by_kind["policies"]
        fallbacks = {ref.key: (k.obj, k.source) for ref, k in self.kept.items()
                     if isinstance(k.obj, EgressPolicy)}
        incumbents = {p.key: self.accepted[str(p.ref)] for p in candidates.values()
                      if str(p.ref) in self.accepted}
        policies, errors = check_policies(
            by_kind["gateways"], [(p, run.chosen[p.ref].source) for p in candidates.values()],
            incumbents=incumbents, fallbacks=fallbacks,
            namespace_labels=ClusterState(namespaces=by_kind["namespaces"]).namespace_labels)
        run.errors.extend(errors)
        for key, policy in policies.items():
            if policy is not candidates.get(key):  # a last valid version stayed
                run.chosen[policy.ref] = self.kept[policy.ref]
        for key in set(candidates) - set(policies):
            run.chosen.pop(candidates[key].ref, None)
        by_kind["policies"] = dict(sorted(policies.items()))
        return by_kind

    @staticmethod
    def _incumbency(run: "Pass", by_kind: Mapping[str, Any]) -> dict[str, Accepted]:
        """What this pass accepted, as the next one (or the next process) needs it."""
        out: dict[str, Accepted] = {}
        for gw in by_kind["gateways"].values():
            out[str(gw.ref)] = Accepted(source=run.chosen[gw.ref].file, cluster_default=gw.cluster_default)
        for p in by_kind["policies"].values():
            out[str(p.ref)] = Accepted(source=run.chosen[p.ref].file, gateway=p.gateway, eip_v4=p.eip_v4,
                                       eip_v6=p.eip_v6)
        return dict(sorted(out.items()))


def parse_guarded(doc: Any, source: str) -> tuple[Object | None, ObjectError | None]:
    """``(object, None)`` or ``(None, its error)``: whatever goes wrong in the
    parser is this object's error, never the pass's (a parser bug included)."""
    try:
        return parse_object(doc, source), None
    except InvalidObject as exc:
        return None, exc.error
    except Exception as exc:  # noqa: BLE001 - a parser bug must cost only this object
        LOG.exception("%s: cannot be parsed", source)
        return None, ObjectError(ref_of(doc), WHOLE_DOCUMENT,
                                 f"cannot be parsed ({type(exc).__name__}: {exc}); this is a bug of "
                                 "sdn-egress, please report it", source)


@dataclass
class Pass:
    """What one snapshot gathers."""

    seen: dict[str, Seen] = field(default_factory=dict)
    errors: list[ObjectError] = field(default_factory=list)
    chosen: dict[ObjectRef, Kept] = field(default_factory=dict)
    refused: dict[ObjectRef, int] = field(default_factory=dict)  # ref -> index of its error
    failed_files: dict[str, int] = field(default_factory=dict)  # file -> index of its error
    duplicates: dict[ObjectRef, list[Kept]] = field(default_factory=dict)  # ref -> the later copies

    def add(self, doc: Any, source: str, file: str) -> None:
        obj, error = parse_guarded(doc, source)
        if error is not None:
            if error.ref.name != UNNAMED:
                self.refused.setdefault(error.ref, len(self.errors))
            self.errors.append(error)
            return
        if obj is None:
            return
        if obj.ref in self.chosen:  # which copy stays is the Assembler's call (incumbency)
            self.duplicates.setdefault(obj.ref, []).append(Kept(obj, source, file))
            return
        self.chosen[obj.ref] = Kept(obj, source, file)


def content_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
