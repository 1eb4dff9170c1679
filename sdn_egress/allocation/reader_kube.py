"""The agents' reading of the allocation in Kubernetes: only their node's part.

An agent needs the EIP records of two kinds (:mod:`.store_kube`):

- those it may hold: it is in the EIP's gateway node list.  Each EIP record
  carries a label per gateway node (``node.sdn-egress.io/NODE``,
  :func:`.records.node_label`): one informer selects them.
- those its pods use: the EIPs of the policies that select a pod of its
  node.  Which policies those are only the agent knows (it watches its own
  pods; the controller watches none), and a label selector cannot say "any
  of these labels"; so each EIP record carries a label per policy using it
  (``policy.sdn-egress.io/HASH``, :func:`.records.policy_label`) and the
  agent runs one informer per policy that selects one of its pods, as the
  kubelet watches each ConfigMap its pods mount.  A policy's informer starts
  when the policy first selects a pod of the node (the pass waits for its
  first list: the switch keeps its flows until the part is whole) and stays
  while the policy exists, so a pod selected again, as its tunnels, finds
  its EIPs there (the latest :data:`STICKY` of those that no longer select
  any of its pods).  Policies the agent's own checks refused are watched too
  where they could select its pods: the controller may have accepted them
  (incumbency), and their records carry the incumbency that settles it.

Besides, the head (``sdn-egress-allocation-head``: the generation in force,
:mod:`.generations`) and the single ConfigMap of earlier versions (read
instead while it still holds an allocation), each by name.
"""
from __future__ import annotations

import logging

from sdn_egress.allocation import records
from sdn_egress.allocation.generations import HEAD, head_generation, reading_at
from sdn_egress.allocation.store_file import FileAllocationStore
from sdn_egress.allocation.store_kube import CONFIGMAP, RECORD_LABEL, _ConfigMapWatch, legacy_allocation, \
    parse_records
from sdn_egress.allocation.types import Allocation
from sdn_egress.kube.informer import Changed
from sdn_egress.model import ClusterState
from sdn_egress.source.index import policy_index

LOG = logging.getLogger(__name__)

SYNC_WAIT = 5.0  # seconds a pass waits for a new policy's first list before it fails (the flows stay)
STICKY = 32  # informers kept for policies that no longer select a pod of the node (the latest ones)
POLICY_KINDS = ("EgressPolicy", "EgressClusterPolicy")


def policies_for(node: str, state: ClusterState) -> tuple[set[str], set[str]]:
    """(the keys of the policies whose EIP records ``node`` needs, the keys
    of every policy there is): those selecting one of its pods, and those
    the agent's checks refused that could (cluster policies, or one of its
    pods' namespaces)."""
    local = [p for p in state.pods.values() if p.node == node]
    namespaces = {p.namespace for p in local}
    wanted: set[str] = set()
    index = policy_index(state.policies)  # only the policies that could select each pod
    for pod in local:
        labels = state.namespace_labels(pod.namespace)
        wanted.update(p.key for p in index.candidates(pod) if p.key not in wanted and p.selects(pod, labels))
    refused = {e.ref.key for e in state.errors if e.ref.kind in POLICY_KINDS}
    wanted.update(k for k in refused if "/" not in k or k.split("/", 1)[0] in namespaces)
    return wanted, set(state.policies) | refused


class KubeAllocationReader:
    """The agents' :class:`~.store.AllocationReader`, through informers on
    the EIP records (an agent receives no condition, gateway status or
    refusal), parsed once per version, at the generation in force.

    ``node`` and ``source`` (the agent's state source): only that node's
    part (see the module); without them, every EIP record.  Until the first
    lists, :attr:`synced` is False and the agent changes nothing; while the
    API server is away, the last version read stays in force."""

    def __init__(self, api_client, namespace: str, name: str = CONFIGMAP, backoff_max: float | None = None,
                 node: str | None = None, source=None):
        self.api_client, self.namespace, self.node, self.source = api_client, namespace, node, source
        self.backoff_max = backoff_max
        self._changed = Changed()
        eips = f"{RECORD_LABEL}={records.EIP}"
        self.informer = self._informer(f"{eips},{records.node_label(node)}" if node else eips)
        self.policy_informers: dict[str, object] = {}  # policy key -> its informer (node mode)
        self._legacy = _ConfigMapWatch(api_client, namespace, name, self._changed.set, backoff_max)
        self._head = _ConfigMapWatch(api_client, namespace, HEAD, self._changed.set, backoff_max)
        self._parsed: tuple[tuple, Allocation | None] | None = None
        self._selected_from: tuple | None = None  # the state parts the selection was made from
        self._running = False
        self._last: dict[str, dict[str, dict]] = {}  # watch ("" or a policy key) -> its records last read
        self._last_head = 0  # the head's generation at the last read
        self._vanished: dict[str, tuple[int, dict]] = {}  # record -> (the head when it vanished, its last value)

    def _informer(self, label_selector: str):
        from sdn_egress.kube.informer import BACKOFF_MAX, Informer
        from sdn_egress.kube.resources import CONFIGMAPS

        return Informer(self.api_client, CONFIGMAPS, on_change=self._changed.set, namespace=self.namespace,
                        label_selector=label_selector, backoff_max=self.backoff_max or BACKOFF_MAX)

    @property
    def where(self) -> str:
        part = f" with label {records.node_label(self.node)} or a policy's of node {self.node}" if self.node else ""
        return f"ConfigMaps {self.namespace}/{records.PREFIX}eip-* (label {RECORD_LABEL}={records.EIP}{part})"

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in (self.informer, self._legacy.informer, self._head.informer))

    def start(self) -> "KubeAllocationReader":
        self._running = True
        for inf in (self.informer, self._legacy.informer, self._head.informer):
            inf.start()
        return self

    def stop(self) -> None:
        self._running = False
        for inf in (self.informer, self._legacy.informer, self._head.informer, *self.policy_informers.values()):
            inf.stop()

    # -- the node's policies ----------------------------------------------------------------------
    def _select(self) -> None:
        """Start an informer for each policy newly selecting a pod of the node,
        stop those of policies gone; wait for the new ones' first list."""
        state = self.source.snapshot()
        parts = (state.policies, state.pods, state.namespaces, state.errors)
        if parts == self._selected_from:  # equal parts compare by identity first: cheap when unchanged
            return
        wanted, existing = policies_for(self.node, state)
        for key in sorted(wanted & set(self.policy_informers)):  # the ones in use last, the idle ones oldest first
            self.policy_informers[key] = self.policy_informers.pop(key)
        idle = [key for key in self.policy_informers if key not in wanted]
        for key in [k for k in idle if k not in existing] + [k for k in idle if k in existing][:-STICKY or None]:
            self.policy_informers.pop(key).stop()
        new = [key for key in sorted(wanted) if key not in self.policy_informers]
        for key in new:
            inf = self._informer(f"{RECORD_LABEL}={records.EIP},{records.policy_label(key)}")
            self.policy_informers[key] = inf.start() if self._running else inf
        for key in new:
            if not self.policy_informers[key].synced.wait(SYNC_WAIT):
                raise RuntimeError(f"the EIP records of policy {key} ({records.policy_label(key)}) are not "
                                   "listed yet; the switch keeps its flows")
        self._selected_from = parts

    def _items(self, head: int) -> list[dict]:
        """The records of the node's part (or all), with those that vanished
        from a watch that still runs while this reader's head has not moved:
        a record is deleted only after a head past its tombstone is written,
        so its deletion seen before that head means the head's watch trails;
        until it moves, the record's last value stays in force here."""
        if self.node is None or self.source is None:
            by_watch = {"": self.informer.items()}
        else:
            self._select()
            by_watch = {"": self.informer.items(), **{k: inf.items() for k, inf in self.policy_informers.items()}}
        seen = {}
        for key, got in by_watch.items():
            names = {cm["metadata"]["name"]: cm for cm in got}
            for name, cm in (self._last.get(key) or {}).items():
                if name not in names and name not in self._vanished and head <= self._last_head:
                    self._vanished[name] = (head, cm)  # gone, and no newer head seen since it was there
            seen.update(names)
        self._last = {key: {cm["metadata"]["name"]: cm for cm in got} for key, got in by_watch.items()}
        self._last_head = head
        for name, (at, cm) in list(self._vanished.items()):
            if name in seen or head > at:
                del self._vanished[name]
            else:
                seen[name] = cm
        return [seen[n] for n in sorted(seen)]

    def load(self) -> Allocation | None:
        legacy = self._legacy.get()
        if legacy is not None and FileAllocationStore.ALLOCATION in (legacy.get("data") or {}):
            version: tuple = ("legacy", (legacy.get("metadata") or {}).get("resourceVersion"))
            if self._parsed is None or self._parsed[0] != version:
                self._parsed = (version, legacy_allocation(legacy, f"ConfigMap {self.namespace}/{self._legacy.name}"))
            return self._parsed[1]
        head_cm = self._head.get()  # read once, before the records: a newer record is waited for
        items = self._items(head_generation(head_cm))
        head = reading_at(head_cm, items, selects_all=None if self.node else records.EIP_PREFIX)
        if head < head_generation(head_cm) and self._parsed is not None:
            # Behind the head: what was read last stays (a whole generation);
            # the one before the head cannot be rebuilt once its tombstones are gone.
            return self._parsed[1]
        version = (head, *(((cm.get("metadata") or {}).get("name"), (cm.get("metadata") or {}).get("resourceVersion"))
                           for cm in items))
        if self._parsed is None or self._parsed[0] != version:
            self._parsed = (version, parse_records(items, self.where, head) if items else None)
        return self._parsed[1]

    def on_change(self, fn) -> None:
        """Call ``fn`` (from a watch's thread) at every change."""
        self._changed.listen(fn)

    def changed(self) -> bool:
        """True once after every change of the records, the head (or the old ConfigMap)."""
        if self._changed.is_set():
            self._changed.clear()
            return True
        return False
