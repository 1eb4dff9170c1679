"""The agents' reports through the API: one ``coordination.k8s.io`` Lease per node.

What ``STATUS/nodes/NODE.json`` is in standalone mode: the Kubernetes
implementations of the two roles of :mod:`sdn_egress.reports`
(:class:`LeaseReporter` a ``StatusWriter``, :class:`LeaseReports` a ``ReportsReader``).
Each agent keeps Lease ``sdn-egress-agent-NODE`` in namespace
``sdn-egress-agents`` (as the kubelet keeps its node Lease in a namespace of
its own, so that the agents' right to write Leases reaches no other Lease): ``spec.renewTime`` is its heartbeat,
annotation ``sdn-egress.io/report`` what its data plane does (the EIPs it
holds, the gateway peers BFD sees dead, whether it considers itself cut off).
The agent writes when that changes and every ``interval`` seconds otherwise,
from a thread of its own: a slow or absent API server never holds up a pass.

The controller (:class:`LeaseReports`) reads them with an informer and judges
freshness by *its own* clock: a node is gone when its Lease has not changed for
``fresh`` seconds while the controller's watch was working.  Clock skew between
nodes does not matter, and an API server outage is not taken for every agent
dying: after one, every node gets ``fresh`` seconds again.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import threading
import time

from sdn_egress.backoff import Backoff
from sdn_egress.kube.informer import Informer, _why
from sdn_egress.kube.resources import LEASES
from sdn_egress.reports import FRESH

LOG = logging.getLogger(__name__)

NAMESPACE = "sdn-egress-agents"
REPORT = "sdn-egress.io/report"
LABELS = {"app.kubernetes.io/name": "sdn-egress", "app.kubernetes.io/component": "agent"}
SELECTOR = ",".join(f"{k}={v}" for k, v in LABELS.items())
NODE_LABEL = "sdn-egress.io/node"
# What is worth writing at once when it changes (the rest waits for the heartbeat).
PROMPT = ("held_eips", "dead_peers", "isolated", "error")
# switches, bfd: what `sdn-egress status` shows per node, from anywhere (no
# other node's OVSDB is reachable on a real cluster).
KEPT = PROMPT + ("passes", "pid", "tunnels", "tunnel_mtu", "mss", "oversized", "switches", "bfd")


def lease_name(node: str) -> str:
    """``sdn-egress-agent-NODE``; a node name too long for that (names of
    up to 253 characters) is shortened with a hash, still unique."""
    name = f"sdn-egress-agent-{node}"
    if len(name) <= 253:
        return name
    return name[:240] + "-" + hashlib.sha256(node.encode()).hexdigest()[:12]


def _micro_time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseReporter:
    """The agent's side (a ``StatusWriter``): ``report(status)`` after every
    pass; a thread writes."""

    def __init__(self, api_client, namespace: str, node: str, interval: float = 5.0,
                 duration: float = FRESH, clock=time.time, metrics=None, node_uid=None, events=None):
        """``node_uid()``: the uid of this node's Node object, when known: the
        Lease names it as its owner, so deleting the Node deletes the Lease
        (the garbage collector's work, as for the kubelet's node Lease).
        ``events``: an ``EventRecorder``; a pass that starts failing (an
        error it did not have in the pass before) becomes one Warning Event
        on the Node, so `kubectl describe node` and `kubectl get events`
        show that the agent cannot change what it must."""
        self.api_client = api_client
        self.namespace = namespace
        self.node = node
        self.name = lease_name(node)
        self.interval = interval
        self.duration = duration
        self.clock = clock
        self.metrics = metrics  # AgentMetrics, when served
        self.node_uid = node_uid or (lambda: None)
        self.events = events
        self._evented: str | None = None  # the error an Event was asked for, while it lasts
        self._pending_event: str | None = None
        self.writes = 0  # Lease writes that succeeded
        self.failing = False
        self._latest: dict | None = None
        self._written: dict | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    def report(self, status: dict) -> None:
        report = {k: status.get(k) for k in KEPT}
        error = report.get("error")
        with self._lock:
            self._latest = report
            prompt = self._written is None or any(report.get(k) != self._written.get(k) for k in PROMPT)
            if error != self._evented:
                self._evented = error
                self._pending_event = error if error and self.events is not None else None
        if prompt:
            self._wake.set()

    def start(self) -> "LeaseReporter":
        self._thread = threading.Thread(target=self._run, name="lease-reporter", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = Backoff(most=self.interval)
        while not self._stop.is_set():
            self._wake.wait(backoff.delay or self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._lock:
                report = self._latest
            if report is None:
                continue  # no pass finished yet: nothing to tell
            self._record_event()
            try:
                self.write(report)
                if self.metrics:
                    self.metrics.report_writes.labels("ok").inc()
                    self.metrics.report_last_success.set(self.clock())
                backoff.succeeded()
                if self.failing:
                    LOG.info("%s: written again", self.where)
                self.failing = False
            except Exception as exc:  # noqa: BLE001 - the reporter must live
                if self.metrics:
                    self.metrics.report_writes.labels("error").inc()
                backoff.failed()
                if not self.failing:
                    LOG.warning("%s: cannot write the agent's report (%s); the data path is unaffected, "
                                "retrying", self.where, _why(exc))
                self.failing = True

    def _record_event(self) -> None:
        """The pending Warning Event, if its error is still the current one
        (in this thread: a slow API server never holds up a pass)."""
        from sdn_egress.kube.events import WARNING
        with self._lock:
            error, self._pending_event = self._pending_event, None
            current = (self._latest or {}).get("error")
        if not error or error != current:
            return
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node, "uid": self.node_uid()}}
        self.events.record(node, WARNING, "EgressAgentPassFailed",
                           f"sdn-egress agent on {self.node}: {error} (the switches keep their flows; the "
                           "agent retries)")

    def write(self, report: dict) -> None:
        """Create or renew the Lease with ``report`` (one attempt)."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        api = client.CoordinationV1Api(self.api_client)
        now = _micro_time(self.clock())
        try:
            lease = json.loads(api.read_namespaced_lease(self.name, self.namespace, _preload_content=False).data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            lease = None
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": int(self.duration), "renewTime": now}
        annotations = {REPORT: json.dumps(report, sort_keys=True)}
        uid = self.node_uid()
        owners = [{"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": uid}] if uid else None
        if lease is None:
            meta = {"name": self.name, "namespace": self.namespace,
                    "labels": {**LABELS, NODE_LABEL: self.node[:63].rstrip("-.")}, "annotations": annotations}
            if owners:
                meta["ownerReferences"] = owners
            api.create_namespaced_lease(self.namespace, {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                "spec": {**spec, "acquireTime": now}}, _preload_content=False)
        else:
            meta = lease.setdefault("metadata", {})
            if owners and not meta.get("ownerReferences"):
                meta["ownerReferences"] = owners
            meta.setdefault("annotations", {}).update(annotations)
            lease["spec"] = {**(lease.get("spec") or {}), **spec}
            # The resourceVersion read goes back: a concurrent writer (a second
            # agent for the node, by mistake) makes this fail, not interleave.
            api.replace_namespaced_lease(self.name, self.namespace, lease, _preload_content=False)
        with self._lock:
            self._written = report
        self.writes += 1


class LeaseReports:
    """The controller's side (a ``ReportsReader``): what
    :class:`~sdn_egress.reports.AgentReports` gives from files, from the
    agents' Leases."""

    def __init__(self, api_client, namespace: str, fresh: float = FRESH, clock=time.monotonic):
        self.fresh = fresh
        self.clock = clock
        self._changed = threading.Event()
        self.informer = Informer(api_client, LEASES, on_change=self._changed.set, namespace=namespace,
                                 label_selector=SELECTOR)
        self._seen: dict[str, tuple[str, float]] = {}  # node -> (renewTime, when this controller saw it)
        self._outage_ended = (0.0, float("-inf"))  # (informer.recovered_at, our clock then)
        self._lock = threading.Lock()

    def start(self) -> "LeaseReports":
        self.informer.start()
        return self

    def stop(self) -> None:
        self.informer.stop()

    def read(self) -> dict[str, dict]:
        """node -> its report, with ``renewTime`` and ``age`` (seconds since
        this controller saw the Lease change, counted from the end of the last
        API outage at the earliest)."""
        now = self.clock()
        out = {}
        with self._lock:
            if self.informer.recovered_at != self._outage_ended[0]:
                self._outage_ended = (self.informer.recovered_at, now)
            for lease in self.informer.items():
                spec = lease.get("spec") or {}
                node = spec.get("holderIdentity")
                if not isinstance(node, str) or not node:
                    continue
                renew = str(spec.get("renewTime") or "")
                if self._seen.get(node, ("",))[0] != renew:
                    self._seen[node] = (renew, now)
                try:
                    report = json.loads(((lease.get("metadata") or {}).get("annotations") or {}).get(REPORT) or "{}")
                except ValueError:
                    report = {}
                if not isinstance(report, dict):
                    report = {}
                age = now - max(self._seen[node][1], self._outage_ended[1])
                out[node] = {**report, "node": node, "renewTime": renew, "age": age}
        return out

    def _judging(self) -> bool:
        return self.informer.synced.is_set() and not self.informer.failing

    def held(self) -> dict[str, str]:
        """EIP -> node from fresh reports (while the API cannot be watched,
        the last ones seen); two claims (a split brain): the latest renewal wins."""
        best: dict[str, tuple[str, str]] = {}
        judging = self._judging()
        for node, r in self.read().items():
            if judging and r["age"] > self.fresh:
                continue
            for eip in r.get("held_eips") or []:
                if eip not in best or r["renewTime"] > best[eip][0]:
                    best[eip] = (r["renewTime"], node)
        return {eip: node for eip, (_, node) in best.items()}

    def gone(self) -> set[str]:
        """Nodes whose Lease stopped being renewed; none while the API
        server cannot be watched (nothing to judge by)."""
        if not self._judging():
            return set()
        return {node for node, r in self.read().items() if r["age"] > self.fresh}

    def changed(self) -> bool:
        if self._changed.is_set():
            self._changed.clear()
            return True
        return False

