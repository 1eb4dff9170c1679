"""The standalone source: a directory of manifests, read strictly and cheaply
(bounded files), watched by the files' stamps."""
from __future__ import annotations

import json
import logging
import os
import stat
import time
from typing import Any, Iterable, Mapping

import netaddr
import yaml

from sdn_egress.model.manifests import (
    WHOLE_DOCUMENT,
    quote,
)
from sdn_egress.model import (
    Accepted,
    ClusterState,
    ObjectError,
    ObjectRef,
)
from sdn_egress.source.assemble import Assembler, Pass, Seen, Stamp, content_digest, relevant_items

LOG = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
POLL_INTERVAL = 0.2
# A file whose mtime is this close to the moment it was read may change again
# without its mtime moving (timestamps are coarse): compare its content too.
RACY_WINDOW_NS = 2_000_000_000
# What one manifest file may cost; beyond, the file is refused as a whole (and
# only it): a bad file must not stop the reading of the others.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DOCUMENTS = 10_000  # YAML documents in one file
MAX_DEPTH = 64  # lists and mappings nested in one another (real objects: about 12)
MAX_ALIAS_NODES = 100_000  # values YAML aliases may add, expanded, in one file




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
        self._seen: dict[str, Seen] | None = None  # None: no snapshot yet
        self._history = Assembler()

    synced = True  # the files are there or not: nothing to wait for

    def remember(self, accepted: Mapping[str, Accepted]) -> None:
        """Incumbency from the stored allocation (see :class:`Assembler`)."""
        self._history.remember(accepted)

    # -- change detection ---------------------------------------------------------------------------
    def _files(self) -> dict[str, Stamp]:
        """Relative path -> stamp of every manifest file, now."""
        found: dict[str, Stamp] = {}
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
                found[os.path.relpath(full, self.path)] = Stamp.of(fst)
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
                    digest = content_digest(self._read(rel))
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
        run = Pass()
        if not os.path.isdir(self.path):
            run.errors.append(ObjectError(ObjectRef("Directory", "", self.path), WHOLE_DOCUMENT,
                                          "does not exist or is not a directory"))
        for rel, stamp in sorted(self._files().items()):
            self._load_file(run, rel, stamp)
        by_kind = self._history.finish(run)
        self._seen = run.seen
        return ClusterState(errors=tuple(run.errors), extra_cluster_cidrs=self.extra_cluster_cidrs,
                            **by_kind)

    def _load_file(self, run: "Pass", rel: str, stamp: Stamp) -> None:
        shown = self._display(rel)
        try:
            data = self._read(rel)
        except FileNotFoundError:
            return  # deleted since the scan: as if never seen
        except OSError as exc:
            run.seen[rel] = Seen(stamp, "", racy=False)  # look again once it changes
            run.failed_files[shown] = len(run.errors)
            run.errors.append(ObjectError(ObjectRef("File", "", shown), WHOLE_DOCUMENT,
                                          f"cannot be read: {exc.strerror or exc}"))
            return
        except FileError as exc:
            run.seen[rel] = Seen(stamp, "", racy=False)
            run.failed_files[shown] = len(run.errors)
            run.errors.append(ObjectError(ObjectRef("File", "", shown), exc.where, exc.message))
            return
        read_at = time.time_ns()
        run.seen[rel] = Seen(stamp, content_digest(data), racy=read_at <= stamp.mtime_ns + RACY_WINDOW_NS)
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

