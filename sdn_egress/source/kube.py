"""The cluster state from the Kubernetes API: a :class:`~sdn_egress.source.StateSource`.

One :class:`~sdn_egress.kube.informer.Informer` per kind (Nodes, Namespaces,
Pods, EgressGateways, EgressPolicies, EgressClusterPolicies) keeps a cache; a
snapshot parses the caches with the same parsers and the same rules as the
manifest directory (:class:`sdn_egress.source.Assembler`): an invalid object
is an :class:`~sdn_egress.model.ObjectError` citing its API path, a refused
new version (or one changing an immutable field) keeps the last valid one.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

import netaddr

from sdn_egress.kube.informer import Informer
from sdn_egress.kube.resources import SERVICE_CIDRS, WATCHED, Resource
from sdn_egress.model import ClusterState, ObjectRef
from sdn_egress.source import Assembler

LOG = logging.getLogger(__name__)


class KubeSource:
    """``extra_cluster_cidrs``: configured ranges never steered.  The service
    CIDRs are also detected where the cluster serves ServiceCIDR objects
    (``networking.k8s.io/v1``, Kubernetes 1.33+): their ``spec.cidrs`` join the
    configured ones (``detect_service_cidrs=False``: configuration only)."""

    def __init__(self, api_client, extra_cluster_cidrs: Iterable[str | netaddr.IPNetwork] = (),
                 resources: Iterable[Resource] = WATCHED, watch_timeout: int | None = None,
                 backoff_max: float | None = None, detect_service_cidrs: bool = True):
        self.api_client = api_client
        self.extra_cluster_cidrs = tuple(netaddr.IPNetwork(str(c)) for c in extra_cluster_cidrs)
        self._changed = threading.Event()
        self._changed.set()  # no snapshot taken yet
        kwargs = {k: v for k, v in (("watch_timeout", watch_timeout), ("backoff_max", backoff_max)) if v}
        self.informers = {r.kind: Informer(api_client, r, on_change=self._changed.set, **kwargs)
                          for r in resources}
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

    def snapshot(self) -> ClusterState:
        with self._lock:
            self._changed.clear()  # before reading: a change while we read is seen next time
            return assemble(self._history, [(inf.res, inf.items()) for inf in self.informers.values()],
                            list(self.extra_cluster_cidrs) + list(self.service_cidrs()))

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
