"""The allocation in Kubernetes: one ConfigMap per record (:mod:`.records`),
in force by generations (:mod:`.generations`); the agents read it through
:mod:`.reader_kube`.

Every EIP has its ConfigMap ``sdn-egress-eip-v4-192-0-2-200`` (label
``sdn-egress.io/allocation-record=eip``, and labels naming its gateway nodes
and its policies: what the agents select), and every
policy, gateway or other object the allocation speaks about has one
``sdn-egress-egresspolicy-shop.web`` (``=object``: the controller's alone),
each under key ``record.json`` in the controller's namespace.  A pass writes
only the records that changed (each with the resourceVersion it read: a stale
one, read the records again and retry) and deletes those that went; a new
leader lists them and starts from them, so EIPs stay where they were.

ConfigMap ``sdn-egress-allocation`` keeps key ``moves.json``, the planned
moves asked for (``sdn-egress move --kubeconfig``: EIP -> node) until the
controller sees them done.  It held the whole allocation before
(``allocation.json``, ``errors.json``): while that document is there it is the
truth (an upgrade: the controller starts from it, writes the records, then
removes the two keys, so no EIP changes), and agents read it until then.
"""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from sdn_egress.kube.client import read_or_none
from sdn_egress.allocation import codec, generations, records
from sdn_egress.allocation.generations import HEAD, KEY, in_force, next_generation, record_data, record_generation
from sdn_egress.allocation.store_file import FileAllocationStore
from sdn_egress.allocation.types import Allocation

LOG = logging.getLogger(__name__)

CONFIGMAP = "sdn-egress-allocation"  # planned moves; before: the whole allocation
RECORD_LABEL = "sdn-egress.io/allocation-record"
GATEWAY_LABEL = "sdn-egress.io/gateway"
ATTEMPTS = 5
WRITERS = 8  # requests in flight while a pass writes many records (a first write, a migration)
LEGACY_KEYS = (FileAllocationStore.ALLOCATION, FileAllocationStore.ERRORS)


def _api(api_client):
    from kubernetes import client

    return client.CoreV1Api(api_client)


def _encode(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def legacy_allocation(cm: dict | None, where: str) -> Allocation | None:
    """The whole allocation the single ConfigMap of earlier versions held, if it still does."""
    text = ((cm or {}).get("data") or {}).get(FileAllocationStore.ALLOCATION)
    if text is None:
        return None
    try:
        return Allocation.from_json(text)
    except ValueError as exc:
        raise ValueError(f"{where}, key {FileAllocationStore.ALLOCATION}: {exc}") from None


def parse_records(items, where: str, head: int = 0) -> Allocation | None:
    """The allocation of these record ConfigMaps (API objects) in force at
    generation ``head`` (:mod:`.generations`); None when no record has a value."""
    parsed = []
    for cm in items:
        name = cm["metadata"]["name"]
        text = in_force(cm, head)
        if text is None:
            continue
        try:
            parsed.append((name, codec.loads(text)))
        except ValueError as exc:
            key = KEY if record_generation(cm) <= head else generations.PREVIOUS
            raise ValueError(f"{where}: ConfigMap {name}, key {key}: {exc}") from None
    if not parsed:
        return None
    try:
        return records.join(parsed)
    except ValueError as exc:
        raise ValueError(f"{where}: ConfigMap {exc}") from None


class KubeAllocationStore:
    """The controller's :class:`~.store.AllocationStore` in Kubernetes.
    ``mirror``: also write the files into this status directory."""

    MOVES = "moves.json"

    def __init__(self, api_client, namespace: str, name: str = CONFIGMAP,
                 mirror: FileAllocationStore | None = None):
        self.api_client = api_client
        self.namespace = namespace
        self.name = name
        self.mirror = mirror
        self._known: dict[str, dict] | None = None  # record name -> the ConfigMap as last read or written
        self._head: int | None = None  # the generation in force, as last read or written
        self._migrating = False  # the single ConfigMap still holds the allocation
        self._unreadable: list[str] = []
        self._moves_ready = False
        self._lock = threading.Lock()
        self.bytes_written = 0  # record data written, for the measure (bench/alloc_size.py)

    @property
    def where(self) -> str:
        return f"ConfigMaps {self.namespace}/{records.PREFIX}* (label {RECORD_LABEL})"

    @property
    def status_dir(self) -> str | None:
        return self.mirror.path if self.mirror is not None else None

    @property
    def moves_where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    def _ensure_moves_configmap(self) -> None:
        """The ConfigMap planned moves are asked for in exists once a controller ran."""
        from kubernetes.client.rest import ApiException

        if self._read_legacy() is not None:
            return
        try:
            _api(self.api_client).create_namespaced_config_map(self.namespace, {
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "sdn-egress"}}, "data": {}},
                _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _read_legacy(self) -> dict | None:
        return read_or_none(lambda: _api(self.api_client).read_namespaced_config_map(
            self.name, self.namespace, _preload_content=False))

    def _read_head(self) -> dict | None:
        return read_or_none(lambda: _api(self.api_client).read_namespaced_config_map(
            HEAD, self.namespace, _preload_content=False))

    def _list(self) -> dict[str, dict]:
        self._head = generations.head_generation(self._read_head())
        resp = _api(self.api_client).list_namespaced_config_map(
            self.namespace, label_selector=RECORD_LABEL, _preload_content=False)
        self._known = {cm["metadata"]["name"]: cm for cm in json.loads(resp.data).get("items") or ()
                       if (cm["metadata"].get("labels") or {}).get(RECORD_LABEL) in (records.EIP, records.OBJECT)}
        return self._known

    def load(self) -> Allocation | None:
        """The old single ConfigMap's allocation while it holds one, else the records'."""
        self._unreadable = []
        legacy = legacy_allocation(self._read_legacy(), f"ConfigMap {self.namespace}/{self.name}")
        known = self._list()
        self._migrating = legacy is not None
        if legacy is not None:
            LOG.info("ConfigMap %s/%s holds the allocation of an earlier version: starting from it; "
                     "it moves to %s at the first write", self.namespace, self.name, self.where)
            return legacy
        if not known:
            return None
        try:
            return parse_records(known.values(), self.where, self._head or 0)
        except ValueError as exc:
            self._unreadable = [n for n in known if f"ConfigMap {n}:" in str(exc) or f"ConfigMap {n}." in str(exc)]
            raise

    def set_aside(self) -> str:
        """Each unreadable record leaves the allocation: copied to
        ``NAME.bad`` (label ``...=set-aside``, kept for a look), then deleted;
        the next write starts afresh."""
        api = _api(self.api_client)
        for name in self._unreadable:
            cm = self._known[name]
            api.create_namespaced_config_map(self.namespace, {
                "apiVersion": "v1", "kind": "ConfigMap", "data": cm.get("data") or {},
                "metadata": {"name": f"{name}.bad", "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "sdn-egress", RECORD_LABEL: "set-aside"}}},
                _preload_content=False)
            api.delete_namespaced_config_map(name, self.namespace, _preload_content=False)
        self._known = None
        return ", ".join(f"ConfigMap {self.namespace}/{n}.bad" for n in self._unreadable)

    def save(self, alloc: Allocation) -> bool:
        """Write the records that changed, delete those that went; True when any did."""
        from kubernetes.client.rest import ApiException

        mirrored = self.mirror.save(alloc) if self.mirror is not None else False
        want = records.split(alloc)
        for attempt in range(ATTEMPTS):
            try:
                changed = self._write(want)
                break
            except ApiException as exc:
                if exc.status not in (404, 409) or attempt == ATTEMPTS - 1:
                    raise
                LOG.info("%s changed under us; reading them again", self.where)
                self._known = None
        if self._migrating:
            self._finish_migration()
        elif not self._moves_ready:
            self._ensure_moves_configmap()
        self._moves_ready = True
        return changed or mirrored

    def _write(self, want: dict[str, records.Record]) -> bool:
        """One generation (:mod:`.generations`): the tombstones of the records
        that go, the objects' records, the EIPs'; then the head; then the
        tombstones are deleted.  Within each, the requests in parallel (WRITERS)."""
        known = self._known if self._known is not None else self._list()
        head = self._head or 0
        gone = sorted(set(known) - set(want))
        new = {name: rec for name, rec in want.items()
               if ((known.get(name) or {}).get("data") or {}).get(KEY) != _encode(rec.data)}
        half_written = any(record_generation(cm) > head for cm in known.values())
        if not (gone or new or half_written):
            return False
        gen = next_generation(head, known.values())
        tombstones = [name for name in gone if KEY in (known[name].get("data") or {})]
        objects = [rec for name, rec in sorted(new.items()) if rec.part == records.OBJECT]
        eips = [rec for name, rec in sorted(new.items()) if rec.part != records.OBJECT]
        for batch, do in ((tombstones, lambda n: self._tombstone(n, gen, head)),
                          (objects, lambda r: self._put(r, gen, head)), (eips, lambda r: self._put(r, gen, head))):
            _each(batch, do)
        self._commit(gen, head, [*tombstones, *(r.name for r in objects), *(r.name for r in eips)],
                     [name for name in new if name not in known])
        _each(gone, self._delete)
        return True

    def _commit(self, gen: int, head: int, written: list[str], created: list[str]) -> None:
        """The head names ``gen``: from now on the records written at it are in force."""
        from kubernetes.client.rest import ApiException

        api = _api(self.api_client)
        cm = self._read_head()
        if cm is None:
            api.create_namespaced_config_map(self.namespace, {
                "apiVersion": "v1", "kind": "ConfigMap", "data": generations.head_data(gen, head, written, created),
                "metadata": {"name": HEAD, "namespace": self.namespace,
                             "labels": {"app.kubernetes.io/name": "sdn-egress"}}}, _preload_content=False)
        else:
            if generations.head_generation(cm) >= gen:  # another controller wrote since we read
                raise ApiException(status=409, reason=f"ConfigMap {self.namespace}/{HEAD} moved past {gen}")
            cm["data"] = generations.head_data(gen, head, written, created)
            api.replace_namespaced_config_map(HEAD, self.namespace, cm, _preload_content=False)
        self._head = gen

    def _tombstone(self, name: str, gen: int, head: int) -> None:
        """A record that goes: no value at ``gen``, its value in force until then kept."""
        old = self._known[name]
        body = {"apiVersion": "v1", "kind": "ConfigMap", "data": record_data(None, gen, in_force(old, head)),
                "metadata": {"name": name, "namespace": self.namespace,
                             "labels": dict(old["metadata"].get("labels") or {}),
                             "resourceVersion": old["metadata"].get("resourceVersion")}}
        resp = _api(self.api_client).replace_namespaced_config_map(name, self.namespace, body,
                                                                   _preload_content=False)
        with self._lock:
            self._known[name] = json.loads(resp.data)

    def _delete(self, name: str) -> None:
        _api(self.api_client).delete_namespaced_config_map(name, self.namespace, _preload_content=False)
        self._known.pop(name, None)

    def _put(self, rec: records.Record, gen: int, head: int) -> None:
        api = _api(self.api_client)
        old = self._known.get(rec.name)
        previous = in_force(old, head) if old is not None else None
        data = record_data(_encode(rec.data), gen, previous)
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": rec.name, "namespace": self.namespace,
                             "labels": self._labels(rec, previous)},
                "data": data}
        if old is None:
            resp = api.create_namespaced_config_map(self.namespace, body, _preload_content=False)
        else:
            body["metadata"]["resourceVersion"] = old["metadata"].get("resourceVersion")
            resp = api.replace_namespaced_config_map(rec.name, self.namespace, body, _preload_content=False)
        with self._lock:
            self._known[rec.name] = json.loads(resp.data)
            self.bytes_written += sum(len(v.encode()) for v in data.values())

    @staticmethod
    def _labels(rec: records.Record, previous: str | None) -> dict[str, str]:
        """Its kind, gateway, and the nodes and policies that select it
        (:func:`.records.selection_labels`), of the value in force until
        this generation as well: a reader that had it sees it change."""
        labels = {"app.kubernetes.io/name": "sdn-egress", RECORD_LABEL: rec.part}
        if rec.gateway and len(rec.gateway) <= 63:
            labels[GATEWAY_LABEL] = rec.gateway
        if previous is not None:
            try:
                labels.update(records.selection_labels(json.loads(previous)))
            except ValueError:
                pass
        labels.update(records.selection_labels(rec.data))
        return labels

    def _finish_migration(self) -> None:
        """The records are written: the single ConfigMap keeps only the planned moves."""
        cm = self._read_legacy()
        if cm is not None and any(k in (cm.get("data") or {}) for k in LEGACY_KEYS):
            cm["data"] = {k: v for k, v in (cm.get("data") or {}).items() if k not in LEGACY_KEYS}
            _api(self.api_client).replace_namespaced_config_map(self.name, self.namespace, cm,
                                                                _preload_content=False)
            LOG.info("allocation moved from ConfigMap %s/%s to %s", self.namespace, self.name, self.where)
        self._migrating = False

    # -- planned moves ---------------------------------------------------------------------------
    def read_moves(self) -> dict[str, str]:
        text = ((self._read_legacy() or {}).get("data") or {}).get(self.MOVES)
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            LOG.warning("%s, key %s: not JSON; no planned move is read from it", self.moves_where, self.MOVES)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def request_move(self, eip: str, node: str) -> None:
        self._edit_moves(lambda moves: {**moves, eip: node})

    def finish_moves(self, done: set[str]) -> None:
        self._edit_moves(lambda moves: {k: v for k, v in moves.items() if k not in done})

    def _edit_moves(self, change) -> None:
        from kubernetes.client.rest import ApiException

        for attempt in range(ATTEMPTS):
            cm = self._read_legacy()
            if cm is None:
                raise LookupError(f"{self.moves_where} does not exist (is the controller running?)")
            data = dict(cm.get("data") or {})
            try:
                old = json.loads(data.get(self.MOVES) or "{}")
            except ValueError:
                old = {}
            new = change(old if isinstance(old, dict) else {})
            if new == old:
                return
            if new:
                data[self.MOVES] = json.dumps(new, sort_keys=True)
            else:
                data.pop(self.MOVES, None)
            cm["data"] = data
            try:
                _api(self.api_client).replace_namespaced_config_map(self.name, self.namespace, cm,
                                                                    _preload_content=False)
                return
            except ApiException as exc:
                if exc.status != 409 or attempt == ATTEMPTS - 1:
                    raise


def _each(batch, do) -> None:
    """``do`` for each of ``batch``; many: WRITERS in parallel (the first failure raises)."""
    if len(batch) == 1:
        do(batch[0])
    elif batch:
        with ThreadPoolExecutor(WRITERS) as pool:
            list(pool.map(do, batch))


class _ConfigMapWatch:
    """An informer on the single ConfigMap: the planned moves wake the
    controller; the agents read the allocation from it until it moved."""

    def __init__(self, api_client, namespace: str, name: str, on_change, backoff_max: float | None):
        from sdn_egress.kube.informer import BACKOFF_MAX, Informer
        from sdn_egress.kube.resources import CONFIGMAPS

        self.name, self.namespace = name, namespace
        self.informer = Informer(api_client, CONFIGMAPS, on_change=on_change, namespace=namespace,
                                 field_selector=f"metadata.name={name}", backoff_max=backoff_max or BACKOFF_MAX)

    def get(self) -> dict | None:
        return self.informer.get(self.name, self.namespace)


class MovesWatch:
    """``changed()`` once after every change of the planned moves' ConfigMap (a controller's waker)."""

    def __init__(self, api_client, namespace: str, name: str = CONFIGMAP):
        self._changed = threading.Event()
        self._watch = _ConfigMapWatch(api_client, namespace, name, self._changed.set, None)

    def start(self) -> "MovesWatch":
        self._watch.informer.start()
        return self

    def stop(self) -> None:
        self._watch.informer.stop()

    def changed(self) -> bool:
        if self._changed.is_set():
            self._changed.clear()
            return True
        return False
