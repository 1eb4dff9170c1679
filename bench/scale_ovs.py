"""Scale benchmark, the switch side (issue 15): the agent against a real Open
vSwitch at S or M.

    python bench/scale_ovs.py [--size M] [--no-write]

Real: per node a network namespace made here, with its own ovsdb-server and
ovs-vswitchd (userspace datapath, started as the lab starts them:
``ovs_setup.daemons.OvsInstance``) and the bridges of the shipped
``sdn-egress ovs setup --uplink eth0`` (eth0: one end of a veth pair whose
other end leads nowhere); the agent process in that namespace
(bench/scale_ovs_agent.py): the project's ``AgentCore`` and its loop, its
OVSDB node (``OvsdbNode``: the Geneve ports with BFD it asks for, created by
``ovs_setup.ovsdb.sync_tunnels``), its os-ken OpenFlow connection over the
Unix socket (``sdn_egress.agent.app`` and ``listen``), its diff and bundles.
Fed as bench/scale.py feeds it: ``KubeSource`` informers loaded from
bench/clustergen.py (what the node's selectors select), the controller's
allocation from ``scale.py --role controller`` as the ConfigMap reader gives
it (``scale.Allocations``).  Stand-ins: the kernel's routing and rules
(``scale.Routing``), the next hop MAC of the EIPs, the tunnel MTU (1400).

Two nodes, one after the other: the busiest gateway node and the worker whose
pod the event relabels.  Holds the lab lock for the whole run; removes every
namespace and process it made, also on failure or Ctrl-C.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clustergen as gen  # noqa: E402
import scale  # noqa: E402
from ovs_setup.daemons import OvsInstance, stop_all_under, terminate  # noqa: E402

AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scale_ovs_agent.py")
LOCK = "/tmp/sdn-egress-lab.lock"
PREFIX = "sovs"  # the namespaces: sovs-gateway, sovs-worker
UPLINK = {"gateway": "192.0.2.10/24", "worker": "192.0.2.11/24"}  # on the dummy eth0, isolated namespaces
ROUTER = "192.0.2.1"


# -- a node: its namespace, its OVS, its agent ----------------------------------------------------

def sh(*cmd: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def proc_status(pid: int, field: str) -> float:
    """A /proc/PID/status field in MB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BenchNode:
    """One node of the bench: everything it makes is recorded, :meth:`close` removes it."""

    def __init__(self, role: str, node: str, tmp: str):
        self.role, self.node, self.ns = role, node, f"{PREFIX}-{role}"
        self.dir = os.path.join(tmp, role)
        self.ovs = OvsInstance(os.path.join(self.dir, "ovs"), netns=self.ns)
        self.proc: subprocess.Popen | None = None
        self.made_ns = False
        self.out: dict = {"node": node}

    def nsx(self, *cmd: str) -> str:
        return sh("ip", "netns", "exec", self.ns, *cmd)

    def up(self) -> None:
        """The namespace with an uplink to nowhere, OVS, and the bridges of ``sdn-egress ovs setup``."""
        if self.ns in sh("ip", "netns", "list").split():
            remove_namespace(self.ns)  # left by a run that was killed (SIGKILL: no finally)
        sh("ip", "netns", "add", self.ns)
        self.made_ns = True
        self.nsx("ip", "link", "set", "lo", "up")
        self.nsx("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "wire0")  # its far end: nobody
        self.nsx("ip", "addr", "add", UPLINK[self.role], "dev", "eth0")
        for link in ("eth0", "wire0"):
            self.nsx("ip", "link", "set", link, "up")
        self.nsx("ip", "route", "add", "default", "via", ROUTER)
        t = time.perf_counter()
        self.ovs.start()
        self.out["ovs_start_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.nsx(os.path.join(os.path.dirname(sys.executable), "sdn-egress"), "ovs", "--db", self.ovs.db_target,
                 "setup", "--uplink", "eth0")
        self.out["setup_s"] = time.perf_counter() - t
        self.out["vswitchd_rss_before_mb"] = proc_status(self.ovs.pid("ovs-vswitchd"), "VmRSS")

    def start_agent(self, size: str, status: str, pod: int) -> None:
        self.started = time.perf_counter()
        with open(os.path.join(self.dir, "agent.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, sys.executable, AGENT, "--role", self.role,
                 "--size", size, "--node", self.node, "--status", status, "--rundir", self.ovs.rundir,
                 "--pod", str(pod)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self.ovs.env,
                start_new_session=True)

    def read(self, timeout: float = 900) -> dict:
        """The agent's next report (one JSON line)."""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.role} agent ended; see {self.dir}/agent.log")
                return json.loads(line)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.role} agent: no report; see {self.dir}/agent.log")

    def ask(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read()

    def dumped(self) -> dict[str, int]:
        """Flows per bridge as ``ovs-ofctl dump-flows`` lists them."""
        return {br: sum(1 for line in self.ovs.ofctl("dump-flows", br).splitlines() if "actions=" in line)
                for br in ("br-int", "br-ex")}

    def geneve_ports(self) -> int:
        return sum(1 for p in self.ovs.vsctl("list-ports", "br-int").split() if p.startswith("gnv-")
                   and p != "gnv-flow")

    def idle_cpu(self, seconds: float = 5.0) -> dict[str, float]:
        """CPU share (of one core) of each process while nothing changes."""
        pids = {"vswitchd": self.ovs.pid("ovs-vswitchd"), "ovsdb": self.ovs.pid("ovsdb-server"),
                "agent": self.proc.pid}
        before = {k: cpu_seconds(p) for k, p in pids.items()}
        time.sleep(seconds)
        return {k: (cpu_seconds(p) - before[k]) / seconds for k, p in pids.items()}

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            terminate(self.proc.pid)
        self.ovs.stop()
        stop_all_under(self.dir)
        if self.made_ns:
            remove_namespace(self.ns)
            self.made_ns = False


def remove_namespace(ns: str) -> None:
    for pid in sh("ip", "netns", "pids", ns).split():
        terminate(int(pid), timeout=2)
    sh("ip", "netns", "del", ns)


# -- the run -------------------------------------------------------------------------------------

def measure_node(bn: BenchNode, size: gen.Size, status: str, pod: int, events: bool) -> dict:
    bn.up()
    bn.start_agent(size.name, status, pod)
    out = bn.out
    out["agent"] = bn.read()
    out["installed_wall_s"] = time.perf_counter() - bn.started
    out["dumped"] = bn.dumped()
    out["geneve"] = bn.geneve_ports()
    vswitchd = bn.ovs.pid("ovs-vswitchd")
    out["vswitchd_rss_mb"] = proc_status(vswitchd, "VmRSS")
    out["idle_cpu"] = bn.idle_cpu()
    if events:
        out["events"] = bn.ask("events")["events"]
    full = bn.ask("full")
    out["full"], out["reads"], out["agent_rss_mb"] = full["full"], full["reads"], full["rss_mb"]
    out["vswitchd_hwm_mb"] = proc_status(vswitchd, "VmHWM")
    out["ovsdb_rss_mb"] = proc_status(bn.ovs.pid("ovsdb-server"), "VmRSS")
    if out["dumped"] != out["agent"]["counts"]:
        print(f"  {bn.role}: ovs-ofctl counts {out['dumped']}, the agent {out['agent']['counts']}", file=sys.stderr)
    return out


def run_size(size: gen.Size) -> dict:
    tmp = tempfile.mkdtemp(prefix="sdn-egress-scale-ovs-")
    nodes: list[BenchNode] = []
    try:
        status = os.path.join(tmp, "status")
        os.makedirs(status)
        proc = subprocess.run([sys.executable, scale.__file__, "--role", "controller", "--size", size.name,
                               "--status", status], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"controller: {proc.stderr[-2000:]}")
        picked = json.loads(proc.stdout.strip().splitlines()[-1])
        results = {"picked": {k: picked[k] for k in ("pod", "worker", "gateway", "eips")}}
        for role in ("gateway", "worker"):
            bn = BenchNode(role, picked[role], tmp)
            nodes.append(bn)
            started = time.monotonic()
            results[role] = measure_node(bn, size, status, picked["pod"], events=role == "worker")
            bn.close()
            print(f"  {size.name} {role} ({time.monotonic() - started:.0f} s): {json.dumps(results[role])}",
                  file=sys.stderr)
        return results
    except BaseException:
        for bn in nodes:
            log = os.path.join(bn.dir, "agent.log")
            if os.path.exists(log):
                print(f"--- {bn.role} agent log (tail)\n" + open(log).read()[-3000:], file=sys.stderr)
        raise
    finally:
        for bn in nodes:
            bn.close()
        shutil.rmtree(tmp, ignore_errors=True)


def leftovers() -> list[str]:
    """Namespaces and OVS processes of this bench still there (none, normally)."""
    names = [n for n in sh("ip", "netns", "list").split() if n.startswith(PREFIX + "-")]
    procs = [line for line in subprocess.run(["pgrep", "-a", "ovs"], capture_output=True, text=True).stdout
             .splitlines() if "sdn-egress-scale-ovs-" in line]
    return names + procs


# -- the table -------------------------------------------------------------------------------------

ms = scale.ms


def _bundles(node: dict) -> str:
    ops = [o for o in node["agent"]["ops"] if o["op"] == "apply"]
    return " + ".join(f"{o['bridge']} {o['n']:,} mods {ms(o['s'])}" for o in ops) or "none"


def install_cell(node: dict) -> str:
    a = node["agent"]
    m, tun = a["marks"], a["tunnels"][0] if a["tunnels"] else None
    parts = [f"**{ms(node['installed_wall_s'])}**: informers listed {ms(m['listed'])}",
             f"switches connected {ms(max(m['connected br-int'], m['connected br-ex']))}"]
    if tun:
        parts.append(f"{tun['ports']:,} Geneve ports asked for at {ms(tun['start'])}, "
                     f"all numbered by ovs-vswitchd at {ms(m['numbered'])}")
    parts.append(f"flows committed at {ms(m['installed'])} (bundles: {_bundles(node)})")
    return "; ".join(parts)


def ports_cell(node: dict) -> str:
    tun = node["agent"]["tunnels"]
    if not tun:
        return "none"
    t, m = tun[0], node["agent"]["marks"]
    return (f"{node['geneve']:,} ports: OVSDB transaction {ms(t['s'])} (agent CPU {ms(t['agent_cpu_s'])}), "
            f"until numbered {ms(m['numbered'] - t['start'])}")


def flows_cell(node: dict) -> str:
    d, c = node["dumped"], node["agent"]["counts"]
    agree = "agent: same" if d == c else f"agent: {c['br-int']:,} / {c['br-ex']:,}"
    return f"{d['br-int']:,} / {d['br-ex']:,} ({agree})"


def event_cell(node: dict, selected: bool) -> str:
    ev = [e for e in node["events"] if e["selected"] == selected and "polled" not in e]
    med = lambda k: statistics.median(e[k] for e in ev)  # noqa: E731
    return (f"**{ms(med('total'))}** ({ms(min(e['total'] for e in ev))}–{ms(max(e['total'] for e in ev))}): "
            f"loop wake-up {ms(med('wake'))}, pass {ms(med('pass'))}, of which bundle {ms(med('bundle'))} "
            f"({ev[0]['mods']} mods); pod's flows then {ev[0]['flows_of_pod']}")


def polled_cell(node: dict) -> str:
    return " / ".join(ms(e["polled"]) for e in sorted((e for e in node["events"] if "polled" in e),
                                                       key=lambda e: not e["selected"]))


def full_cell(node: dict) -> str:
    f = node["full"]
    med = statistics.median(p["s"] for p in f)
    changed = sum(a + d for p in f for a, d in p["changes"].values())
    return f"{ms(med)} (dumps {ms(statistics.median(p['dump_s'] for p in f))}; {changed} changes)"


def cpu_cell(node: dict) -> str:
    c = node["idle_cpu"]
    return f"{c['vswitchd']:.0%} / {c['ovsdb']:.0%} / {c['agent']:.0%}"


def both(fn):
    return lambda r: f"{fn(r['gateway'])} · {fn(r['worker'])}"


ROWS = (
    ("nodes (gateway · worker)", both(lambda n: n["node"])),
    ("OVS start / `ovs setup --uplink eth0` (gateway · worker)",
     both(lambda n: f"{ms(n['ovs_start_s'])} / {ms(n['setup_s'])}")),
    ("Geneve ports with BFD the agent made, as ovs-vsctl lists them (gateway · worker)", both(ports_cell)),
    ("flows br-int / br-ex, as ovs-ofctl dump-flows lists them (gateway · worker)", both(flows_cell)),
    ("gateway: agent start → all its flows on the switch", lambda r: install_cell(r["gateway"])),
    ("worker: agent start → all its flows on the switch", lambda r: install_cell(r["worker"])),
    ("pod relabelled into a policy → its flows committed on the worker's br-int (median of 5, min–max)",
     lambda r: event_cell(r["worker"], True)),
    ("relabelled out of it again → flows removed", lambda r: event_cell(r["worker"], False)),
    ("the same, into / out of, polled with ovs-ofctl dump-flows until seen (one each)",
     lambda r: polled_cell(r["worker"])),
    ("full recompute against the switch, median of 3 (gateway · worker)", both(full_cell)),
    ("OVSDB reads of a pass: every tunnel's BFD state (also at each 50 ms poll) / br-int's port numbers "
     "(gateway · worker)", both(lambda n: f"{ms(n['reads']['bfd_states'])} / {ms(n['reads']['ofports'])}")),
    ("ovs-vswitchd RSS: before the agent → with the flows (peak) (gateway · worker)", both(
        lambda n: f"{n['vswitchd_rss_before_mb']:.0f} → {n['vswitchd_rss_mb']:.0f} MB ({n['vswitchd_hwm_mb']:.0f})")),
    ("ovsdb-server RSS / agent RSS (peak) (gateway · worker)",
     both(lambda n: f"{n['ovsdb_rss_mb']:.0f} / {n['agent_rss_mb']:.0f} MB")),
    ("idle CPU over 5 s, share of one core: ovs-vswitchd / ovsdb-server / agent (gateway · worker)",
     both(cpu_cell)),
    ("this bench's run (the allocation, then both nodes)", lambda r: ms(r["run_s"])),
)


def table(by_size: dict[str, dict]) -> str:
    from common import markdown_table

    heads = [f"{n} ({gen.SIZES[n].nodes:,} nodes, {r['picked']['eips']} EIPs)" for n, r in by_size.items()]
    return markdown_table(heads, ROWS, list(by_size.values()))


NOTE = """

Real, per node (the busiest gateway node, then the worker whose pod the event relabels, one after the
other): a network namespace with its own ovsdb-server and ovs-vswitchd (OVS 3.1, userspace datapath,
started as the lab starts them), the bridges of `sdn-egress ovs setup --uplink eth0`, and the agent
process in it: `AgentCore` and its loop, its OVSDB node (the Geneve ports with BFD it asks for,
through ovsdbapp), os-ken's OpenFlow 1.4 connection over the Unix socket, its dumps, diff and
bundles. Stand-ins: the API server (the informers are loaded from bench/clustergen.py with what the
node's selectors select, and the watch event is handed to the worker's Pod informer inside the
agent's process, as bench/scale.py does), the allocation ConfigMap (parsed once), the kernel's
routes, rules and iptables, the EIPs' next-hop MAC and the tunnel MTU (1400), and the BFD of the
nodes that send to the gateway (the other nodes have no OVS here): the gateway's agent is handed
their tunnel source addresses as its SENDER flow's packet-ins would hand them over (bench/scale.py
`hear_senders`), so it makes the ports a real gateway node of that cluster would have. The uplink is
a veth leading nowhere: no BFD session comes up, every tunnel port's BFD stays down (one packet a
second).

"agent start" is the agent process's start as the bench sees it (interpreter and imports included);
the steps after it are on the agent's own clock. "switches connected": when ovs-vswitchd, which
retries its controller connection with a backoff and is busy adding the ports, came round to the
agent's socket. "flows committed": the bundle commit reply; OVS answers a commit once the whole
bundle is in its flow tables, so the reply is the barrier. The ovs-ofctl counts are taken right after
and agree with the agent's own. The event runs from handing the watch event to the worker's informer
to the commit reply on br-int. "loop wake-up": from the event to the start of the agent's pass (the
informer's change wakes the loop; before, the loop noticed it at its next 50 ms poll, a median of
22 ms at M). "pass" is the agent's pass:
snapshot, view, flows, diff, bundle. The polled variant runs `ovs-ofctl dump-flows br-int` in a loop
from the event until the pod's flows are there (or gone). Each dump has to list the whole bridge and
competes for the 2 cores, so polling adds its own cost. "full recompute": the agent's loop stopped,
then its full pass `reconcile(full=True)`: both bridges dumped over OpenFlow and parsed, everything
rebuilt and diffed (0 changes: the switch held what it should). Idle CPU: 5 s with nothing
changing, the agent's loop polling.

What the switch side adds at M: the Geneve ports (one OVSDB transaction for all of them). Most of
that transaction's time is the agent's own CPU in ovsdbapp, not OVS's; it is paid when ports are
added, and a sync that changes nothing writes nothing (it rewrote every port before). Reading every
tunnel's BFD state and br-int's port numbers (`ovs_setup.ovsdb.bfd_status`, `ofports`) is one
ovsdbapp command for the whole bridge, taken again only when the replica changed (the replica
leaves out the interfaces' statistics, which ovs-vswitchd rewrites every 5 s): the first runs of
this bench measured ~120 ms a read at 999 ports with one command per interface, and the idle
gateway agent at 61-79 % of a core, reading the BFD states at every 50 ms poll. The bundles and
dumps over OpenFlow (os-ken building and parsing each flow) are most of a full recompute.
The event's pod gets 125 flows: one of its policies steers everything outside the
cluster's ranges. clustergen's 1,000 pod CIDRs (/26 each, no `--cluster-cidr` given) do not merge
into one prefix, so the complement is 123 prefixes. The in-process bench has the same flows.

Datapath: the lab runs the userspace (netdev) datapath. Its namespaces need no kernel module, and
this machine has none, so there is no figure for the kernel datapath here. What is measured is the
OpenFlow side, and that is the same on both: ovs-vswitchd holds the OpenFlow tables, takes the
bundles, numbers the ports and runs BFD in userspace either way. The differences: with the kernel
datapath all Geneve ports share one kernel vport (genev_sys_6081), so a port is an OVSDB row and an
ofproto port; the userspace datapath also keeps a netdev per port in ovs-vswitchd (in its RSS and in
the time until the ports are numbered) and forwards in ovs-vswitchd's own threads, so under traffic
its CPU would be the datapath's too (no traffic here). On either datapath the caches (megaflows) are
filled by the first packets, not by the install.
"""


def lab_lock():
    f = open(LOCK, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"waiting for the lab lock {LOCK} (an e2e run holds it)", file=sys.stderr)
        fcntl.flock(f, fcntl.LOCK_EX)
    return f


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="M", help="S, M or L, or several: S,M")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, OVS)")

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a background run starts with it ignored
        signal.signal(sig, stop)
    os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    by_size = {}
    with lab_lock():
        try:
            for name in args.size.split(","):
                started = time.monotonic()
                by_size[name] = run_size(gen.SIZES[name])
                by_size[name]["run_s"] = time.monotonic() - started
                print(f"{name}: {by_size[name]['run_s']:.0f} s", file=sys.stderr)
        finally:
            left = leftovers()
            if left:
                print("left behind (remove by hand):\n  " + "\n  ".join(left), file=sys.stderr)
    body = table(by_size)
    print(body)
    if not args.no_write:
        from common import write_section
        write_section("scale-ovs", body + NOTE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
