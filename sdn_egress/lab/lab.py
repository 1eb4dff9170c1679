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

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import yaml

from ovs_setup.daemons import OvsInstance, process_alive as _alive, stop_all_under, terminate as _kill
from sdn_egress.lab import topology as topo_mod
from sdn_egress.lab.objects import ApiObjects, ManifestObjects, ObjectsError, ObjectStore, ident, pod_object
from sdn_egress.lab.objects import node_object, read_documents, yaml_files
from sdn_egress.lab.topology import Topology
from sdn_egress.lab.traffic import Traffic
from sdn_egress.fileio import write_json_atomic

DEFAULT_STATE_DIR = os.environ.get("SDN_EGRESS_LAB_DIR", "/run/sdn-egress/lab")


AGENT_METRICS_PORT = 9100  # on each node's address, inside its namespace
CONTROLLER_METRICS_PORT = 9101  # on 127.0.0.1 of the root namespace (kube: of the router's)
POD_GATEWAY6 = "fe80::1"  # the node's end of every pod's veth (a link-local gateway, Calico style)


class LabError(RuntimeError):
    pass


@contextlib.contextmanager
def _lab_errors():
    """The object store's refusals, as the lab's errors."""
    try:
        yield
    except ObjectsError as exc:
        raise LabError(str(exc)) from None


# Broadcast one ARP request for argv[2] out of interface argv[1] (raw socket,
# no arping needed) and print the sender MAC of every reply for it that
# arrives within argv[3] seconds, one per line.
ARP_PROBE = r"""
import fcntl, socket, struct, sys, time
ifname, target, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifname, 0))
mac = s.getsockname()[4]
info = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", ifname.encode()))  # SIOCGIFADDR
spa, tpa = info[20:24], socket.inet_aton(target)
s.send(b"\xff" * 6 + mac + b"\x08\x06"
       + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + spa + b"\x00" * 6 + tpa)
deadline = time.monotonic() + wait
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        frame = s.recv(128)
    except socket.timeout:
        break
    op, sha, sender = struct.unpack("!H", frame[20:22])[0], frame[22:28], frame[28:32]
    if op == 2 and sender == tpa:
        print(sha.hex(":"), flush=True)
"""


# Send one neighbour solicitation for argv[3] out of interface argv[1] from
# argv[2] (to the target's solicited-node multicast address, with our
# link-layer address) and print the target link-layer address of every
# solicited advertisement for it that arrives within argv[4] seconds, one per
# line (unsolicited ones, a takeover's announcements, answer nobody's question).
NS_PROBE = r"""
import socket, struct, sys, time
ifname, src, target, wait = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
mac = bytes.fromhex(open(f"/sys/class/net/{ifname}/address").read().strip().replace(":", ""))
tgt = socket.inet_pton(socket.AF_INET6, target)
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.bind((src, 0))
idx = socket.if_nametoindex(ifname)
for opt in (socket.IPV6_MULTICAST_HOPS, socket.IPV6_UNICAST_HOPS):
    s.setsockopt(socket.IPPROTO_IPV6, opt, 255)  # RFC 4861: 255 or it is dropped
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
group = socket.inet_ntop(socket.AF_INET6, bytes.fromhex("ff0200000000000000000001ff") + tgt[13:])
s.sendto(struct.pack("!BBHI", 135, 0, 0, 0) + tgt + bytes([1, 1]) + mac, (group, 0, 0, idx))
deadline = time.monotonic() + wait
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        msg, peer = s.recvfrom(1500)
    except socket.timeout:
        break
    if msg[0] != 136 or msg[8:24] != tgt or not msg[4] & 0x40:
        continue  # only solicited advertisements (S flag): not a takeover's unsolicited burst
    opts, lla = msg[24:], None
    while len(opts) >= 8 and opts[1]:
        if opts[0] == 2:
            lla = opts[2:8].hex(":")
        opts = opts[opts[1] * 8:]
    print(lla or peer[0], flush=True)
"""


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002 - subprocess.run's name
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def nsx(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


class Lab(Traffic):
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

    def _netns(self, name: str) -> str:
        sh("ip", "netns", "add", name)
        self._state["namespaces"].append(name)
        self._save()
        nsx(name, "ip", "link", "set", "lo", "up")
        if topo_mod.IPV6 in self.topology().families:
            # Addresses usable at once: no duplicate address detection (1 s
            # of "tentative" per address otherwise, br-ex's too).
            self._sysctl(name, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        return name

    def _veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
        sh("ip", "link", "add", name_a, "netns", ns_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            # The userspace datapath needs full checksums: TCP breaks after NAT otherwise.
            nsx(ns, "ethtool", "-K", name, "tx", "off", check=False)
            nsx(ns, "ip", "link", "set", name, "up")

    def _sysctl(self, ns: str, *settings: str) -> None:
        nsx(ns, "sysctl", "-qw", *settings)

    def _build(self, topo: Topology, agents: bool) -> None:
        fab = self._netns(self.ns_fabric())
        for br in ("underlay", "extlan"):
            nsx(fab, "ip", "link", "add", br, "type", "bridge")
            nsx(fab, "ip", "link", "set", br, "up")

        rtr = self._netns(self.ns_router())
        self._veth(rtr, "u0", fab, "r-u")
        self._veth(rtr, "x0", fab, "r-x")
        nsx(fab, "ip", "link", "set", "r-u", "master", "underlay")
        nsx(fab, "ip", "link", "set", "r-x", "master", "extlan")
        # The router has both families whatever the cluster's: the API
        # server listens on its IPv4 underlay address.
        nsx(rtr, "ip", "addr", "add", f"{topo_mod.ROUTER_UNDERLAY_IP}/24", "dev", "u0")
        nsx(rtr, "ip", "addr", "add", f"{topo_mod.ROUTER_EXTERNAL_IP}/24", "dev", "x0")
        self._sysctl(rtr, "net.ipv4.ip_forward=1")
        if topo_mod.IPV6 in topo.families:
            nsx(rtr, "ip", "-6", "addr", "add", f"{topo_mod.ROUTER_UNDERLAY_IP6}/64", "dev", "u0", "nodad")
            nsx(rtr, "ip", "-6", "addr", "add", f"{topo_mod.ROUTER_EXTERNAL_IP6}/64", "dev", "x0", "nodad")
            self._sysctl(rtr, "net.ipv6.conf.all.forwarding=1")
        self._objects_start()

        for x in topo.externals:
            self._build_external(x, fab, rtr)

        for node in topo.nodes:
            self._build_node(topo, node, fab, agents)
        self._write_cluster_manifests(topo)
        if agents:
            self._start_controller()
            for node in topo.nodes:
                self.start_agent(node.name)
        self._wait_for_echo(topo)

    def _build_external(self, x, fab: str, rtr: str) -> None:
        ns = self._netns(self.ns_external(x.index))
        if x.mtu is None:
            self._veth(ns, "eth0", fab, f"x{x.index}")
            nsx(fab, "ip", "link", "set", f"x{x.index}", "master", "extlan")
            for fam in x.families:
                plen = "64" if fam == topo_mod.IPV6 else "24"
                nsx(ns, "ip", "addr", "add", f"{x.ip_of(fam)}/{plen}", "dev", "eth0",
                    *(["nodad"] if fam == topo_mod.IPV6 else []))
        else:
            # A link of its own to the router, narrow at both ends: the
            # router answers ICMP frag-needed (IPv6: Packet Too Big) for what
            # does not fit.
            self._veth(ns, "eth0", rtr, f"h{x.index}")
            for where, dev in ((ns, "eth0"), (rtr, f"h{x.index}")):
                nsx(where, "ip", "link", "set", dev, "mtu", str(x.mtu))
            for fam in x.families:
                if fam == topo_mod.IPV6:  # the router's end is fe80::1 (a link-local gateway)
                    nsx(rtr, "ip", "-6", "addr", "add", f"{POD_GATEWAY6}/64", "dev", f"h{x.index}", "nodad")
                    nsx(ns, "ip", "-6", "addr", "add", f"{x.ip_of(fam)}/128", "dev", "eth0", "nodad")
                    nsx(rtr, "ip", "-6", "route", "add", f"{x.ip_of(fam)}/128", "dev", f"h{x.index}")
                    continue
                nsx(ns, "ip", "addr", "add", f"{x.ip}/32", "dev", "eth0")
                nsx(ns, "ip", "route", "add", topo_mod.ROUTER_EXTERNAL_IP, "dev", "eth0", "scope", "link")
                nsx(rtr, "ip", "route", "add", f"{x.ip}/32", "dev", f"h{x.index}", "src",
                    topo_mod.ROUTER_EXTERNAL_IP)
        for fam in x.families:
            gw = POD_GATEWAY6 if fam == topo_mod.IPV6 and x.mtu else topo_mod.router_external_ip(fam)
            nsx(ns, "ip", "-6" if fam == topo_mod.IPV6 else "-4", "route", "add", "default", "via", gw,
                "dev", "eth0")
        self._start_echo(x)

    def _build_node(self, topo: Topology, node, fab: str, agents: bool) -> None:
        ns = self._netns(self.ns_node(node.name))
        self._veth(ns, "eth0", fab, f"n{node.index}")
        nsx(fab, "ip", "link", "set", f"n{node.index}", "master", "underlay")
        for fam in node.families:
            v6 = fam == topo_mod.IPV6
            opt = "-6" if v6 else "-4"
            nsx(ns, "ip", opt, "addr", "add", f"{node.ip_of(fam)}/{64 if v6 else 24}", "dev", "eth0",
                *(["nodad"] if v6 else []))
            nsx(ns, "ip", opt, "route", "add", "default", "via", topo_mod.router_underlay_ip(fam))
            for other in topo.nodes:
                if other.name != node.name:
                    nsx(ns, "ip", opt, "route", "add", other.pod_cidr_of(fam), "via", other.ip_of(fam))
            cidr = topo_mod.cluster_pod_cidr(fam)
            # The CNI's natOutgoing, Calico style: no out-interface match.
            nsx(ns, "ip6tables" if v6 else "iptables", "-w", "-t", "nat", "-A", "POSTROUTING", "-s", cidr,
                "!", "-d", cidr, "-j", "MASQUERADE")
        self._sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=2",
                     "net.ipv4.conf.default.rp_filter=2")
        if topo_mod.IPV6 in node.families:
            self._sysctl(ns, "net.ipv6.conf.all.forwarding=1")
        for pod in topo.pods:
            if pod.node == node.name:
                self._build_pod(pod, ns)
        ovs = self.ovs(node.name)
        ovs.start()
        sh("ip", "netns", "exec", ns, _bin("sdn-egress"), "ovs", "--db", ovs.db_target, "setup",
           "--uplink", "eth0")
        if not agents:
            # No agent will program br-ex (fail_mode=secure): let it switch
            # plainly so the node keeps its underlay connectivity.
            ovs.ofctl("add-flow", "br-ex", "priority=0,actions=NORMAL")

    def _build_pod(self, pod, node_ns: str) -> None:
        """The pod's network as the lab's CNI (Calico style) sets it up: its
        namespace, a veth with the /32 (IPv6: the /128) on the pod's end;
        on the node's end proxy ARP (IPv6: the link-local gateway fe80::1)
        and the /32 (/128) route."""
        ns = self._netns(self.ns_pod(pod.index))
        host_if = f"cali{pod.index}"
        self._veth(ns, "eth0", node_ns, host_if)
        for ip in pod.addresses:
            if ":" in ip:
                nsx(node_ns, "ip", "-6", "addr", "add", f"{POD_GATEWAY6}/64", "dev", host_if, "nodad")
                nsx(ns, "ip", "-6", "addr", "add", f"{ip}/128", "dev", "eth0", "nodad")
                nsx(ns, "ip", "-6", "route", "add", "default", "via", POD_GATEWAY6, "dev", "eth0")
                nsx(node_ns, "ip", "-6", "route", "add", f"{ip}/128", "dev", host_if)
                continue
            nsx(ns, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
            nsx(ns, "ip", "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
            nsx(ns, "ip", "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
            # Calico's settings: proxy ARP for the pod's gateway, answered at once
            # (the kernel's default proxy_delay holds answers up to 0.8 s).
            self._sysctl(node_ns, f"net.ipv4.conf.{host_if}.proxy_arp=1",
                         f"net.ipv4.neigh.{host_if}.proxy_delay=0")
            nsx(node_ns, "ip", "route", "add", f"{ip}/32", "dev", host_if)

    # -- processes ----------------------------------------------------------------------
    def _spawn(self, key: str, ns: str | None, cmd: list[str], log: str) -> int:
        full = (["ip", "netns", "exec", ns] if ns else []) + cmd
        with open(log, "ab") as out:
            proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._state["pids"][key] = proc.pid
        self._save()
        return proc.pid

    def _start_echo(self, x) -> None:
        d = os.path.join(self.state_dir, "externals", x.name)
        os.makedirs(d, exist_ok=True)
        for f in ("seen.jsonl", "ready"):
            if os.path.exists(os.path.join(d, f)):
                os.unlink(os.path.join(d, f))
        open(os.path.join(d, "seen.jsonl"), "w").close()
        self._spawn(f"echo:{x.name}", self.ns_external(x.index),
                    [sys.executable, "-m", "sdn_egress.lab.echo", "--log", os.path.join(d, "seen.jsonl"),
                     "--ready", os.path.join(d, "ready")], os.path.join(d, "echo.log"))

    def _wait_for_echo(self, topo: Topology, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        for x in topo.externals:
            ready = os.path.join(self.state_dir, "externals", x.name, "ready")
            while not os.path.exists(ready):
                if time.monotonic() > deadline:
                    raise LabError(f"echo service on {x.name} did not start (see its echo.log)")
                time.sleep(0.05)

    def _start_controller(self) -> None:
        # --status: standalone, where the allocation goes; kube, a copy of the ConfigMap.
        objects = self.objects
        self._spawn("controller", self.ns_router() if objects.controller_in_router else None,
                    [_bin("sdn-egress"), "controller", *objects.state_args(), "--status", self.status_dir,
                     *[a for f in self.topology().families for a in ("--cluster-cidr", topo_mod.cluster_pod_cidr(f))],
                     "--metrics-port", str(CONTROLLER_METRICS_PORT), *objects.controller_args()],
                    os.path.join(self.state_dir, "controller.log"))

    def start_agent(self, node: str) -> int:
        ovs = self.ovs(node)
        # --status: standalone, the controller's directory (and this agent's
        # report); kube, where the agent records its status and flows only.
        return self._spawn(f"agent:{node}", self.ns_node(node),
                           [_bin("sdn-egress"), "agent", "--node", node, *self.objects.state_args(),
                            "--status", self.status_dir, "--ovs-db", ovs.db_target,
                            "--ovs-rundir", ovs.rundir, "--metrics-port", str(AGENT_METRICS_PORT),
                            *self.load().get("agent_args", [])],
                           os.path.join(self.node_dir(node), "agent.log"))

    def _objects_start(self) -> None:
        with _lab_errors():
            self.objects.start(self._spawn, self.ns_router())

    def start_kube_api(self, timeout: float = 15.0) -> int:
        """Start the lab's API server in the router namespace (its objects
        kept in ``kube/objects.json``: a restart keeps them, as etcd would)."""
        with _lab_errors():
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

    def bfd_sessions_up(self) -> bool:
        """Every BFD session of the running nodes' tunnels is up, where it has
        both ends: a gateway node keeps a port to every node, a worker one back
        only while its pods use that gateway (an idle port has no session)."""
        ports: dict[str, dict[str, bool]] = {}  # node IP -> remote IP -> its session up
        for n in self.topology().nodes:
            ovs = self.ovs(n.name)
            if not ovs.running():
                continue
            out = json.loads(ovs.vsctl("--columns=options,bfd_status", "--format=json", "find", "Interface",
                                       "type=geneve"))
            mine = ports.setdefault(n.ip, {})
            for options, bfd in out["data"]:
                remote = dict(options[1]).get("remote_ip", "").strip('"')
                if remote and remote != "flow":
                    mine[remote] = dict(bfd[1]).get("state") == "up"
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

    # -- objects -----------------------------------------------------------------------
    def _write_cluster_manifests(self, topo: Topology) -> None:
        self.objects.write_cluster([node_object(n) for n in topo.nodes], {p.namespace for p in topo.pods},
                                   topo.families)
        for pod in topo.pods:
            self._write_pod(pod, pod.labels)

    def _write_pod(self, pod, labels: dict) -> None:
        self.objects.write_pod(pod_object(pod, labels))

    def pods(self) -> list:
        """The lab's live pods: the topology's, then those ``add_pod`` made,
        without those ``delete_pod`` removed."""
        from sdn_egress.lab.topology import LabPod

        st = self.load()
        if "pods" not in st:  # a lab brought up before pods came and went
            return list(self.topology().pods)
        return [LabPod(p["namespace"], p["name"], p["node"], p["index"], p["ip"], dict(p["labels"]),
                       tuple(p.get("ips") or (p["ip"],)))
                for p in st["pods"]]

    def pod(self, name: str):
        pods = self.pods()
        matches = [p for p in pods if p.key == name] or [p for p in pods if p.name == name]
        if not matches:
            raise LabError(f"no pod {name!r} in the lab (pods: {', '.join(p.key for p in pods)})")
        if len(matches) > 1:
            raise LabError(f"pod name {name!r} is ambiguous: use namespace/name "
                           f"({', '.join(p.key for p in matches)})")
        return matches[0]

    def pod_labels(self, name: str) -> dict:
        pod = self.pod(name)
        with _lab_errors():
            return self.objects.pod_labels(pod.namespace, pod.name)

    def label(self, name: str, key: str, value: str | None) -> None:
        """Set (or with ``value=None`` remove) one label of a pod."""
        pod = self.pod(name)
        labels = self.pod_labels(name)
        if value is None:
            labels.pop(key, None)
        else:
            labels[key] = value
        self._write_pod(pod, labels)
        st = self.load()
        for rec in st.get("pods", []):
            if f"{rec['namespace']}/{rec['name']}" == pod.key:
                rec["labels"] = dict(labels)
        self._save()

    # -- pods come and go ----------------------------------------------------------------
    def add_pod(self, key: str, node: str, labels: dict | None = None, ip: str | None = None,
                publish: bool = True):
        """Create pod ``NS/NAME`` on ``node`` the way a kubelet and the CNI do:
        first its network (namespace, veth, /32 route; the address is the
        lowest free one of the node's pod CIDR, or ``ip``), then, once that
        is up, the Pod object with its IP (``publish=False`` leaves that to
        :meth:`publish_pod`: the window between the two is where a new pod's
        first packets go).  Returns the pod."""
        from sdn_egress.lab.topology import LabPod

        st = self.load()
        namespace, name = _split_key(key)
        if any(p.key == f"{namespace}/{name}" for p in self.pods()):
            raise LabError(f"pod {namespace}/{name}: exists already (lab pod delete, or lab pod move)")
        topo = self.topology()
        if node not in {n.name for n in topo.nodes}:
            raise LabError(f"pod {namespace}/{name}: --node: no node named {node!r} "
                           f"(nodes: {', '.join(n.name for n in topo.nodes)})")
        labels = _check_labels(f"pod {namespace}/{name}", labels or {})
        n = topo.node(node)
        ip = self._pod_address(f"pod {namespace}/{name}", n, ip)
        ips = self._pod_addresses(n, ip)
        pod = LabPod(namespace, name, node, st.get("next_pod_index", len(st.get("pods", []))), ip, labels, ips)
        st["next_pod_index"] = pod.index + 1
        st.setdefault("pods", [_pod_record(p) for p in topo.pods]).append(_pod_record(pod))
        self._save()
        self._build_pod(pod, self.ns_node(node))
        if publish:
            self.publish_pod(pod.key)
        return pod

    def _pod_address(self, what: str, node, ip: str | None) -> str:
        import netaddr

        # .0 is the network, .1 is kept (a CNI's gateway address), the last
        # of the /27 is broadcast: offsets 2..30 (the same in an IPv6 /64).
        fam = node.families[0]
        usable = [node.pod_address(o, fam) for o in range(2, 2 + topo_mod.MAX_PODS_PER_NODE)]
        used = {p.ip for p in self.pods()}
        if ip is None:
            free = [a for a in usable if a not in used]
            if not free:
                raise LabError(f"{what}: node {node.name} has no free address in {node.pod_cidr}")
            return free[0]
        try:
            addr = str(netaddr.IPAddress(ip, topo_mod.version(fam)))
        except (netaddr.AddrFormatError, ValueError):
            raise LabError(f"{what}: --ip: {ip!r} is not an {fam} address") from None
        if addr not in usable:
            raise LabError(f"{what}: --ip: {addr} is not a pod address of node {node.name} "
                           f"({usable[0]}-{usable[-1]} of {node.pod_cidr})")
        holder = next((p.key for p in self.pods() if p.ip == addr), None)
        if holder:
            raise LabError(f"{what}: --ip: {addr} is pod {holder}'s address")
        return addr

    def _pod_addresses(self, node, ip: str) -> tuple[str, ...]:
        """Every family's address of the pod whose primary address is
        ``ip``: the same offset in each of the node's pod CIDRs."""
        import netaddr

        offset = int(netaddr.IPAddress(ip)) - int(netaddr.IPNetwork(node.pod_cidr).network)
        return tuple(node.pod_address(offset, f) for f in node.families)

    def publish_pod(self, key: str) -> None:
        """The Pod object appears (status.podIP set): what the kubelet
        reports once the CNI is done.  A namespace the lab does not have yet
        is created first."""
        pod = self.pod(key)
        self.objects.ensure_namespace(pod.namespace)
        self._write_pod(pod, pod.labels)

    def delete_pod(self, key: str, object_too: bool = True) -> None:
        """Delete a pod the way a kubelet does: its processes and network go
        (the CNI's DEL: the veth and the /32 route go with the namespace; its
        address is free again), then the Pod object.  ``object_too=False``
        leaves the object (a pod terminating, its object not yet gone) for
        :meth:`delete_pod_object`."""
        pod = self.pod(key)
        st = self.load()
        ns = self.ns_pod(pod.index)
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            _kill(int(pid), timeout=2)
        sh("ip", "netns", "del", ns, check=False)
        if ns in st["namespaces"]:
            st["namespaces"].remove(ns)
        for ip in pod.addresses:
            nsx(self.ns_node(pod.node), "ip", "route", "del", f"{ip}/{128 if ':' in ip else 32}", check=False)
        st["pods"] = [p for p in st.get("pods", []) if f"{p['namespace']}/{p['name']}" != pod.key]
        self._save()
        if object_too:
            self.delete_pod_object(pod.key)

    def delete_pod_object(self, key: str) -> None:
        """The Pod object goes (the pod's network may be gone already)."""
        self.objects.delete_pod(*_split_key(key))

    def move_pod(self, key: str, node: str):
        """Reschedule: delete the pod, then create it on ``node`` with the
        same name and labels and a new address, as a StatefulSet's pod is."""
        pod = self.pod(key)
        if node not in {n.name for n in self.topology().nodes}:
            raise LabError(f"pod {pod.key}: --node: no node named {node!r}")
        if node == pod.node:
            raise LabError(f"pod {pod.key}: is on {node} already")
        labels = self.pod_labels(pod.key)
        self.delete_pod(pod.key)
        return self.add_pod(pod.key, node, labels)

    def apply(self, path: str) -> list[str]:
        """Copy manifests into the lab's user manifest directory (the
        controller and agents pick them up); with an API server, create or
        replace the objects there (returns their API paths)."""
        self.load()
        with _lab_errors():
            return self.objects.apply(yaml_files(path))

    def delete(self, path: str) -> int:
        """Remove the objects PATH's documents name (kind, namespace, name)."""
        self.load()
        with _lab_errors():
            files = yaml_files(path)
        return self.objects.delete({ident(d) for f in files for d in read_documents(f) if isinstance(d, dict)})

    def cluster_state(self):
        """The cluster state as the controller and agents assemble it (the
        source's own rules), with the incumbency the stored allocation
        recorded, as a restarted controller starts from."""
        from sdn_egress.allocation import FileAllocationStore

        stored = FileAllocationStore(self.status_dir).load()
        return self.objects.cluster_state(stored.accepted if stored is not None else {})

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

    def arp_answers(self, ip: str, wait: float = 1.0) -> list[str]:
        """The router broadcasts one ARP request for ``ip`` on the underlay;
        the MAC of every reply, in order of arrival (exactly one for an EIP
        served correctly, none for an address nobody claims)."""
        out = self.exec("router", [sys.executable, "-c", ARP_PROBE, "u0", ip, str(wait)],
                        timeout=wait + 30).stdout
        return out.split()

    def nd_answers(self, ip: str, wait: float = 1.0) -> list[str]:
        """IPv6's :meth:`arp_answers`: the router sends one neighbour
        solicitation for ``ip`` on the underlay; the link-layer address of
        every advertisement for it, in order of arrival."""
        out = self.exec("router", [sys.executable, "-c", NS_PROBE, "u0", topo_mod.ROUTER_UNDERLAY_IP6, ip,
                                   str(wait)], timeout=wait + 30).stdout
        return out.split()

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


def _pod_record(pod) -> dict:
    return {"namespace": pod.namespace, "name": pod.name, "node": pod.node, "index": pod.index,
            "ip": pod.ip, "ips": list(pod.addresses), "labels": dict(pod.labels)}


def _split_key(key: str) -> tuple[str, str]:
    from sdn_egress.lab.topology import NAME_RE

    namespace, sep, name = key.partition("/")
    if not sep:
        raise LabError(f"pod {key!r}: give it as NAMESPACE/NAME")
    for what, value in (("namespace", namespace), ("name", name)):
        if not NAME_RE.match(value) or len(value) > 63:
            raise LabError(f"pod {key!r}: {what} {value!r} is not a lower-case DNS label")
    return namespace, name


LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _check_labels(what: str, labels: dict) -> dict:
    for k, v in labels.items():
        if not isinstance(k, str) or not LABEL_KEY_RE.match(k) or len(k.rpartition("/")[2]) > 63:
            raise LabError(f"{what}: labels: {k!r} is not a label key")
        if not isinstance(v, str) or not LABEL_VALUE_RE.match(v) or len(v) > 63:
            raise LabError(f"{what}: labels.{k}: {v!r} is not a label value")
    return dict(labels)


def parse_labels(text: str | None, what: str = "--labels") -> dict:
    """``k=v,k2=v2`` -> a dict; an entry without ``=`` is an error naming it."""
    out = {}
    for part in filter(None, (text or "").split(",")):
        k, sep, v = part.partition("=")
        if not sep:
            raise LabError(f"{what}: {part!r}: use KEY=VALUE")
        out[k.strip()] = v.strip()
    return out

