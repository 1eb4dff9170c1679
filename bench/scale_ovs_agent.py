"""The agent side of bench/scale_ovs.py: run in the node's network namespace,
as ``sdn-egress agent`` runs (``AgentCore`` and its loop, os-ken over the Unix
socket, its OVSDB node), fed from bench/clustergen.py as bench/scale.py feeds
it; it reports on stdout (one JSON line per report) and takes its orders on
stdin (``events``, ``full``).

    python bench/scale_ovs_agent.py --role gateway|worker --size M --node NODE --status DIR --rundir DIR --pod J
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clustergen as gen  # noqa: E402
import scale  # noqa: E402
from ovs_setup.daemons import OvsInstance  # noqa: E402

ROUNDS = 5  # relabels into and out of the policies
FULL_PASSES = 3


# -- the agent, in its node's namespace (a child process) -------------------------------------

class Probe:
    """What the agent did when, by wrapping its own methods (nothing else changes)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.marks: dict[str, float] = {}
        self.tunnels: list[dict] = []  # each sync_tunnels: ports, seconds
        self.passes: list[dict] = []
        self.ops: list[dict] = []  # each dump and bundle on a real switch
        self.errors: list[str] = []  # passes that failed
        self.cond = threading.Condition()

    def mark(self, what: str) -> None:
        self.marks.setdefault(what, time.perf_counter() - self.t0)

    def instrument(self, core) -> None:
        db = core.db
        inner_sync, inner_ports, inner_up, inner_pass = db.sync_tunnels, db.ofports, core.switch_up, core.reconcile

        def sync_tunnels(bridge, peers, bfd):
            t, cpu = time.perf_counter(), time.process_time()
            inner_sync(bridge, peers, bfd)
            self.tunnels.append({"ports": len(peers), "start": t - self.t0, "s": time.perf_counter() - t,
                                 "agent_cpu_s": time.process_time() - cpu})

        def ofports(bridge):
            out = inner_ports(bridge)
            if bridge == "br-int" and self.tunnels:  # vswitchd has numbered every port asked for
                self.mark("numbered")
            return out

        def switch_up(switch):
            self.mark(f"connected {switch.bridge}")
            for op in ("dump_flows", "apply"):
                setattr(switch, op, self._timed_op(switch.bridge, op, getattr(switch, op)))
            inner_up(switch)

        def reconcile(full=False):
            start = time.perf_counter()
            try:
                result = inner_pass(full=full)
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                raise
            with self.cond:
                self.passes.append({"start": start, "end": time.perf_counter(), "full": full,
                                    "changes": result.changes})
                if {"br-int", "br-ex"} <= set(result.changes):
                    self.mark("installed")
                self.cond.notify_all()
            return result
        db.sync_tunnels, db.ofports, core.switch_up, core.reconcile = sync_tunnels, ofports, switch_up, reconcile

    def _timed_op(self, bridge, op, fn):
        def timed(*args):
            t = time.perf_counter()
            out = fn(*args)
            n = len(out) if op == "dump_flows" else len(args[0]) + len(args[1])
            self.ops.append({"bridge": bridge, "op": op, "n": n, "start": t, "s": time.perf_counter() - t})
            return out
        return timed

    def wait_pass(self, after: float, timeout: float = 60.0) -> dict:
        """The first pass begun after ``after`` that changed br-int."""
        deadline = time.perf_counter() + timeout
        with self.cond:
            while True:
                for p in self.passes:
                    if p["start"] > after and p["changes"].get("br-int", (0, 0)) != (0, 0):
                        return p
                if not self.cond.wait(deadline - time.perf_counter()):
                    import faulthandler
                    faulthandler.dump_traceback(all_threads=True)  # where the agent's loop is, into its log
                    raise TimeoutError(f"no pass changed br-int; {len(self.passes)} passes, "
                                       f"failed: {self.errors[-3:]}")


def start_agent(args, probe: Probe):
    """The agent as ``sdn-egress agent`` runs it (main.py), with the bench's source and stand-ins."""
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager

    from ovs_setup.node import agent_socket
    from sdn_egress.agent import listen as listen_mod
    from sdn_egress.agent.nodedb import OvsdbNode

    size = gen.SIZES[args.size]
    source = scale.make_source(args.role, args.node)
    scale.serve(source, size)
    probe.mark("listed")
    db_target = f"unix:{os.path.join(args.rundir, 'db.sock')}"
    core = scale.make_agent(args.node, source, args.status, db=OvsdbNode(db_target), switches=False)
    if args.role == "gateway":  # the nodes that send to it: their namespaces here have no OVS to send BFD
        scale.hear_senders(core, size, core.store.load())
    core.config.resync_interval = 1e9  # the full passes are measured at the end, on their own
    probe.instrument(core)
    listen = listen_mod.parse(f"punix:{agent_socket(db_target)}")
    listen_mod.prepare(listen)
    cfg.CONF(args=listen.os_ken_args(), project="os_ken")
    manager = AppManager.get_instance()
    manager.load_apps(["sdn_egress.agent.app"])
    listen_mod.install(manager, listen)
    manager.instantiate_apps(agent_core=core, **manager.create_contexts())
    return source, core


def pod_flows(ovs: OvsInstance, ip: str) -> int:
    """br-int's flows that name ``ip``, as ovs-ofctl dumps them."""
    pattern = re.compile(r"=" + re.escape(ip) + r"(?![\d/])")
    return sum(1 for line in ovs.ofctl("dump-flows", "br-int").splitlines() if pattern.search(line))


def relabel(source, core, probe: Probe, ovs: OvsInstance, size, j: int, selected: bool, rv: int,
            poll: bool = False) -> dict:
    """Deliver one watch event relabelling pod j into (or out of) its
    policies; when the agent's loop has committed the change to br-int, or
    (``poll``) when ovs-ofctl first shows it."""
    event = gen.pod(size, j, app=0, rv=rv)  # as bench/scale.py relabels it: the name stays app-0-...
    if not selected:
        event["metadata"]["labels"]["app"] = f"a{gen.APPS - 1}"  # an app no policy selects
    ip = event["status"]["podIP"]
    t = time.perf_counter()
    if not scale.deliver(source, event):
        raise RuntimeError(f"the event was not sent to {core.config.node}'s Pod informer")
    if poll:
        while (pod_flows(ovs, ip) > 0) != selected:
            pass
        seen = time.perf_counter() - t
    try:
        p = probe.wait_pass(t)
    except TimeoutError as exc:
        cached = [o["metadata"]["labels"] for o in source.informers["Pod"].items()
                  if o["metadata"]["name"] == event["metadata"]["name"]]
        raise TimeoutError(f"{exc}; source changed: {source.wait_for_change(0)}; cached: {cached}") from None
    bundles = [o for o in probe.ops if o["op"] == "apply" and o["start"] >= p["start"]]
    out = {"selected": selected, "total": p["end"] - t, "wake": p["start"] - t, "pass": p["end"] - p["start"],
           "bundle": sum(o["s"] for o in bundles), "mods": sum(o["n"] for o in bundles),
           "flows_of_pod": pod_flows(ovs, ip)}
    if poll:
        out["polled"] = seen
    return out


def events(source, core, probe, ovs, size, j: int) -> list[dict]:
    out = []
    for k in range(ROUNDS):
        for selected in (True, False):
            out.append(relabel(source, core, probe, ovs, size, j, selected, rv=2 + 2 * k + (not selected)))
    for selected in (True, False):
        out.append(relabel(source, core, probe, ovs, size, j, selected, rv=40 + (not selected), poll=True))
    return out


def full_passes(core, probe: Probe) -> list[dict]:
    """The agent's full recompute (memos dropped, both bridges dumped, every
    flow built again and diffed), with its loop stopped."""
    core.stop()
    core.wait_stopped(30)
    out = []
    for _ in range(FULL_PASSES):
        t = time.perf_counter()
        result = core.reconcile(full=True)
        dumps = [o for o in probe.ops if o["op"] == "dump_flows" and o["start"] >= t]
        out.append({"s": time.perf_counter() - t, "dump_s": sum(o["s"] for o in dumps),
                    "changes": result.changes})
    return out


def ovsdb_reads(core, n: int = 10) -> dict[str, float]:
    """Median seconds of the OVSDB reads a pass makes (every tunnel's BFD
    state, also at every poll of the loop; br-int's port numbers), the loop stopped."""
    out = {}
    for name, read in (("bfd_states", core.node.bfd_states), ("ofports", lambda: core.db.ofports("br-int"))):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            read()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    return out


def agent_main(args) -> None:
    import logging
    import resource

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    probe = Probe()
    source, core = start_agent(args, probe)
    ovs = OvsInstance(args.rundir)  # already inside the namespace
    deadline = time.monotonic() + 900
    while "installed" not in probe.marks:
        if time.monotonic() > deadline:
            raise SystemExit("the agent did not install its flows within 900 s")
        time.sleep(0.01)

    def say(**kw):
        kw["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(kw), flush=True)
    first = probe.passes[0]["start"] - probe.t0
    say(marks=probe.marks, tunnels=probe.tunnels, first_pass=first,
        passes=[{**p, "start": p["start"] - probe.t0, "end": p["end"] - probe.t0} for p in probe.passes],
        ops=[{**o, "start": o["start"] - probe.t0} for o in probe.ops],
        counts=core.bridges.counts(), peers=len(core.node.peers or {}))
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "events":
            say(events=events(source, core, probe, ovs, gen.SIZES[args.size], args.pod))
        elif cmd == "full":
            say(full=full_passes(core, probe), reads=ovsdb_reads(core))
            break
    sys.stdout.flush()
    os._exit(0)  # os-ken's threads cannot be stopped (as in sdn_egress.agent.main)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=("gateway", "worker"), required=True)
    for name in ("--size", "--node", "--status", "--rundir"):
        p.add_argument(name, required=True)
    p.add_argument("--pod", type=int, required=True)
    try:
        agent_main(p.parse_args(argv))
    finally:  # os-ken's threads would keep a failed agent alive
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    main()
