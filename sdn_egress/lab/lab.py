"""A multi-node cluster in network namespaces on one machine.

- a fabric namespace with two Linux bridges: the underlay (192.0.2.0/24,
  2001:db8::/64) and the external LAN (198.51.100.0/24, 2001:db8:100::/64);
- a router namespace joining them (no NAT, IPv4 and IPv6 forwarded);
- the families of the topology's ``ipFamilies`` (IPv4, IPv6 or both) on every
  node, pod and external host; the first one is the nodes' InternalIP the
  tunnels and BFD run over;
- per node a namespace with its own ovsdb-server and ovs-vswitchd (userspace
  datapath), ``br-ex`` holding the uplink and the node IP, ``br-int``, its
  agent process, Calico-style routed pods and a CNI-style masquerade;
- per pod a namespace; per external host a namespace running the echo service.

Where the cluster's objects live is chosen once, at ``up``
(:mod:`sdn_egress.lab.objects`): with ``kube=True`` in an API server
(:mod:`sdn_egress.lab.kubeapi`) in the router namespace, on 192.0.2.1:6443,
the controller (in the router namespace) and the agents taking their state
through the Kubernetes source, as in a cluster; otherwise in a manifest
directory they read.  ``apply``, ``delete`` and ``label`` write there.

Everything the lab makes is recorded in ``STATE/lab.json`` as it is made, so
``down()`` removes it all, also after a crash of whatever brought it up.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import yaml

from ovs_setup.daemons import process_alive as _alive, stop_all_under, terminate as _kill
from sdn_egress.lab import topology as topo_mod
from sdn_egress.lab.network import Network
from sdn_egress.lab.objects import ApiObjects, ManifestObjects, ObjectStore
from sdn_egress.lab.pods import Pods, _pod_record
from sdn_egress.lab.processes import Processes
from sdn_egress.lab.shell import LabError, sh
from sdn_egress.lab.topology import Topology
from sdn_egress.lab.traffic import Traffic
from sdn_egress.fileio import write_json_atomic

DEFAULT_STATE_DIR = os.environ.get("SDN_EGRESS_LAB_DIR", "/run/sdn-egress/lab")


class Lab(Network, Processes, Pods, Traffic):
    """The lab, composed: its names and state file, ``up``, addresses and exec,
    status and ``down`` here; the network (:mod:`.network`), the processes
    (:mod:`.processes`) and the pods and objects (:mod:`.pods`) in mixins."""

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR, prefix: str = "se"):
        self.state_dir = os.path.abspath(state_dir)
        self.prefix = prefix
        self._state: dict | None = None
        if os.path.exists(self.state_file):  # a lab is up here: its prefix wins
            try:
                self.load()
            except (ValueError, KeyError):
                pass  # damaged state: down() still cleans by the given prefix

    # -- names -----------------------------------------------------------------------
    def ns_fabric(self) -> str:
        return f"{self.prefix}-fabric"

    def ns_router(self) -> str:
        return f"{self.prefix}-router"

    def ns_node(self, node: str) -> str:
        return f"{self.prefix}-n-{node}"

    def ns_pod(self, index: int) -> str:
        return f"{self.prefix}-p{index}"

    def ns_external(self, index: int) -> str:
        return f"{self.prefix}-x{index}"

    @property
    def manifests(self) -> str:
        return os.path.join(self.state_dir, "manifests")

    @property
    def status_dir(self) -> str:
        return os.path.join(self.state_dir, "status")

    @property
    def kube_dir(self) -> str:
        return os.path.join(self.state_dir, "kube")

    @property
    def kubeconfig(self) -> str:
        """The kubeconfig the controller and agents use (the API over the underlay)."""
        return ApiObjects(self.kube_dir).kubeconfig

    @property
    def kube(self) -> bool:
        return bool(self.load().get("kube"))

    @property
    def objects(self) -> ObjectStore:
        """Where this lab's cluster objects live, as chosen at ``up``."""
        return ApiObjects(self.kube_dir) if self.kube else ManifestObjects(self.manifests)

    def kube_api(self):
        """A client of the lab's API server (over its Unix socket)."""
        if not self.kube:
            raise LabError("this lab has no API server (lab up --kube)")
        return ApiObjects(self.kube_dir).client()

    def node_dir(self, node: str) -> str:
        return os.path.join(self.state_dir, "nodes", node)

    # -- state file ------------------------------------------------------------------
    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "lab.json")

    def load(self) -> dict:
        if self._state is None:
            try:
                with open(self.state_file) as f:
                    self._state = json.load(f)
            except FileNotFoundError:
                raise LabError(f"no lab is up (no {self.state_file})") from None
            self.prefix = self._state["prefix"]
        return self._state

    def _save(self) -> None:
        write_json_atomic(self.state_file, self._state, sort_keys=True)

    def topology(self) -> Topology:
        return topo_mod.parse(self.load()["topology"])

    def is_up(self) -> bool:
        return os.path.exists(self.state_file)

    # -- up ------------------------------------------------------------------------------
    def up(self, topology_path: str | None = None, manifests_dir: str | None = None,
           agents: bool = True, force: bool = False, kube: bool = False) -> None:
        topology_path = topology_path or topo_mod.default_topology_path()
        with open(topology_path) as f:
            raw = yaml.safe_load(f)
        topo = topo_mod.parse(raw)  # raises TopologyError naming the field
        if kube and topo_mod.IPV4 not in topo.families:
            raise LabError("lab up --kube: the API server listens on the router's IPv4 underlay address "
                           f"{topo_mod.ROUTER_UNDERLAY_IP}: give ipFamilies [IPv4, IPv6] (an IPv6-only lab runs "
                           "with manifests)")
        if self.is_up():
            if not force:
                raise LabError(f"a lab is already up in {self.state_dir} (lab down first, or --force)")
            self.down()
        os.makedirs(self.state_dir, exist_ok=True)
        for d in ("manifests/cluster", "manifests/user", "status", "nodes", "externals"):
            os.makedirs(os.path.join(self.state_dir, d), exist_ok=True)
        self._state = {"prefix": self.prefix, "topology": raw, "pids": {}, "agents": agents,
                       "namespaces": [], "started": time.time(), "kube": kube,
                       "pods": [_pod_record(p) for p in topo.pods], "next_pod_index": len(topo.pods),
                       "agent_args": []}
        self._save()
        try:
            self._build(topo, agents)
            if manifests_dir:
                self.apply(manifests_dir)
        except BaseException:
            self.down()
            raise

    # -- addresses and exec -------------------------------------------------------------
    def host_ns(self, host: str) -> str:
        topo = self.topology()
        if host == "router":
            return self.ns_router()
        for n in topo.nodes:
            if n.name == host:
                return self.ns_node(host)
        for x in topo.externals:
            if x.name == host:
                return self.ns_external(x.index)
        return self.ns_pod(self.pod(host).index)

    def address(self, host: str, family: str | None = None) -> str:
        """``host``'s address (the router's on the underlay) of ``family``
        (IPv4 or IPv6), by default of the lab's primary family."""
        topo = self.topology()
        family = family or topo.families[0]
        if family not in topo.families:
            raise LabError(f"this lab has no {family} (ipFamilies: {', '.join(topo.families)})")
        if host == "router":
            return topo_mod.router_underlay_ip(family)
        for n in topo.nodes:
            if n.name == host:
                return n.ip_of(family)
        for x in topo.externals:
            if x.name == host:
                return x.ip_of(family)
        return self.pod(host).ip_of(family)

    def exec(self, host: str, cmd: list[str], check: bool = True, timeout: float | None = 60,
             input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002 - subprocess.run's name
        proc = subprocess.run(["ip", "netns", "exec", self.host_ns(host), *cmd], capture_output=True,
                              text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise LabError(f"{host}: {' '.join(cmd)} exited {proc.returncode}: "
                           f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def popen(self, host: str, cmd: list[str]) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.host_ns(host), *cmd], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)

    def echo_seen(self, external: str) -> list[dict]:
        path = os.path.join(self.state_dir, "externals", external, "seen.jsonl")
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict:
        """The lab's addresses and processes.  ``ip``/``pod_cidr`` and the
        lab-wide ranges are the primary family's (IPv4 in a dual-stack lab);
        ``ips``/``pod_cidrs`` and ``families`` give every family's."""
        st = self.load()
        topo = self.topology()
        fams = {f: _family_plan(f) for f in topo.families}
        primary = fams[topo.families[0]]
        out = {
            "state_dir": self.state_dir, "prefix": self.prefix, "ip_families": list(topo.families),
            "families": fams, **{k: primary[k] for k in ("underlay", "external_lan", "cluster_pod_cidr",
                                                         "eip_range")},
            "router": {**primary["router"], "netns": self.ns_router()},
            "pod_cidrs": {n.name: n.pod_cidr for n in topo.nodes},
            "nodes": [], "pods": [], "externals": [],
            "controller": {"alive": _alive(st["pids"].get("controller"))},
        }
        for n in topo.nodes:
            agent = self.agent_status(n.name)
            out["nodes"].append({"name": n.name, "ip": n.ip, "ips": list(n.ips), "pod_cidr": n.pod_cidr,
                                 "pod_cidrs": list(n.pod_cidrs), "labels": n.labels,
                                 "netns": self.ns_node(n.name),
                                 "agent": {"alive": _alive(st["pids"].get(f"agent:{n.name}")),
                                           "passes": agent.get("passes", 0), "error": agent.get("error"),
                                           "switches": agent.get("switches", {})}})
        for p in self.pods():
            try:
                labels = self.pod_labels(p.key)
            except (OSError, LabError):
                labels = p.labels
            out["pods"].append({"namespace": p.namespace, "name": p.name, "ip": p.ip,
                                "ips": list(p.addresses), "node": p.node,
                                "labels": labels, "netns": self.ns_pod(p.index)})
        for x in topo.externals:
            out["externals"].append({"name": x.name, "ip": x.ip, "ips": list(x.ips),
                                     "netns": self.ns_external(x.index),
                                     "mtu": x.mtu or 1500})
        for key, fname in (("allocation", "allocation.json"), ("errors", "errors.json")):
            try:
                with open(os.path.join(self.status_dir, fname)) as f:
                    out[key] = json.load(f)
            except (FileNotFoundError, ValueError):
                out[key] = {} if key == "allocation" else []
        if isinstance(out["errors"], dict):  # tolerate {"errors": [...]}
            out["errors"] = out["errors"].get("errors", [])
        return out

    # -- down ---------------------------------------------------------------------------
    def down(self) -> None:
        """Remove every namespace, process and file of this lab; works after a
        crash (state on disk) and when nothing is up."""
        st = None
        try:
            st = self.load()
        except (LabError, ValueError):
            pass
        if st:
            for pid in st.get("pids", {}).values():
                _kill(pid)
        stop_all_under(self.state_dir) if os.path.isdir(self.state_dir) else None
        names = set(st.get("namespaces", [])) if st else set()
        listing = sh("ip", "netns", "list", check=False).stdout
        names |= {line.split()[0] for line in listing.splitlines()
                  if line.split() and line.split()[0].startswith(self.prefix + "-")}
        for ns in sorted(names):
            # Anything still running inside (a test's client, a crashed agent).
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                _kill(int(pid), timeout=2)
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self._state = None


def _family_plan(family: str) -> dict:
    """The lab-wide ranges of one family (documentation ranges)."""
    v6 = family == topo_mod.IPV6
    return {"underlay": topo_mod.UNDERLAY6 if v6 else topo_mod.UNDERLAY,
            "external_lan": topo_mod.EXTERNAL_LAN6 if v6 else topo_mod.EXTERNAL_LAN,
            "cluster_pod_cidr": topo_mod.cluster_pod_cidr(family),
            "eip_range": topo_mod.EIP_RANGE6 if v6 else topo_mod.EIP_RANGE,
            "router": {"underlay_ip": topo_mod.router_underlay_ip(family),
                       "external_ip": topo_mod.router_external_ip(family)}}
