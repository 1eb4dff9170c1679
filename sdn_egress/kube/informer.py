"""List-then-watch of one resource into a local cache, like client-go's informers.

An :class:`Informer` lists its resource (in pages of :data:`LIST_PAGE`
objects, each trimmed into the new cache as it arrives: see
:meth:`Informer._list`), remembers the list's resourceVersion, then watches
from it, applying every ADDED/MODIFIED/DELETED event to its cache
and moving its resourceVersion with every event (and BOOKMARK).  A watch the
server ends (its timeout, a restart of its watch cache) resumes from the last
resourceVersion; ``410 Gone`` (the version is too old) means a fresh list; any
other failure (connection refused or reset, a 5xx) is retried with exponential
backoff from the same version.  :attr:`Informer.failing` tells that the last
request failed; the first list or event after that ends the outage
(:attr:`Informer.recovered_at`).  The cache holds the raw objects (dicts, with
``kind`` and ``apiVersion`` filled in: list items carry neither), trimmed on
arrival to what the reader uses (``trim``: see
:data:`sdn_egress.kube.resources.TRIMS`); it is replaced whole by a list, so
a reader never sees half of one.  :attr:`Informer.generation` moves with
every change worth a new snapshot, so a reader can tell an unchanged cache
without looking at it.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable, Iterable

from sdn_egress.kube.resources import NODES, Resource, list_function

LOG = logging.getLogger(__name__)

WATCH_TIMEOUT = 300  # seconds: the server ends a watch after this; we resume from the last version
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
OPTIONAL_RETRY = 300  # seconds between looks at a resource the server did not serve
LIST_PAGE = 500  # objects per list request (client-go's pager's default)
PAGE_RESTARTS = 2  # lists restarted when a continue token expires; then one request


class Changed(threading.Event):
    """The flag a reader of informers clears when it reads and the informers
    set on every change, which also calls the listeners (in the informer's
    thread): an agent's loop wakes at the change, not at its next poll."""

    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[Callable[[], None]] = []

    def listen(self, fn: Callable[[], None]) -> None:
        self._listeners.append(fn)

    def set(self) -> None:
        super().set()
        for fn in self._listeners:
            fn()


class _ContinueExpired(Exception):
    """A list's next page is gone: the server compacted its snapshot (410)."""


def relevant(res: Resource, obj: dict) -> dict:
    """The part of an object whose change is worth a new snapshot: without the
    resourceVersion and managedFields, without the status of our own kinds
    (the controller writes it), without the heartbeats of Node conditions."""
    out = dict(obj)
    meta = dict(out.get("metadata") or {})
    for k in ("resourceVersion", "managedFields"):
        meta.pop(k, None)
    out["metadata"] = meta
    if res.custom:
        out.pop("status", None)
    elif res == NODES and isinstance(out.get("status"), dict):
        status = dict(out["status"])
        if isinstance(status.get("conditions"), list):
            status["conditions"] = [{k: v for k, v in c.items() if k != "lastHeartbeatTime"}
                                    if isinstance(c, dict) else c for c in status["conditions"]]
        out["status"] = status
    return out


def _differs(res: Resource, old: dict, new: dict) -> bool:
    """Whether two caches differ in a way worth a new snapshot (object by
    object, stopping at the first difference: no copy of either is made)."""
    if old.keys() != new.keys():
        return True
    return any(a is not b and relevant(res, a) != relevant(res, b) for a, b in ((old[k], new[k]) for k in new))


def _key(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "", meta.get("name") or ""


class Informer:
    def __init__(self, api_client, res: Resource, on_change: Callable[[], None] | None = None,
                 watch_timeout: int = WATCH_TIMEOUT, backoff_max: float = BACKOFF_MAX,
                 namespace: str | None = None, label_selector: str | None = None,
                 field_selector: str | None = None, optional: bool = False,
                 trim: Callable[[dict], dict] | None = None, page_size: int = LIST_PAGE):
        """``namespace``, ``label_selector``, ``field_selector``: only the
        objects they select (default: every object of ``res``).  ``optional``:
        a resource the API server may not serve; a 404 on its list counts as
        an empty list (synced), looked at again every ``OPTIONAL_RETRY`` s.
        ``trim``: what the cache keeps of an object (default: all of it).
        ``page_size``: objects per list request."""
        self.page_size = page_size
        self.optional = optional
        self.trim = trim
        self.generation = 0  # moves with every change on_change is told of
        self.served: bool | None = None  # None: not known yet
        self.api_client = api_client
        self.res = res
        self.namespace = namespace
        self._selectors = {k: v for k, v in (("label_selector", label_selector),
                                             ("field_selector", field_selector)) if v}
        self.on_change = on_change or (lambda: None)
        self.watch_timeout = watch_timeout
        self.backoff_max = backoff_max
        self.synced = threading.Event()  # the first list is in the cache
        self.resource_version: str | None = None
        self.lists = 0  # how many times the resource was listed (1 + relists)
        self.pages = 0  # list requests answered (a list takes one per page)
        self.watches = 0  # how many watch requests were made
        self.failing = False  # the last list or watch failed; retrying
        self.recovered_at = 0.0  # time.monotonic() of the first list or watch that worked after a failure
        self._cache: dict[tuple[str, str], dict] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch = None
        self._thread: threading.Thread | None = None

    # -- reading ----------------------------------------------------------------------------------------
    def items(self) -> list[dict]:
        """Every cached object, by namespace and name (shared: do not modify)."""
        with self._lock:
            return [self._cache[k] for k in sorted(self._cache)]

    def items_by_key(self) -> list[tuple[tuple[str, str], dict]]:
        """Every cached ((namespace, name), object), in that order (shared: do not modify)."""
        with self._lock:
            return sorted(self._cache.items(), key=lambda kv: kv[0])

    def get(self, name: str, namespace: str = "") -> dict | None:
        with self._lock:
            return self._cache.get((namespace, name))

    # -- running ----------------------------------------------------------------------------------------
    def start(self) -> "Informer":
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.res.plural}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (waiting up to ``timeout``).  The watch is stopped
        again until the thread ends: a watch stopped before its request was
        sent would forget it, and block in its read until the server's timeout."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        while True:
            w = self._watch
            if w is not None:
                w.stop()  # shuts the socket down: the blocked read returns
            if self._thread is None:
                return
            self._thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
            if not self._thread.is_alive() or time.monotonic() >= deadline:
                return

    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch_once()
                backoff = 0.0
            except Exception as exc:  # noqa: BLE001 - the informer must live
                from kubernetes.client.rest import ApiException

                if isinstance(exc, ApiException) and exc.status == 404 and self.optional:
                    if self.served is not False:
                        LOG.info("%s: not served by this API server; looking again every %d s",
                                 self.res.plural, OPTIONAL_RETRY)
                    self.served = False
                    self._contact()
                    self._replace_cache({}, None)
                    self._stop.wait(OPTIONAL_RETRY)
                    continue
                if isinstance(exc, ApiException) and exc.status == 410:
                    LOG.info("%s: resourceVersion %s expired; listing again", self.res.plural,
                             self.resource_version)
                    self.resource_version = None
                    continue
                if self._stop.is_set():
                    break
                self.failing = True
                backoff = min(max(backoff * 2, BACKOFF_MIN), self.backoff_max)
                LOG.warning("%s: %s; retrying in %.1f s", self.res.plural, _why(exc), backoff)
                self._stop.wait(backoff)

    def _contact(self) -> None:
        """The API answered: the end of an outage, if there was one."""
        if self.failing:
            self.failing = False
            self.recovered_at = time.monotonic()
            LOG.info("%s: the API server answers again", self.res.plural)

    def _list(self) -> None:
        """List the resource into a new cache, in pages of ``page_size``
        objects (each trimmed as it arrives: the whole untrimmed list is never
        held).  All pages are one snapshot: the list's resourceVersion is the
        first page's (a later one could only be newer, and a watch from it could
        miss a change to an earlier page's object).  A continue token the server
        no longer honours (410: the snapshot was compacted away) restarts the
        list; after ``PAGE_RESTARTS`` such restarts the list is made whole, in
        one request, as client-go's pager does."""
        for attempt in range(PAGE_RESTARTS + 1):
            limit = self.page_size if attempt < PAGE_RESTARTS else None
            try:
                cache, rv = self._collect(limit)
                break
            except _ContinueExpired:
                LOG.info("%s: the list's continue token expired; listing again%s", self.res.plural,
                         "" if attempt + 1 < PAGE_RESTARTS else ", in one request")
        self.lists += 1
        self.served = True
        self._replace_cache(cache, rv)
        LOG.debug("%s: listed %d at resourceVersion %s", self.res.plural, len(cache), rv)
        if self.resource_version is None:
            raise RuntimeError("the list carried no resourceVersion")

    def _collect(self, limit: int | None) -> tuple[dict, str | None]:
        """Every page of one list (``limit`` objects each; None: one request),
        admitted into a new cache, and the list's resourceVersion."""
        from kubernetes.client.rest import ApiException

        cache: dict[tuple[str, str], dict] = {}
        rv: str | None = None
        token: str | None = None
        while True:
            try:
                data = json.loads(self._request(limit, token))
            except ApiException as exc:
                if token and exc.status == 410:
                    raise _ContinueExpired() from exc
                raise
            self.pages += 1
            meta = data.get("metadata") or {}
            if token is None:
                rv = str(meta.get("resourceVersion") or "") or None
            self._fill(cache, data.pop("items", None) or [])
            token = meta.get("continue") or None
            if not token or not limit:
                return cache, rv

    def _request(self, limit: int | None, token: str | None) -> bytes:
        """One list request: the response's body (JSON)."""
        func, args = list_function(self.api_client, self.res, self.namespace)
        paging = {k: v for k, v in (("limit", limit), ("_continue", token)) if v}
        resp = func(*args, _preload_content=False, **self._selectors, **paging)
        self._contact()
        return resp.data

    def _admit(self, obj: dict) -> dict:
        """An object as the cache keeps it: kind and apiVersion filled in, trimmed."""
        obj = dict(obj)
        obj.setdefault("kind", self.res.kind)
        obj.setdefault("apiVersion", self.res.api_version)
        return self.trim(obj) if self.trim is not None else obj

    def load(self, items, resource_version: str | None) -> None:
        """A list's items (an iterable, taken one by one and trimmed: the
        whole untrimmed list need not be held) replace the cache."""
        cache: dict[tuple[str, str], dict] = {}
        self._fill(cache, items)
        self._replace_cache(cache, resource_version)

    def _fill(self, cache: dict, items: list | Iterable) -> None:
        """Admit ``items`` into ``cache``; a list is emptied as it is read, so
        that each untrimmed object can go as soon as its trimmed copy is kept."""
        if isinstance(items, list):
            items.reverse()
            while items:
                item = self._admit(items.pop())
                cache[_key(item)] = item
            return
        for item in items:
            item = self._admit(item)
            cache[_key(item)] = item

    def _replace_cache(self, cache: dict, resource_version: str | None) -> None:
        with self._lock:
            old, self._cache = self._cache, cache
        self.resource_version = resource_version
        first = not self.synced.is_set()
        self.synced.set()
        if first or _differs(self.res, old, cache):
            self.generation += 1
            self.on_change()

    def _watch_once(self) -> None:
        from kubernetes import watch

        func, args = list_function(self.api_client, self.res, self.namespace)
        w = watch.Watch(return_type="object")
        self._watch = w
        self.watches += 1
        try:
            for event in w.stream(func, *args, resource_version=self.resource_version,
                                  timeout_seconds=self.watch_timeout, allow_watch_bookmarks=True,
                                  _request_timeout=(10, self.watch_timeout + 30), **self._selectors):
                self._contact()
                if self._stop.is_set():
                    break
                self._apply(event["type"], event["raw_object"])
        finally:
            self._watch = None

    def _apply(self, type_: str, obj: dict) -> None:
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if type_ == "BOOKMARK":
            if rv:
                self.resource_version = str(rv)
            return
        if type_ not in ("ADDED", "MODIFIED", "DELETED"):
            LOG.warning("%s: unexpected watch event %r", self.res.plural, type_)
            return
        obj = self._admit(obj)
        key = _key(obj)
        with self._lock:
            old = self._cache.get(key)
            if type_ == "DELETED":
                self._cache.pop(key, None)
                changed = old is not None
            else:
                self._cache[key] = obj
                changed = old is None or relevant(self.res, old) != relevant(self.res, obj)
        if rv:
            self.resource_version = str(rv)
        if changed:
            self.generation += 1
            self.on_change()


def _why(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}"
