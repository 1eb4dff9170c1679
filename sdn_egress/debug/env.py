"""Where the debugging commands (``flows``, ``trace``, ``status``) look.

One interface, :class:`Environment`, two implementations:

- :class:`LabEnv`: the netns lab (``--lab-state``): every node's switch and
  kernel are reachable from this machine through ``ip netns exec``.
- :class:`ClusterEnv`: a real cluster seen from one of its nodes (the agent's
  pod, ``kubectl exec``) or from an administrator's machine: the state, the
  allocation and the agents' reports from the API (``--kubeconfig`` or
  ``--in-cluster``) or from a status directory (standalone); the switch,
  the agent's flow record and the routing of *this* node only (its OVS run
  directory, ``/var/run/sdn-egress``, ``ip route``).  Another node's switch
  is not reachable from here: asking for it is an :class:`EnvError` that
  says where to run the command instead.

The commands take their environment from their flags (:func:`from_args`).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import time
from typing import Protocol

from sdn_egress.reports import FRESH

OVS_RUNDIR = "/var/run/openvswitch"
RECORDS_DIR = "/var/run/sdn-egress"  # where the DaemonSet's agent records its status and flows
AGENT_SELECTOR = "app.kubernetes.io/component=agent"


class EnvError(RuntimeError):
    """The environment cannot answer this question (from here)."""


class Environment(Protocol):
    where: str  # for messages: "the lab at DIR", "the cluster (in-cluster), from node alpha"

    def cluster_state(self):
        """The cluster state as the agents parse it (``model.ClusterState``)."""

    def allocation(self):
        """The controller's allocation (``allocation.Allocation``; empty when none yet)."""

    def reports(self) -> dict[str, dict]:
        """node -> its agent's last report, ``time`` its epoch seconds."""

    def held(self) -> dict[str, str]:
        """EIP -> the node whose fresh report holds it."""

    def desired_flows(self, node: str) -> dict:
        """The agent's record of the flows it wants (``records.load_desired``);
        FileNotFoundError when the agent has not written one."""

    def switch(self, node: str):
        """The node's Open vSwitch (``OvsInstance``: vsctl, ofctl, appctl)."""

    def run(self, node: str, argv: list[str]) -> subprocess.CompletedProcess:
        """A command in the node's network namespace (``ip route get ...``)."""

    def address(self, node: str) -> str:
        """The node's underlay (tunnel) address."""

    def agent_alive(self, node: str, report: dict) -> bool | None:
        """Whether the node's agent is alive (None: cannot tell)."""

    def bfd(self, node: str, report: dict) -> dict[str, str]:
        """tunnel port -> BFD state, as the node's switch has it."""


def bfd_of(ovs) -> dict[str, str]:
    """tunnel port -> BFD state, from a node's OVSDB."""
    out = ovs.vsctl("--columns=name,bfd_status", "--format=json", "find", "Interface", "type=geneve")
    result = {}
    for name, status in json.loads(out)["data"]:
        pairs = dict(status[1]) if isinstance(status, list) and status[0] == "map" else {}
        if pairs:
            result[name] = pairs.get("state", "?") + ("" if pairs.get("forwarding") == "true" else " (not forwarding)")
    return result


class LabEnv:
    def __init__(self, lab):
        self.lab = lab
        lab.load()  # LabError "no lab is up" when there is none
        self.where = f"the lab at {lab.state_dir}"

    def _node(self, node: str) -> None:
        names = [n.name for n in self.lab.topology().nodes]
        if node not in names:
            raise EnvError(f"no node named {node!r} in {self.where} (nodes: {', '.join(names)})")

    def cluster_state(self):
        return self.lab.cluster_state()

    def allocation(self):
        from sdn_egress.allocation import Allocation, FileAllocationStore
        return FileAllocationStore(self.lab.status_dir).load() or Allocation()

    def reports(self) -> dict[str, dict]:
        from sdn_egress.reports import AgentReports
        return AgentReports(self.lab.status_dir).read()

    def held(self) -> dict[str, str]:
        from sdn_egress.reports import AgentReports
        return AgentReports(self.lab.status_dir).held()

    def desired_flows(self, node: str) -> dict:
        from sdn_egress.reports.flowrecords import load_desired
        self._node(node)
        return load_desired(self.lab.status_dir, node)

    def switch(self, node: str):
        self._node(node)
        return self.lab.ovs(node)

    def run(self, node: str, argv: list[str]) -> subprocess.CompletedProcess:
        self._node(node)
        return self.lab.exec(node, argv, check=False)

    def address(self, node: str) -> str:
        return self.lab.address(node)

    def agent_alive(self, node: str, report: dict) -> bool | None:
        return report.get("pid") == self.lab.agent_pid(node) and self.lab.ovs(node).running()

    def bfd(self, node: str, report: dict) -> dict[str, str]:
        ovs = self.lab.ovs(node)
        try:
            return bfd_of(ovs) if ovs.running() else {}
        except Exception:  # noqa: BLE001 - a node being killed right now
            return {}


def lease_time(renew: str) -> float:
    """A Lease's ``renewTime`` (RFC 3339, ``Z`` or an offset) -> epoch seconds; 0 when unreadable."""
    try:
        return datetime.datetime.fromisoformat(renew.replace("Z", "+00:00")).timestamp()
    except (AttributeError, ValueError):
        return 0.0


class ClusterEnv:
    """A real cluster, seen from this machine.

    ``api``: a ``kubernetes`` ApiClient (state, allocation ConfigMap, Leases),
    or None with ``status_dir`` (standalone: ``allocation.json``,
    ``nodes/*.json``) and ``manifests``.  ``local``: the node this command
    runs on (``$NODE_NAME`` in the agent's pod), whose switch (``ovs_rundir``)
    and agent records (``records``) are here; None trusts the user that the
    node asked about is this one."""

    def __init__(self, *, api=None, namespace: str = "sdn-egress", lease_namespace: str = "sdn-egress-agents",
                 status_dir: str | None = None, manifests: str | None = None, local: str | None = None,
                 ovs_rundir: str = OVS_RUNDIR, records: str = RECORDS_DIR, extra_cluster_cidrs=(),
                 where: str = "the cluster", timeout: float = 30.0, clock=time.time):
        if api is None and status_dir is None:
            raise EnvError("no cluster to look at: --kubeconfig, --in-cluster or --status DIR")
        self.api, self.namespace, self.lease_namespace = api, namespace, lease_namespace
        self.status_dir, self.manifests = status_dir, manifests
        self.local, self.ovs_rundir, self.records = local, ovs_rundir, records
        self.extra = tuple(extra_cluster_cidrs)
        self.timeout, self.clock = timeout, clock
        self.where = where + (f", from node {local}" if local else "")
        self._state = self._alloc = self._reports = None

    # -- the cluster: API or status directory -----------------------------------------------
    @contextlib.contextmanager
    def _asking(self, what: str):
        """An API server that does not answer is one clear error, not a traceback."""
        from kubernetes.client.rest import ApiException
        try:
            yield
        except (ApiException, EnvError):
            raise
        except Exception as exc:  # noqa: BLE001 - urllib3's: refused, timed out, name unknown
            if self.api is None:
                raise
            raise EnvError(f"the API server {self.api.configuration.host} does not answer ({what}): "
                           f"{exc}") from None

    def cluster_state(self):
        if self._state is None:
            with self._asking("the cluster's objects"):
                self._state = self._read_state()
        return self._state

    def _read_state(self):
        """One snapshot of the source the agents use, with the incumbency the
        stored allocation records (as a restarted controller starts from)."""
        import netaddr

        from sdn_egress.model import ClusterState
        extra = tuple(netaddr.IPNetwork(c) for c in self.extra)
        if self.api is None:
            if not self.manifests:
                return ClusterState(extra_cluster_cidrs=extra)
            from sdn_egress.source import ManifestDirSource
            source = ManifestDirSource(self.manifests, extra_cluster_cidrs=extra)
            source.remember(self.allocation().accepted)
            return source.snapshot()
        from sdn_egress.source.kube import KubeSource
        extra += tuple(netaddr.IPNetwork(c) for c in cluster_cidrs(self.api, self.namespace))
        source = KubeSource(self.api, extra_cluster_cidrs=extra)
        source.remember(self.allocation().accepted)
        source.start()
        try:
            if not source.wait_synced(timeout=self.timeout):
                raise EnvError(f"the API server listed nothing within {self.timeout:.0f} s")
            return source.snapshot()
        finally:
            source.stop()

    def allocation(self):
        from sdn_egress.allocation import Allocation
        if self._alloc is None:
            if self.api is None:
                from sdn_egress.allocation import FileAllocationStore
                self._alloc = FileAllocationStore(self.status_dir).load() or Allocation()
            else:
                from sdn_egress.allocation.store_kube import KubeAllocationStore
                with self._asking(f"ConfigMap {self.namespace}/sdn-egress-allocation"):
                    self._alloc = KubeAllocationStore(self.api, self.namespace).load() or Allocation()
        return self._alloc

    def reports(self) -> dict[str, dict]:
        if self._reports is None:
            if self.api is None:
                from sdn_egress.reports import AgentReports
                self._reports = AgentReports(self.status_dir).read()
            else:
                self._reports = self._lease_reports()
        return self._reports

    def _lease_reports(self) -> dict[str, dict]:
        from sdn_egress.reports.leases import LeaseReports
        leases = LeaseReports(self.api, self.lease_namespace).start()
        try:
            if not leases.informer.synced.wait(self.timeout):
                raise EnvError(f"the agents' Leases in namespace {self.lease_namespace} could not be "
                               f"listed within {self.timeout:.0f} s")
            # A one-shot look has no history: a report's age is now - renewTime
            # (the node's clock against this one).
            return {node: {**r, "time": lease_time(r.get("renewTime"))} for node, r in leases.read().items()}
        finally:
            leases.stop()

    def held(self) -> dict[str, str]:
        now = self.clock()
        best: dict[str, tuple[float, str]] = {}
        for node, r in self.reports().items():
            t = r.get("time") or 0
            if now - t > FRESH:
                continue
            for eip in r.get("held_eips") or []:
                if eip not in best or t > best[eip][0]:
                    best[eip] = (t, node)
        return {eip: node for eip, (_, node) in best.items()}

    def agent_alive(self, node: str, report: dict) -> bool | None:
        t = report.get("time")
        if not isinstance(t, (int, float)) or not t:
            return None
        return self.clock() - t <= FRESH

    def bfd(self, node: str, report: dict) -> dict[str, str]:
        if isinstance(report.get("bfd"), dict):
            return {str(k): str(v) for k, v in report["bfd"].items()}
        if node == self.local:
            try:
                return bfd_of(self.switch(node))
            except Exception:  # noqa: BLE001 - no OVS here: nothing to show
                return {}
        return {}

    def address(self, node: str) -> str:
        from sdn_egress.view import underlay_address
        n = self.cluster_state().nodes.get(node)
        addr = underlay_address(n) if n else None  # IPv4, or IPv6 on an IPv6-only cluster
        if addr is None:
            raise EnvError(f"Node {node}: no address in status.addresses")
        return str(addr)

    # -- this node -----------------------------------------------------------------------
    def _here(self, node: str, what: str) -> None:
        """Refuse what only ``node`` itself can answer, unless this is it.
        Standalone (no API) with no node named, the user is trusted to be on
        the node asked about; with the API (a kubeconfig on any machine) this
        is no node until ``$NODE_NAME`` or ``--here`` says which."""
        if self.local == node or (self.local is None and self.api is None):
            return
        this = (f"this is node {self.local}" if self.local else
                "this machine is no node it knows of ($NODE_NAME and --here unset)")
        raise EnvError(
            f"{what} of node {node} is on {node}, and {this}: run the command there, "
            f"e.g. kubectl exec -n {self.namespace} $(kubectl get pod -n {self.namespace} -o name "
            f"-l {AGENT_SELECTOR} --field-selector spec.nodeName={node}) -- sdn-egress ...")

    def desired_flows(self, node: str) -> dict:
        from sdn_egress.reports.flowrecords import load_desired
        self._here(node, "the agent's flow record")
        return load_desired(self.records, node)

    def switch(self, node: str):
        from ovs_setup.daemons import OvsInstance
        self._here(node, "the switch")
        if not os.path.exists(os.path.join(self.ovs_rundir, "db.sock")):
            raise EnvError(f"no Open vSwitch here: {self.ovs_rundir}/db.sock does not exist "
                           "(--ovs-rundir names the OVS run directory)")
        return OvsInstance(self.ovs_rundir)

    def run(self, node: str, argv: list[str]) -> subprocess.CompletedProcess:
        self._here(node, "the routing")
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)


# -- the commands' flags ---------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    from sdn_egress.lab.lab import DEFAULT_STATE_DIR
    lab = parser.add_argument_group("the lab")
    lab.add_argument("--lab-state", default=DEFAULT_STATE_DIR, help=f"the lab {what} (default when no "
                     "cluster flag is given and this is not a pod)")
    real = parser.add_argument_group(
        "a real cluster (in the agent's pod no flag is needed: --in-cluster and $NODE_NAME are implied)")
    where = real.add_mutually_exclusive_group()
    where.add_argument("--kubeconfig", metavar="PATH", help="the cluster this kubeconfig reaches")
    where.add_argument("--in-cluster", action="store_true", help="the cluster of this pod's service account")
    where.add_argument("--status", metavar="DIR", help="standalone: the controller's status directory")
    real.add_argument("--manifests", metavar="DIR", help="with --status: the manifest directory")
    real.add_argument("--context", help="the kubeconfig context (default: its current one)")
    real.add_argument("--namespace", default=None,
                      help="sdn-egress's namespace (default: $POD_NAMESPACE, else sdn-egress)")
    real.add_argument("--lease-namespace", default="sdn-egress-agents",
                      help="where the agents keep their Leases (default sdn-egress-agents)")
    real.add_argument("--ovs-rundir", default=None, metavar="DIR",
                      help=f"this node's OVS run directory (default {OVS_RUNDIR})")
    real.add_argument("--records", default=None, metavar="DIR",
                      help=f"the agent's records on this node (its --status; default {RECORDS_DIR}, "
                           "standalone the --status directory)")
    real.add_argument("--here", metavar="NODE", default=None,
                      help="the node this runs on (default $NODE_NAME; unset: whichever node is asked)")


def in_pod() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and os.path.exists(
        "/var/run/secrets/kubernetes.io/serviceaccount/token")


def from_args(args: argparse.Namespace) -> Environment:
    """The environment the flags name: a cluster flag, else the agent's pod
    (in-cluster), else the lab."""
    real = args.kubeconfig or args.in_cluster or args.status or args.ovs_rundir or args.records
    if not real and in_pod():
        args.in_cluster = real = True
    if not real:
        from sdn_egress.lab import Lab
        return LabEnv(Lab(args.lab_state))
    local = args.here or os.environ.get("NODE_NAME") or None
    rundir = args.ovs_rundir or OVS_RUNDIR
    if args.kubeconfig or args.in_cluster:
        from sdn_egress.kube.client import api_client, pod_namespace
        try:
            api = api_client(args.kubeconfig, args.context)
        except Exception as exc:  # noqa: BLE001 - the config's own errors are many kinds
            raise EnvError(f"no Kubernetes API client: {exc}") from None
        namespace = args.namespace or pod_namespace()
        # Nothing is asked of the API server until a command needs it: `flows`
        # reads only this node's switch and records, and works while it is away.
        return ClusterEnv(api=api, namespace=namespace, lease_namespace=args.lease_namespace,
                          local=local, ovs_rundir=rundir, records=args.records or RECORDS_DIR,
                          where="the cluster " + (f"of {args.kubeconfig}" if args.kubeconfig else "(in-cluster)"))
    status = args.status or args.records
    return ClusterEnv(status_dir=status, manifests=args.manifests, local=local, ovs_rundir=rundir,
                      records=args.records or status, where=f"the status directory {status}")


def cluster_cidrs(api, namespace: str) -> tuple[str, ...]:
    """``CLUSTER_CIDRS`` of ConfigMap ``sdn-egress-config``, the ranges the
    deployment never steers; in the agent's pod, where its role may not read
    that ConfigMap, the same from its environment (``envFrom`` of it)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException
    try:
        cm = client.CoreV1Api(api).read_namespaced_config_map("sdn-egress-config", namespace)
        return tuple(((cm.data or {}).get("CLUSTER_CIDRS") or "").split())
    except ApiException as exc:
        if exc.status not in (403, 404):
            raise EnvError(f"ConfigMap {namespace}/sdn-egress-config: HTTP {exc.status} {exc.reason}") from None
    return tuple(os.environ.get("CLUSTER_CIDRS", "").split())
