"""``sdn-egress controller``: snapshot -> allocate -> write status, whenever the state changes.

Standalone mode (``--manifests``) reads a manifest directory and writes
``allocation.json`` and ``errors.json`` into a status directory, which the
agents read.  Kubernetes mode (``--kubeconfig`` or ``--in-cluster``) watches
the API, and only the replica holding the Lease works: it keeps the
allocation in a ConfigMap and writes the objects' status and Events.  The
:class:`Controller` class holds the loop's body, so tests drive it without
processes: ``Controller(source, store).reconcile()``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
import time

from sdn_egress.allocation import Allocation, AllocationStore, FileAllocationStore, PolicyStatus, allocate
from sdn_egress.backoff import Backoff
from sdn_egress.reports import AgentReports, ReportsReader
from sdn_egress.source import StateSource

LOG = logging.getLogger(__name__)

RESYNC_INTERVAL = 30.0
LOCK_FILE = ".controller.lock"


def _eips(s: PolicyStatus) -> str:
    return ", ".join(str(ip) for ip in (s.eip_v4, s.eip_v6) if ip is not None)


def describe_policy(key: str, s: PolicyStatus) -> tuple[int, str]:
    """(log level, line) for one policy's status."""
    eips = _eips(s)
    failing = next((c for c in s.conditions if c.status != "True"), None)
    why = f" ({failing.reason}: {failing.message})" if failing else ""
    if not eips:
        return logging.WARNING, f"policy {key}: no EIP{why}"
    line = f"policy {key}: EIP {eips}"
    if s.node:
        line += f" on node {s.node}"
    if not s.ready:
        where = "" if s.node else " no gateway node;"
        return logging.WARNING, f"{line},{where} not ready{why}"
    return logging.INFO, line


def describe_changes(before: Allocation | None, after: Allocation) -> list[tuple[int, str]]:
    """What changed from ``before`` to ``after``, as (log level, line) pairs."""
    before = before or Allocation()
    lines: list[tuple[int, str]] = []
    for key, s in sorted(after.policies.items()):
        if before.policies.get(key) != s:
            lines.append(describe_policy(key, s))
    for key, s in sorted(before.policies.items()):
        if key not in after.policies:
            released = _eips(s)
            lines.append((logging.INFO, f"policy {key}: removed"
                          + (f", EIP {released} released" if released else "")))
    old_nodes = {a.ip: a.nodes for a in before.eips}
    for a in after.eips:
        if a.ip in old_nodes and old_nodes[a.ip] != a.nodes:
            lines.append((logging.INFO, f"EIP {a.ip}: gateway nodes {', '.join(a.nodes) or 'none'}"
                          f" (were {', '.join(old_nodes[a.ip]) or 'none'})"))
    old_errors, new_errors = set(before.errors), set(after.errors)
    lines.extend((logging.WARNING, f"invalid: {e}") for e in after.errors if e not in old_errors)
    lines.extend((logging.INFO, f"resolved: {e}") for e in before.errors if e not in new_errors)
    return lines


class Controller:
    """``store``: an :class:`AllocationStore` (standalone: a status
    directory; Kubernetes: ConfigMaps).
    ``publisher``: told of every pass's result (Kubernetes: status and
    Events).  ``reports``: the agents' reports of held EIPs, a
    :class:`~sdn_egress.reports.ReportsReader` (default: the files in the
    store's status directory, when it has one)."""

    def __init__(self, source: StateSource, store: AllocationStore, publisher=None,
                 reports: ReportsReader | None = None, wakers=()):
        self.source = source
        self.store = store
        self.publisher = publisher
        self.current: Allocation | None = None  # the last allocation saved
        self._loaded = False
        self.passes = 0
        if reports is None and store.status_dir:
            reports = AgentReports(store.status_dir)
        self.reports = reports
        self.wakers = tuple(wakers)  # more things whose changed() is worth a pass
        self.metrics = None  # sdn_egress.metrics.ControllerMetrics, when served
        self._gone: set[str] = set()

    def forget(self) -> None:
        """Read the stored allocation again at the next pass (a new leader's
        term: another replica may have written it meanwhile)."""
        self._loaded = False
        self.current = None
        self.passes = 0

    def previous(self) -> Allocation | None:
        """What the last pass saved; at start, what the store holds (a file
        that cannot be read is moved aside: allocation starts afresh)."""
        if not self._loaded:
            self._loaded = True
            try:
                self.current = self.store.load()
            except ValueError as exc:
                bad = self.store.set_aside()
                LOG.error("%s; allocating afresh (the unreadable allocation is kept as %s)", exc, bad)
                self.current = None
            # Incumbency is the stored allocation's, not this process's memory:
            # a restart or a new leader decides as the last pass did.
            if self.current is not None:
                self.source.remember(self.current.accepted)
        return self.current

    def reconcile(self) -> Allocation:
        """One pass; returns the allocation it saved."""
        started = time.monotonic()
        previous = self.previous()
        state = self.source.snapshot()
        if self.reports is not None:
            state = self._without_gone_nodes(state)
        alloc = allocate(state, previous, held=self._held())
        if self.metrics:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            self.metrics.observe(previous, alloc)
        changed = self.store.save(alloc)
        self.current = alloc
        if self.publisher is not None:
            self.publisher.publish(state, alloc, previous)
        for level, line in describe_changes(previous, alloc):
            LOG.log(level, "%s", line)
        if changed or self.passes == 0:
            ready = sum(s.ready for s in alloc.policies.values())
            LOG.info("allocation: %d policies (%d ready), %d EIPs, %d errors -> %s",
                     len(alloc.policies), ready, len(alloc.eips), len(alloc.errors),
                     self.store.where)
        self.passes += 1
        return alloc

    def _held(self) -> dict[str, str] | None:
        """Who holds each EIP, as the election should see it: the data plane's
        reports, except for a planned move (``sdn-egress move``), whose target
        counts as holder until it reports holding the EIP, then the move is done."""
        if self.reports is None:
            return None
        held = self.reports.held()
        moves, finish = self.store.read_moves(), self.store.finish_moves
        done = {eip for eip, node in moves.items() if held.get(eip) == node}
        for eip, node in moves.items():
            if eip not in done:
                held[eip] = node
        if done:
            for eip in sorted(done):
                LOG.info("EIP %s: planned move to %s done", eip, moves[eip])
            finish(done)
        return held

    def _without_gone_nodes(self, state):
        """Nodes whose agent stopped reporting (heartbeat missed) are not
        ready: the election drops them from every EIP's gateway list, the
        data plane having already failed over; they return as standbys when
        their agent reports again."""
        gone = self.reports.gone() & set(state.nodes)
        if gone != self._gone:
            for node in sorted(gone - self._gone):
                LOG.warning("node %s: no agent report for %.0f s; not eligible as a gateway",
                            node, self.reports.fresh)
            for node in sorted(self._gone - gone):
                LOG.info("node %s: its agent reports again; eligible as a gateway", node)
            self._gone = gone
        if not gone:
            return state
        nodes = {name: (dataclasses.replace(n, ready=False) if name in gone else n)
                 for name, n in state.nodes.items()}
        return dataclasses.replace(state, nodes=nodes)

    def run(self, stop: threading.Event, resync_interval: float = RESYNC_INTERVAL) -> None:
        """Reconcile at start, on every change of the source and every
        ``resync_interval`` seconds, until ``stop`` is set.  A failing pass is
        logged and retried with backoff; nothing stops the loop but ``stop``."""
        backoff = Backoff(most=10.0)
        while not stop.is_set():
            try:
                self.reconcile()
                backoff.succeeded()
            except Exception:  # noqa: BLE001 - the loop must live
                LOG.exception("reconcile failed; retrying in %.1f s", backoff.failed())
            deadline = time.monotonic() + (backoff.delay or resync_interval)
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if backoff:
                    stop.wait(min(remaining, 0.5))
                elif (self.source.wait_for_change(min(remaining, 0.1))
                      or (self.reports is not None and self.reports.changed())
                      or any(w.changed() for w in self.wakers)):
                    break


def _cidr(value: str):
    import ipaddress

    import netaddr

    try:
        return netaddr.IPNetwork(str(ipaddress.ip_network(value, strict=False)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a CIDR") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn_egress.kube.client import add_source_arguments

    add_source_arguments(parser, "standalone: read the cluster state from the manifests in this directory")
    parser.add_argument("--status", metavar="DIR",
                        help="write allocation.json and errors.json into this directory "
                             "(required with --manifests; with Kubernetes, a copy of the ConfigMap)")
    parser.add_argument("--cluster-cidr", metavar="CIDR", action="append", default=[], type=_cidr,
                        help="extra CIDR never steered (service CIDR and the like); repeatable")
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on 127.0.0.1:PORT; off by default")
    parser.add_argument("--resync-interval", type=float, default=RESYNC_INTERVAL, metavar="SECONDS",
                        help="reconcile at least this often even without changes")
    kube = parser.add_argument_group("Kubernetes mode")
    kube.add_argument("--namespace", help="the controller's namespace: its Lease and the allocation "
                                          "ConfigMap (default: $POD_NAMESPACE, the pod's, else sdn-egress)")
    kube.add_argument("--lease-name", default="sdn-egress-controller", help="the leader election Lease")
    kube.add_argument("--agent-lease-namespace", metavar="NAMESPACE",
                      help="where the agents keep their Leases (default: sdn-egress-agents)")
    kube.add_argument("--identity", help="this replica's name in the Lease (default: $POD_NAME, else the host name)")
    kube.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS")
    kube.add_argument("--renew-deadline", type=float, default=10.0, metavar="SECONDS")
    kube.add_argument("--retry-period", type=float, default=2.0, metavar="SECONDS")


def _serve_metrics(controller: Controller, args: argparse.Namespace) -> None:
    if args.metrics_port:
        from sdn_egress.metrics import ControllerMetrics
        controller.metrics = ControllerMetrics()
        controller.metrics.serve(args.metrics_port)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum, frame):
        LOG.info("controller: signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def run(args: argparse.Namespace) -> int:
    if args.manifests:
        return _run_manifests(args)
    return _run_kube(args)


def _run_manifests(args: argparse.Namespace) -> int:
    import fcntl

    from sdn_egress.source import ManifestDirSource

    if not args.status:
        LOG.error("controller: --status DIR is required with --manifests")
        return 2
    if not os.path.isdir(args.manifests):
        LOG.error("controller: --manifests %s is not a directory", args.manifests)
        return 2
    os.makedirs(args.status, exist_ok=True)
    lock = open(os.path.join(args.status, LOCK_FILE), "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        LOG.error("controller: another controller is writing to %s", args.status)
        lock.close()
        return 1
    try:
        controller = Controller(ManifestDirSource(args.manifests, extra_cluster_cidrs=args.cluster_cidr),
                                FileAllocationStore(args.status))
        _serve_metrics(controller, args)
        if args.once:
            controller.reconcile()
            return 0
        stop = _stop_on_signals()
        LOG.info("controller: watching %s, writing status to %s", args.manifests, args.status)
        controller.run(stop, resync_interval=args.resync_interval)
        return 0
    finally:
        lock.close()


def _run_kube(args: argparse.Namespace) -> int:
    import socket

    from sdn_egress.kube.client import api_client_from, pod_namespace
    from sdn_egress.kube.events import EventRecorder
    from sdn_egress.reports.leases import NAMESPACE as LEASE_NAMESPACE, LeaseReports
    from sdn_egress.controller.leader import LeaderElector
    from sdn_egress.source.kube import KubeSource
    from sdn_egress.controller.publish import StatusPublisher
    from sdn_egress.allocation.store_kube import KubeAllocationStore, MovesWatch

    api = api_client_from(args, "controller")
    if api is None:
        return 2
    namespace = args.namespace or pod_namespace()
    identity = args.identity or os.environ.get("POD_NAME") or socket.gethostname()
    try:
        elector = LeaderElector(api, namespace, args.lease_name, identity, lease_duration=args.lease_duration,
                                renew_deadline=args.renew_deadline, retry_period=args.retry_period)
    except ValueError as exc:
        LOG.error("controller: %s", exc)
        return 2
    from sdn_egress.kube.resources import CONTROLLER_WATCHED  # allocation and election read no pod
    source = KubeSource(api, extra_cluster_cidrs=args.cluster_cidr, resources=CONTROLLER_WATCHED).start()
    reports = LeaseReports(api, args.agent_lease_namespace or LEASE_NAMESPACE).start()
    store = KubeAllocationStore(api, namespace, mirror=FileAllocationStore(args.status) if args.status else None)
    # Its own ConfigMap, watched: a planned move asked for there wakes the controller.
    own = MovesWatch(api, namespace).start()
    publisher = StatusPublisher(api, source, EventRecorder(api, instance=identity))
    controller = Controller(source, store, publisher=publisher, reports=reports, wakers=(own,))
    _serve_metrics(controller, args)
    stop = _stop_on_signals()
    try:
        if args.once:
            if not elector.try_acquire_or_renew():
                LOG.error("controller: %s holds the lease %s/%s", elector.holder(), namespace, args.lease_name)
                return 1
            try:
                if not source.wait_synced(stop=stop) or not reports.informer.synced.wait(30):
                    return 1
                controller.reconcile()
                return 0
            finally:
                elector.release()

        def lead(leading: threading.Event) -> None:
            if not source.wait_synced(stop=leading):
                return
            while not reports.informer.synced.wait(0.1):  # the agents' Leases, before any election
                if leading.is_set():
                    return
            LOG.info("controller %s: leading; allocation in %s", identity, store.where)
            controller.forget()
            controller.run(leading, resync_interval=args.resync_interval)

        LOG.info("controller %s: standing for election (lease %s/%s)", identity, namespace, args.lease_name)
        elector.run(stop, lead)
        return 0
    finally:
        source.stop()
        reports.stop()
        own.stop()
