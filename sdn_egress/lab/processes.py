"""The lab's processes: spawning them (recorded in the state as they
start), the controller, the agents and the API server; failures (kill, revive,
cut, heal); what the agents report (status, passes, log) and BFD.  A mixin of
:class:`sdn_egress.lab.lab.Lab`."""
from __future__ import annotations

import json
import os
import signal
import subprocess

from ovs_setup.daemons import OvsInstance, process_alive as _alive, terminate as _kill
from sdn_egress.lab import topology as topo_mod
from sdn_egress.lab.objects import ApiObjects
from sdn_egress.lab.shell import lab_errors, nsx, venv_bin

AGENT_METRICS_PORT = 9100  # on each node's address, inside its namespace
CONTROLLER_METRICS_PORT = 9101  # on 127.0.0.1 of the root namespace (kube: of the router's)


class Processes:
    def _spawn(self, key: str, ns: str | None, cmd: list[str], log: str) -> int:
        full = (["ip", "netns", "exec", ns] if ns else []) + cmd
        with open(log, "ab") as out:
            proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._state["pids"][key] = proc.pid
        self._save()
        return proc.pid

    def _start_controller(self) -> None:
        # --status: standalone, where the allocation goes; kube, a copy of the ConfigMap.
        objects = self.objects
        self._spawn("controller", self.ns_router() if objects.controller_in_router else None,
                    [venv_bin("sdn-egress"), "controller", *objects.state_args(), "--status", self.status_dir,
                     *[a for f in self.topology().families for a in ("--cluster-cidr", topo_mod.cluster_pod_cidr(f))],
                     "--metrics-port", str(CONTROLLER_METRICS_PORT), *objects.controller_args()],
                    os.path.join(self.state_dir, "controller.log"))

    def start_agent(self, node: str) -> int:
        ovs = self.ovs(node)
        # --status: standalone, the controller's directory (and this agent's
        # report); kube, where the agent records its status and flows only.
        return self._spawn(f"agent:{node}", self.ns_node(node),
                           [venv_bin("sdn-egress"), "agent", "--node", node, *self.objects.state_args(),
                            "--status", self.status_dir, "--ovs-db", ovs.db_target,
                            "--ovs-rundir", ovs.rundir, "--metrics-port", str(AGENT_METRICS_PORT),
                            *self.load().get("agent_args", [])],
                           os.path.join(self.node_dir(node), "agent.log"))

    def _objects_start(self) -> None:
        with lab_errors():
            self.objects.start(self._spawn, self.ns_router())

    def start_kube_api(self, timeout: float = 15.0) -> int:
        """Start the lab's API server in the router namespace (its objects
        kept in ``kube/objects.json``: a restart keeps them, as etcd would)."""
        with lab_errors():
            return ApiObjects(self.kube_dir).start(self._spawn, self.ns_router(), timeout)

    def stop_kube_api(self) -> None:
        """The API server goes away (SIGTERM); the objects stay on disk."""
        _kill(self.load()["pids"].get("kubeapi"))

    def stop_agent(self, node: str) -> None:
        _kill(self.load()["pids"].get(f"agent:{node}"))

    def restart_agent(self, node: str) -> int:
        self.stop_agent(node)
        return self.start_agent(node)

    def restart_controller(self) -> None:
        """A new controller process: of the old one only the stored allocation remains."""
        _kill(self.load()["pids"].get("controller"))
        self._start_controller()

    def pause_controller(self) -> None:
        """Freeze the controller (SIGSTOP): a controller that lags behind the
        data plane, as a loaded or partitioned one does."""
        os.kill(self.load()["pids"]["controller"], signal.SIGSTOP)

    def resume_controller(self) -> None:
        os.kill(self.load()["pids"]["controller"], signal.SIGCONT)

    def set_agent_args(self, args: list[str]) -> None:
        """Extra command-line arguments of every agent (e.g. ``--new-pod-hold
        0``); the agents are restarted with them."""
        self.load()["agent_args"] = list(args)
        self._save()
        for n in self.topology().nodes:
            if self.agent_pid(n.name):
                self.restart_agent(n.name)

    # -- failures --------------------------------------------------------------------
    def kill(self, node: str) -> None:
        """Power cut: the node's agent, ovs-vswitchd and ovsdb-server die at
        once (SIGKILL); its namespace, links and kernel state stay."""
        ovs = self.ovs(node)
        pids = [self.agent_pid(node), ovs.pid("ovs-vswitchd"), ovs.pid("ovsdb-server")]
        for pid in pids:
            if _alive(pid):
                os.kill(pid, 9)
        for pid in pids:
            _kill(pid, timeout=2)  # reaped or confirmed gone

    def revive(self, node: str) -> None:
        """Start the node's OVS again (same database: bridges and ports come
        back; flows do not) and its agent."""
        self.ovs(node).start()
        self.start_agent(node)

    def cut(self, node: str) -> None:
        """Take the node's underlay link down; its processes live on."""
        nsx(self.ns_fabric(), "ip", "link", "set", f"n{self.topology().node(node).index}", "down")

    def heal(self, node: str) -> None:
        nsx(self.ns_fabric(), "ip", "link", "set", f"n{self.topology().node(node).index}", "up")

    def tunnel_ports(self, node: str) -> dict[str, bool]:
        """The node's Geneve ports to peers (not gnv-flow), by remote IP:
        whether its BFD session is up."""
        out = json.loads(self.ovs(node).vsctl("--columns=options,bfd_status", "--format=json", "find",
                                              "Interface", "type=geneve"))
        ports = {}
        for options, bfd in out["data"]:
            remote = dict(options[1]).get("remote_ip", "").strip('"')
            if remote and remote != "flow":
                ports[remote] = dict(bfd[1]).get("state") == "up"
        return ports

    def bfd_sessions_up(self) -> bool:
        """Every BFD session of the running nodes' tunnels is up, where it has
        both ends (a worker's port before its gateway made one back, a
        gateway's to a worker that dropped its own: no session)."""
        ports = {n.ip: self.tunnel_ports(n.name) for n in self.topology().nodes
                 if self.ovs(n.name).running()}  # node IP -> remote IP -> its session up
        return all(up or local not in ports.get(remote, {})
                   for local, remotes in ports.items() for remote, up in remotes.items())

    def agent_pid(self, node: str) -> int | None:
        return self.load()["pids"].get(f"agent:{node}")

    def agent_status(self, node: str) -> dict:
        try:
            with open(os.path.join(self.status_dir, "nodes", f"{node}.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return {}

    def agent_passes(self, node: str) -> int:
        """Passes finished by the node's current agent process (0 until its first)."""
        st = self.agent_status(node)
        return st.get("passes", 0) if st.get("pid") == self.agent_pid(node) else 0

    def agent_log(self, node: str) -> str:
        try:
            with open(os.path.join(self.node_dir(node), "agent.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def ovs(self, node: str) -> OvsInstance:
        return OvsInstance(os.path.join(self.node_dir(node), "ovs"), netns=self.ns_node(node))
