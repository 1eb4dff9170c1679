"""Where the cluster state comes from.

A :class:`StateSource` hands out consistent :class:`~sdn_egress.model.ClusterState`
snapshots and says when a new one is worth taking.  :class:`ManifestDirSource`
reads a directory of manifests (standalone use: the lab, the demo, tests); a
Kubernetes API source implements the same protocol.  Cross-object checks that
every source needs live in :func:`check_policies`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Protocol

import netaddr
import yaml

from sdn_egress.manifests import (
    WHOLE_DOCUMENT,
    Object,
    UNNAMED,
    expand_lists,
    is_relevant,
    parse_object,
    quote,
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

LOG = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
POLL_INTERVAL = 0.2
# A file whose mtime is this close to the moment it was read may change again
# without its mtime moving (timestamps are coarse): compare its content too.
RACY_WINDOW_NS = 2_000_000_000
KEPT_NOTE = "; its last valid version stays in force"
STORED_NOTE = "; the value accepted before stays in force"
FILE_KEPT_NOTE = "; the last valid objects it held stay in force"
# What one manifest file may cost; beyond, the file is refused as a whole (and
# only it): a bad file must not stop the reading of the others.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DOCUMENTS = 10_000  # YAML documents in one file
MAX_DEPTH = 64  # lists and mappings nested in one another (real objects: about 12)
MAX_ALIAS_NODES = 100_000  # values YAML aliases may add, expanded, in one file


class StateSource(Protocol):
    def snapshot(self) -> ClusterState:
        """The current state, consistent in itself."""

    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True as soon as something changed
        since the last :meth:`snapshot` (or no snapshot was taken yet)."""

    def remember(self, accepted: Mapping[str, Accepted]) -> None:
        """Incumbency from the stored allocation (the controller's, not this process's memory)."""

    @property
    def synced(self) -> bool:
        """False until the source has a first answer (a Kubernetes API list)."""


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


# -- reading files ------------------------------------------------------------------------------------

class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe YAML, but a key given twice in one mapping is an error, not a
    silent overwrite."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {quote(key)}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor("tag:yaml.org,2002:map", _mapping_without_duplicates)


class FileError(Exception):
    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where = where
        self.message = message


def _json_pairs(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"found duplicate key {quote(k)}")
        out[k] = v
    return out


def load_documents(data: bytes, name: str) -> list[Any]:
    """Every document of a YAML (multi-document) or JSON file; raises
    :class:`FileError` naming the line when the file is not valid, or when it
    costs more than one file may (:data:`MAX_FILE_BYTES`,
    :data:`MAX_DOCUMENTS`, :data:`MAX_DEPTH`, :data:`MAX_ALIAS_NODES`)."""
    if len(data) > MAX_FILE_BYTES:
        raise FileError(WHOLE_DOCUMENT, f"is {len(data)} bytes long; a manifest file may hold at most "
                                        f"{MAX_FILE_BYTES} bytes: split it")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileError(WHOLE_DOCUMENT, f"not UTF-8 text (byte {exc.start})") from None
    if name.lower().endswith(".json"):
        try:
            docs = [json.loads(text, object_pairs_hook=_json_pairs)] if text.strip() else []
        except json.JSONDecodeError as exc:
            raise FileError(f"line {exc.lineno}, column {exc.colno}", f"not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise FileError(WHOLE_DOCUMENT, f"not accepted: nested more than {MAX_DEPTH} levels deep") from None
        except ValueError as exc:
            raise FileError(WHOLE_DOCUMENT, f"not valid JSON: {exc}") from None
        if docs and _depth(docs[0]) > MAX_DEPTH:
            raise FileError(WHOLE_DOCUMENT, f"not accepted: nested more than {MAX_DEPTH} levels deep")
        return docs
    try:
        _check_yaml_cost(text)
        return list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else WHOLE_DOCUMENT
        raise FileError(where, f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise FileError(WHOLE_DOCUMENT, f"not valid YAML: {exc}") from None
    except (ValueError, TypeError, OverflowError, KeyError, AttributeError, IndexError) as exc:
        # YAML's own constructors: an integer of 5,000 digits, a timestamp of
        # month 99, ... raise these rather than a YAMLError.
        raise FileError(WHOLE_DOCUMENT, f"not valid YAML: a value cannot be read ({exc})") from None
    except RecursionError:  # a guard: _check_yaml_cost bounds the nesting before this
        raise FileError(WHOLE_DOCUMENT, f"not accepted: nested more than {MAX_DEPTH} levels deep") from None


def _depth(value: Any) -> int:
    """How deep lists and mappings nest in ``value`` (a scalar: 0), without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, Mapping):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            return level
        todo.extend((child, level + 1) for child in children)
    return deepest


def _check_yaml_cost(text: str) -> None:
    """Refuse, from the YAML event stream and before anything is built, a file
    that nests too deep, holds too many documents, or whose aliases expand to
    too much (a "billion laughs" file is a few hundred bytes)."""
    loader = _StrictLoader(text)
    try:
        documents = 0
        anchors: dict[str, tuple[int, int]] = {}  # anchor -> (nodes, height) of what it names
        open_: list[list] = []  # [anchor, nodes, height] of the collections being read
        expanded = 0  # nodes added by aliases
        while loader.check_event():
            ev = loader.get_event()
            if isinstance(ev, yaml.DocumentStartEvent):
                documents += 1
                anchors = {}
                if documents > MAX_DOCUMENTS:
                    raise _cost_error(ev, f"holds more than {MAX_DOCUMENTS} documents: split it")
                continue
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                open_.append([ev.anchor, 1, 1])
                if len(open_) > MAX_DEPTH:
                    raise _cost_error(ev, f"nested more than {MAX_DEPTH} levels deep")
                continue
            if isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, nodes, height = open_.pop()
            elif isinstance(ev, yaml.ScalarEvent):
                anchor, nodes, height = ev.anchor, 1, 0
            elif isinstance(ev, yaml.AliasEvent):
                anchor = None
                nodes, height = anchors.get(ev.anchor, (1, 0))
                expanded += nodes
                if expanded > MAX_ALIAS_NODES:
                    raise _cost_error(ev, f"its aliases expand to more than {MAX_ALIAS_NODES} values")
                if len(open_) + height > MAX_DEPTH:
                    raise _cost_error(ev, f"nested more than {MAX_DEPTH} levels deep (through the alias "
                                          f"*{ev.anchor})")
            else:
                continue
            if anchor:
                anchors[anchor] = (nodes, height)
            if open_:
                parent = open_[-1]
                parent[1] += nodes
                parent[2] = max(parent[2], height + 1)
    finally:
        loader.dispose()


def _cost_error(ev, what: str) -> FileError:
    mark = ev.start_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else WHOLE_DOCUMENT
    return FileError(where, f"not accepted: {what}")


def read_manifest(path: str) -> bytes:
    """The bytes of one manifest file.  Refuses (:class:`FileError`) what is
    not a regular file (a FIFO would block the reader, ``/dev/zero`` never
    ends) and a file longer than :data:`MAX_FILE_BYTES`, without reading more
    than that.  Raises OSError when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileError(WHOLE_DOCUMENT, f"is not a regular file ({_file_type(st.st_mode)}): "
                                            "only regular files are read")
        if st.st_size > MAX_FILE_BYTES:
            raise FileError(WHOLE_DOCUMENT, f"is {st.st_size} bytes long; a manifest file may hold at most "
                                            f"{MAX_FILE_BYTES} bytes: split it")
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, min(1 << 20, MAX_FILE_BYTES + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
        if len(data) > MAX_FILE_BYTES:
            raise FileError(WHOLE_DOCUMENT, f"grew past {MAX_FILE_BYTES} bytes while read: a manifest file "
                                            f"may hold at most {MAX_FILE_BYTES} bytes")
        return data
    finally:
        os.close(fd)


def _file_type(mode: int) -> str:
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "not a regular file"


@dataclass(frozen=True)
class _Stamp:
    mtime_ns: int
    size: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> "_Stamp":
        return cls(st.st_mtime_ns, st.st_size, st.st_ino)


@dataclass
class _Seen:
    """What a snapshot read of one file."""

    stamp: _Stamp
    digest: str
    racy: bool  # modified too close to the read to trust the stamp alone


@dataclass(frozen=True)
class _Kept:
    obj: Object
    source: str  # file, document
    file: str


_KINDS = (
    (Node, "nodes"),
    (Namespace, "namespaces"),
    (Pod, "pods"),
    (EgressGateway, "gateways"),
    (EgressPolicy, "policies"),
)


class ManifestDirSource:
    """Every ``*.yaml``, ``*.yml`` and ``*.json`` file under a directory,
    recursively (hidden files and directories skipped), multi-document YAML
    and ``kind: List`` included.

    Bad input never removes or changes a valid object: a duplicate is refused
    in the later file (sorted path order); an object whose new version is
    refused keeps its last valid version (while this source lives), and so do
    the objects of a file that no longer parses.  Changes are found by polling
    (mtime, size, inode; content for files modified moments before they were
    read).
    """

    def __init__(self, path: str, extra_cluster_cidrs: Iterable[str | netaddr.IPNetwork] = (),
                 poll_interval: float = POLL_INTERVAL):
        self.path = str(path)
        self.extra_cluster_cidrs = tuple(netaddr.IPNetwork(str(c)) for c in extra_cluster_cidrs)
        self.poll_interval = poll_interval
        self._seen: dict[str, _Seen] | None = None  # None: no snapshot yet
        self._history = Assembler()

    synced = True  # the files are there or not: nothing to wait for

    def remember(self, accepted: Mapping[str, Accepted]) -> None:
        """Incumbency from the stored allocation (see :class:`Assembler`)."""
        self._history.remember(accepted)

    # -- change detection ---------------------------------------------------------------------------
    def _files(self) -> dict[str, _Stamp]:
        """Relative path -> stamp of every manifest file, now."""
        found: dict[str, _Stamp] = {}
        visited: set[tuple[int, int]] = set()
        for root, dirs, files in os.walk(self.path, followlinks=True):
            try:
                st = os.stat(root)
            except OSError:
                dirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in visited:  # a symlink loop
                dirs[:] = []
                continue
            visited.add((st.st_dev, st.st_ino))
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if name.startswith(".") or not name.lower().endswith(SUFFIXES):
                    continue
                full = os.path.join(root, name)
                try:
                    fst = os.stat(full)
                except OSError:
                    continue  # vanished, or a dangling link
                # Not only regular files: a FIFO or a device by a manifest's
                # name is reported (read_manifest refuses it), not skipped unseen.
                found[os.path.relpath(full, self.path)] = _Stamp.of(fst)
        return found

    def changed(self) -> bool:
        """One poll: has anything changed since the last snapshot?"""
        if self._seen is None:
            return True
        now = self._files()
        if now.keys() != self._seen.keys():
            return True
        for rel, stamp in now.items():
            seen = self._seen[rel]
            if stamp != seen.stamp:
                return True
            if seen.racy:
                try:
                    digest = _digest(self._read(rel))
                except (OSError, FileError):
                    return True
                if digest != seen.digest:
                    return True
                if time.time_ns() > stamp.mtime_ns + RACY_WINDOW_NS:
                    seen.racy = False
        return False

    def wait_for_change(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            if self.changed():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(self.poll_interval, remaining))

    # -- reading -------------------------------------------------------------------------------------
    def _read(self, rel: str) -> bytes:
        return read_manifest(os.path.join(self.path, rel))

    def _display(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    def snapshot(self) -> ClusterState:
        run = _Pass()
        if not os.path.isdir(self.path):
            run.errors.append(ObjectError(ObjectRef("Directory", "", self.path), WHOLE_DOCUMENT,
                                          "does not exist or is not a directory"))
        for rel, stamp in sorted(self._files().items()):
            self._load_file(run, rel, stamp)
        by_kind = self._history.finish(run)
        self._seen = run.seen
        return ClusterState(errors=tuple(run.errors), extra_cluster_cidrs=self.extra_cluster_cidrs,
                            **by_kind)

    def _load_file(self, run: "_Pass", rel: str, stamp: _Stamp) -> None:
        shown = self._display(rel)
        try:
            data = self._read(rel)
        except FileNotFoundError:
            return  # deleted since the scan: as if never seen
        except OSError as exc:
            run.seen[rel] = _Seen(stamp, "", racy=False)  # look again once it changes
            run.failed_files[shown] = len(run.errors)
            run.errors.append(ObjectError(ObjectRef("File", "", shown), WHOLE_DOCUMENT,
                                          f"cannot be read: {exc.strerror or exc}"))
            return
        except FileError as exc:
            run.seen[rel] = _Seen(stamp, "", racy=False)
            run.failed_files[shown] = len(run.errors)
            run.errors.append(ObjectError(ObjectRef("File", "", shown), exc.where, exc.message))
            return
        read_at = time.time_ns()
        run.seen[rel] = _Seen(stamp, _digest(data), racy=read_at <= stamp.mtime_ns + RACY_WINDOW_NS)
        try:
            docs = load_documents(data, rel)
        except FileError as exc:
            run.failed_files[shown] = len(run.errors)
            run.errors.append(ObjectError(ObjectRef("File", "", shown), exc.where, exc.message))
            return
        except Exception as exc:  # noqa: BLE001 - a reader bug must cost only this file
            LOG.exception("%s: cannot be read", shown)
            run.failed_files[shown] = len(run.errors)
            run.errors.append(ObjectError(ObjectRef("File", "", shown), WHOLE_DOCUMENT,
                                          f"cannot be read ({type(exc).__name__}: {exc}); this is a bug of "
                                          "sdn-egress, please report it"))
            return
        for item, source in relevant_items(docs, shown):
            run.add(item, source, shown)

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
        self.kept: dict[ObjectRef, _Kept] = {}  # the last valid version of every object
        self.accepted: dict[str, Accepted] = {}  # str(ref) -> incumbency

    def remember(self, accepted: Mapping[str, Accepted]) -> None:
        """Incumbency as the stored allocation records it (its ``accepted``)."""
        self.accepted = dict(accepted)

    def assemble(self, objects: Iterable[tuple[Any, str]],
                 extra_cluster_cidrs: Iterable[netaddr.IPNetwork] = ()) -> ClusterState:
        """The cluster state of one pass over ``(document, where)`` pairs, each
        object cited and remembered by ``where`` (an API object: its path);
        what every API source's snapshot is."""
        run = _Pass()
        for doc, where in objects:
            run.add(doc, where, where)
        by_kind = self.finish(run)
        return ClusterState(errors=tuple(run.errors), extra_cluster_cidrs=tuple(extra_cluster_cidrs), **by_kind)

    def finish(self, run: "_Pass") -> dict[str, dict[str, Any]]:
        self._settle_duplicates(run)
        self._keep_last_valid(run)
        self._refuse_immutable_changes(run)
        by_kind = self._check(run)
        self.kept = run.chosen
        self.accepted = by_kind["accepted"] = self._incumbency(run, by_kind)
        return by_kind

    def _settle_duplicates(self, run: "_Pass") -> None:
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

    def _refuse_immutable_changes(self, run: "_Pass") -> None:
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

    def _keep_last_valid(self, run: "_Pass") -> None:
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

    def _check(self, run: "_Pass") -> dict[str, dict[str, Any]]:
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
    def _incumbency(run: "_Pass", by_kind: Mapping[str, Any]) -> dict[str, Accepted]:
        """What this pass accepted, as the next one (or the next process) needs it."""
        out: dict[str, Accepted] = {}
        for gw in by_kind["gateways"].values():
            out[str(gw.ref)] = Accepted(source=run.chosen[gw.ref].file, cluster_default=gw.cluster_default)
        for p in by_kind["policies"].values():
            out[str(p.ref)] = Accepted(source=run.chosen[p.ref].file, gateway=p.gateway, eip_v4=p.eip_v4,
                                       eip_v6=p.eip_v6)
        return dict(sorted(out.items()))


@dataclass
class _Pass:
    """What one snapshot gathers."""

    seen: dict[str, _Seen] = field(default_factory=dict)
    errors: list[ObjectError] = field(default_factory=list)
    chosen: dict[ObjectRef, _Kept] = field(default_factory=dict)
    refused: dict[ObjectRef, int] = field(default_factory=dict)  # ref -> index of its error
    failed_files: dict[str, int] = field(default_factory=dict)  # file -> index of its error
    duplicates: dict[ObjectRef, list[_Kept]] = field(default_factory=dict)  # ref -> the later copies

    def add(self, doc: Any, source: str, file: str) -> None:
        try:
            obj = parse_object(doc, source)
        except InvalidObject as exc:
            error = exc.error
        except Exception as exc:  # noqa: BLE001 - a parser bug must cost only this object
            LOG.exception("%s: cannot be parsed", source)
            error = ObjectError(ref_of(doc), WHOLE_DOCUMENT,
                                f"cannot be parsed ({type(exc).__name__}: {exc}); this is a bug of "
                                "sdn-egress, please report it", source)
        else:
            error = None
        if error is not None:
            if error.ref.name != UNNAMED:
                self.refused.setdefault(error.ref, len(self.errors))
            self.errors.append(error)
            return
        if obj is None:
            return
        if obj.ref in self.chosen:  # which copy stays is the Assembler's call (incumbency)
            self.duplicates.setdefault(obj.ref, []).append(_Kept(obj, source, file))
            return
        self.chosen[obj.ref] = _Kept(obj, source, file)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
