"""The allocation in Kubernetes: one ConfigMap per record (:mod:`.records`).

Every EIP has its ConfigMap ``sdn-egress-eip-v4-192-0-2-200`` (label
``sdn-egress.io/allocation-record=eip``: what the agents watch), and every
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
from sdn_egress.allocation import codec, records
from sdn_egress.allocation.store_file import FileAllocationStore
from sdn_egress.allocation.types import Allocation

LOG = logging.getLogger(__name__)

CONFIGMAP = "sdn-egress-allocation"  # planned moves; before: the whole allocation
RECORD_LABEL = "sdn-egress.io/allocation-record"
GATEWAY_LABEL = "sdn-egress.io/gateway"
KEY = "record.json"
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


def parse_records(items, where: str) -> Allocation:
    """The allocation of these record ConfigMaps (API objects)."""
    parsed = []
    for cm in items:
        name = cm["metadata"]["name"]
        try:
            parsed.append((name, codec.loads((cm.get("data") or {}).get(KEY) or "")))
        except ValueError as exc:
            raise ValueError(f"{where}: ConfigMap {name}, key {KEY}: {exc}") from None
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

    def _list(self) -> dict[str, dict]:
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
            return parse_records(known.values(), self.where)
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
        """Deletions, then the objects' records, then the EIPs' (what agents
        act on last); within each, the requests in parallel (WRITERS)."""
        known = self._known if self._known is not None else self._list()
        gone = sorted(set(known) - set(want))
        new = {name: rec for name, rec in want.items()
               if (known.get(name) or {}).get("data") != {KEY: _encode(rec.data)}}
        objects = [rec for name, rec in sorted(new.items()) if rec.part == records.OBJECT]
        eips = [rec for name, rec in sorted(new.items()) if rec.part != records.OBJECT]
        for batch, do in ((gone, self._delete), (objects, self._put), (eips, self._put)):
            if len(batch) == 1:
                do(batch[0])
            elif batch:
                with ThreadPoolExecutor(WRITERS) as pool:
                    list(pool.map(do, batch))  # the first failure raises here
        return bool(gone or new)

    def _delete(self, name: str) -> None:
        _api(self.api_client).delete_namespaced_config_map(name, self.namespace, _preload_content=False)
        self._known.pop(name, None)

    def _put(self, rec: records.Record) -> None:
        api = _api(self.api_client)
        data = {KEY: _encode(rec.data)}
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": rec.name, "namespace": self.namespace, "labels": self._labels(rec)},
                "data": data}
        old = self._known.get(rec.name)
        if old is None:
            resp = api.create_namespaced_config_map(self.namespace, body, _preload_content=False)
        else:
            body["metadata"]["resourceVersion"] = old["metadata"].get("resourceVersion")
            resp = api.replace_namespaced_config_map(rec.name, self.namespace, body, _preload_content=False)
        with self._lock:
            self._known[rec.name] = json.loads(resp.data)
            self.bytes_written += len(data[KEY])

    @staticmethod
    def _labels(rec: records.Record) -> dict[str, str]:
        labels = {"app.kubernetes.io/name": "sdn-egress", RECORD_LABEL: rec.part}
        if rec.gateway and len(rec.gateway) <= 63:
            labels[GATEWAY_LABEL] = rec.gateway
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


class KubeAllocationReader:
    """The agents' :class:`~.store.AllocationReader`: the EIP records
    through an informer (label ``sdn-egress.io/allocation-record=eip``: an
    agent receives no condition, gateway status or refusal), parsed once per
    version.  Until the first list, :attr:`synced` is False and the agent
    changes nothing; while the API server is away, the last version read
    stays in force.  The old single ConfigMap, while it holds an allocation
    (an upgrade, before the controller moved it), is read instead."""

    def __init__(self, api_client, namespace: str, name: str = CONFIGMAP, backoff_max: float | None = None):
        from sdn_egress.kube.informer import BACKOFF_MAX, Informer
        from sdn_egress.kube.resources import CONFIGMAPS

        self.namespace = namespace
        self._changed = threading.Event()
        self.informer = Informer(api_client, CONFIGMAPS, on_change=self._changed.set, namespace=namespace,
                                 label_selector=f"{RECORD_LABEL}={records.EIP}",
                                 backoff_max=backoff_max or BACKOFF_MAX)
        self._legacy = _ConfigMapWatch(api_client, namespace, name, self._changed.set, backoff_max)
        self._parsed: tuple[tuple, Allocation | None] | None = None

    @property
    def where(self) -> str:
        return f"ConfigMaps {self.namespace}/{records.PREFIX}eip-* (label {RECORD_LABEL}={records.EIP})"

    @property
    def synced(self) -> bool:
        return self.informer.synced.is_set() and self._legacy.informer.synced.is_set()

    def start(self) -> "KubeAllocationReader":
        self.informer.start()
        self._legacy.informer.start()
        return self

    def stop(self) -> None:
        self.informer.stop()
        self._legacy.informer.stop()

    def load(self) -> Allocation | None:
        legacy = self._legacy.get()
        if legacy is not None and FileAllocationStore.ALLOCATION in (legacy.get("data") or {}):
            version: tuple = ("legacy", (legacy.get("metadata") or {}).get("resourceVersion"))
            if self._parsed is None or self._parsed[0] != version:
                self._parsed = (version, legacy_allocation(legacy, f"ConfigMap {self.namespace}/{self._legacy.name}"))
            return self._parsed[1]
        items = self.informer.items()
        version = tuple(((cm.get("metadata") or {}).get("name"), (cm.get("metadata") or {}).get("resourceVersion"))
                        for cm in items)
        if self._parsed is None or self._parsed[0] != version:
            self._parsed = (version, parse_records(items, self.where) if items else None)
        return self._parsed[1]

    def changed(self) -> bool:
        """True once after every change of the records (or of the old ConfigMap)."""
        if self._changed.is_set():
            self._changed.clear()
            return True
        return False
