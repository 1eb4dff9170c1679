"""The allocation in a ConfigMap: what ``allocation.json`` is in standalone mode.

The controller keeps its whole result (EIPs, tunnel keys, gateway node order,
round-robin cursors) in ConfigMap ``sdn-egress-allocation`` of its namespace,
under the keys ``allocation.json`` and ``errors.json``: a new leader starts
from it, so EIPs stay where they were, and the agents watch it
(:class:`KubeAllocationReader`).  Key ``moves.json`` holds the planned
moves asked for (``sdn-egress move --kubeconfig``: EIP -> node) until the
controller sees them done.  Writes carry the resourceVersion read (a stale
one: read again, retry) and are skipped when nothing changed.
"""
from __future__ import annotations

import json
import logging
import threading

from sdn_egress.allocation import Allocation, FileAllocationStore as AllocationStore

LOG = logging.getLogger(__name__)

CONFIGMAP = "sdn-egress-allocation"
ATTEMPTS = 5


class KubeAllocationStore:
    ALLOCATION = AllocationStore.ALLOCATION
    ERRORS = AllocationStore.ERRORS
    MOVES = "moves.json"

    def __init__(self, api_client, namespace: str, name: str = CONFIGMAP, mirror: AllocationStore | None = None):
        """``mirror``: also write the files into this status directory."""
        self.api_client = api_client
        self.namespace = namespace
        self.name = name
        self.mirror = mirror
        self.path = mirror.path if mirror is not None else None

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    @property
    def status_dir(self) -> str | None:
        return self.path

    def _api(self):
        from kubernetes import client

        return client.CoreV1Api(self.api_client)

    def _read(self) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            resp = self._api().read_namespaced_config_map(self.name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def load(self) -> Allocation | None:
        cm = self._read()
        text = ((cm or {}).get("data") or {}).get(self.ALLOCATION)
        if text is None:
            return None
        try:
            return Allocation.from_json(text)
        except ValueError as exc:
            raise ValueError(f"{self.where}, key {self.ALLOCATION}: {exc}") from None

    def set_aside(self) -> str:
        """Keep an unreadable allocation under another key; returns where."""
        cm = self._read() or {}
        data = dict(cm.get("data") or {})
        if self.ALLOCATION in data:
            data[self.ALLOCATION + ".bad"] = data.pop(self.ALLOCATION)
            cm["data"] = data
            self._api().replace_namespaced_config_map(self.name, self.namespace, cm, _preload_content=False)
        return f"{self.where}, key {self.ALLOCATION}.bad"

    # -- planned moves ---------------------------------------------------------------------------
    def read_moves(self) -> dict[str, str]:
        text = ((self._read() or {}).get("data") or {}).get(self.MOVES)
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            LOG.warning("%s, key %s: not JSON; no planned move is read from it", self.where, self.MOVES)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def request_move(self, eip: str, node: str) -> None:
        self._edit_moves(lambda moves: {**moves, eip: node})

    def finish_moves(self, done: set[str]) -> None:
        self._edit_moves(lambda moves: {k: v for k, v in moves.items() if k not in done})

    def _edit_moves(self, change) -> None:
        from kubernetes.client.rest import ApiException

        for attempt in range(ATTEMPTS):
            cm = self._read()
            if cm is None:
                raise LookupError(f"{self.where} does not exist (is the controller running?)")
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
                self._api().replace_namespaced_config_map(self.name, self.namespace, cm, _preload_content=False)
                return
            except ApiException as exc:
                if exc.status != 409 or attempt == ATTEMPTS - 1:
                    raise

    def save(self, alloc: Allocation) -> bool:
        """Write the allocation; True when the ConfigMap (or the mirror) changed."""
        from kubernetes.client.rest import ApiException

        mirrored = self.mirror.save(alloc) if self.mirror is not None else False
        data = {
            self.ALLOCATION: alloc.to_json(),
            self.ERRORS: json.dumps([e.to_dict() for e in alloc.errors], indent=2, sort_keys=True) + "\n",
        }
        for attempt in range(ATTEMPTS):
            cm = self._read()
            try:
                if cm is None:
                    self._api().create_namespaced_config_map(self.namespace, {
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": self.name, "namespace": self.namespace,
                                     "labels": {"app.kubernetes.io/name": "sdn-egress"}},
                        "data": data}, _preload_content=False)
                    return True
                old = cm.get("data") or {}
                if all(old.get(k) == v for k, v in data.items()):
                    return mirrored
                cm["data"] = {**old, **data}
                self._api().replace_namespaced_config_map(self.name, self.namespace, cm, _preload_content=False)
                return True
            except ApiException as exc:
                if exc.status not in (409,) or attempt == ATTEMPTS - 1:
                    raise
                LOG.info("%s changed under us; reading it again", self.where)
        return mirrored


class KubeAllocationReader:
    """The agents' side: the allocation ConfigMap through an informer (one
    object, by field selector), parsed once per version.  Until the first
    list, :attr:`synced` is False and the agent changes nothing; while the API
    server is away, the last version read stays in force."""

    def __init__(self, api_client, namespace: str, name: str = CONFIGMAP, backoff_max: float | None = None):
        from sdn_egress.kube.informer import BACKOFF_MAX, Informer
        from sdn_egress.kube.resources import CONFIGMAPS

        self.namespace = namespace
        self.name = name
        self._changed = threading.Event()
        self.informer = Informer(api_client, CONFIGMAPS, on_change=self._changed.set, namespace=namespace,
                                 field_selector=f"metadata.name={name}", backoff_max=backoff_max or BACKOFF_MAX)
        self._parsed: tuple[str, Allocation | None] | None = None

    @property
    def where(self) -> str:
        return f"ConfigMap {self.namespace}/{self.name}"

    @property
    def synced(self) -> bool:
        return self.informer.synced.is_set()

    def start(self) -> "KubeAllocationReader":
        self.informer.start()
        return self

    def stop(self) -> None:
        self.informer.stop()

    def load(self) -> Allocation | None:
        cm = self.informer.get(self.name, self.namespace)
        if cm is None:
            return None
        version = str((cm.get("metadata") or {}).get("resourceVersion"))
        if self._parsed is None or self._parsed[0] != version:
            text = (cm.get("data") or {}).get(KubeAllocationStore.ALLOCATION)
            try:
                alloc = Allocation.from_json(text) if text is not None else None
            except ValueError as exc:
                raise ValueError(f"{self.where}, key {KubeAllocationStore.ALLOCATION}: {exc}") from None
            self._parsed = (version, alloc)
        return self._parsed[1]

    def changed(self) -> bool:
        """True once after every change of the ConfigMap."""
        if self._changed.is_set():
            self._changed.clear()
            return True
        return False
