"""Scale benchmark (issue 15): the control plane's cost at S, M and L.

    python bench/scale.py [--sizes S,M,L] [--no-write]

Each role runs in its own subprocess (its peak RSS is that process's):
the controller, the agent of the worker whose pod is relabelled, the agent of
an unrelated worker, the agent of the busiest gateway node.  Each builds the
project's own :class:`~sdn_egress.source.kube.KubeSource` with the informers
its process runs (their selectors decide which objects it is sent: what the
API server would send it, from bench/clustergen.py), then the project's own
parsers, allocation (``Controller.reconcile``), view, ``flows.build`` and
``AgentCore.reconcile``.  OVSDB, the switches and the kernel are replaced by
recording stand-ins (see :class:`Node`): the switch side is not measured here.
An agent reads the controller's allocation as the Kubernetes ConfigMap reader
gives it (parsed once per version: :class:`Allocations`).

The event: one pod of a worker is relabelled from an app no policy selects
into one its namespace's policies select; delivered, as a watch event, to the
informers whose selector matches it (the others are not sent it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clustergen as gen  # noqa: E402

ROLES = ("controller", "worker", "unrelated", "gateway")


# -- serving the informers ----------------------------------------------------------------------

def _pod_node(inf) -> int | None:
    """The node index a Pod informer's field selector asks for (None: every pod)."""
    sel = getattr(inf, "_selectors", {}).get("field_selector") or ""
    for term in sel.split(","):
        k, _, v = term.partition("=")
        if k.strip() == "spec.nodeName":
            return int(v.strip().rsplit("-", 1)[1])
    return None


def serve(source, size: gen.Size) -> None:
    """List every informer of ``source`` as the agent does (its own
    :meth:`Informer._list`, pages, requests through the ``kubernetes``
    client: :func:`api_client`), each answered as the API server would."""
    api = api_client(size)
    for inf in source.informers.values():
        inf.api_client = api
        inf._list()


class Reply:
    """An HTTP response as the client's REST layer returns it (read whole)."""

    status, reason, headers = 200, "OK", {}

    def __init__(self, data: bytes):
        self.data = data

    @property
    def response(self):
        return self

    def read(self):
        return self.data

    def release_conn(self):
        pass


def api_client(size: gen.Size):
    """A real ``kubernetes`` ApiClient whose transport is the API server of
    ``size``'s cluster: a list request (its path, selectors, ``limit`` and
    ``continue``) is answered with that page's JSON, made for that page only
    (clustergen.listed); its items without kind and apiVersion, as a list's
    are; every page at the snapshot's version."""
    from urllib.parse import parse_qs, urlsplit

    from kubernetes import client
    from sdn_egress.kube.resources import WATCHED

    by_path = {r.path(): r for r in WATCHED}
    api = client.ApiClient(client.Configuration(host="http://api.bench.invalid"))

    def request(method, url, headers=None, body=None, post_params=None, _request_timeout=None):
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        res = by_path[parts.path]
        sel = query.get("fieldSelector", "")
        node = int(sel.rsplit("-", 1)[1]) if sel.startswith("spec.nodeName=") else None
        n, make = gen.listed(size, res.kind, node)
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or 0)
        end = min(n, start + limit) if limit else n
        items = []
        for k in range(start, end):
            item = make(k)
            del item["kind"], item["apiVersion"]
            items.append(item)
        meta = {"resourceVersion": "1"}
        if end < n:
            meta["continue"] = str(end)
        return Reply(json.dumps({"kind": f"{res.kind}List", "apiVersion": res.api_version, "metadata": meta,
                                 "items": items}).encode())
    api.rest_client.request = request
    return api


def deliver(source, obj: dict) -> bool:
    """A watch event to the informers that select it; whether any did."""
    sent = False
    for inf in source.informers.values():
        if inf.res.kind != obj["kind"]:
            continue
        node = _pod_node(inf)
        if node is not None and gen.node_name(node) != obj["spec"]["nodeName"]:
            continue
        inf._apply("MODIFIED", obj)
        sent = True
    return sent


def make_source(role: str, node: str | None):
    """The role's source; its informers' API client is set by :func:`serve`."""
    from sdn_egress.kube import resources
    from sdn_egress.source.kube import KubeSource

    if role == "controller":
        return KubeSource(None, resources=resources.CONTROLLER_WATCHED, detect_service_cidrs=False)
    return KubeSource(None, node=node, detect_service_cidrs=False)


def timed_snapshots(source) -> list[float]:
    """Wrap source.snapshot to record how long each takes."""
    times: list[float] = []
    inner = source.snapshot

    def snapshot():
        t = time.perf_counter()
        try:
            return inner()
        finally:
            times.append(time.perf_counter() - t)
    source.snapshot = snapshot
    return times


# -- the agent's stand-ins -----------------------------------------------------------------------

class Switch:
    """A switch's flow table: one flow per identity (its own work, in its own
    process on a real node, is not the agent's)."""

    def __init__(self, bridge: str):
        self.bridge, self.dpid, self.table = bridge, 1 if bridge == "br-int" else 2, {}

    @property
    def flows(self) -> set:
        return set(self.table.values())

    def dump_flows(self, names):
        return set(self.table.values())

    def apply(self, adds, deletes):
        for d in deletes:
            self.table.pop(d.key, None)
        self.table.update((f.key, f) for f in adds)

    def announce(self, *args):
        pass


class Routing:
    def sync(self, *args, **kwargs):
        pass

    def reserve_ports(self, *args, **kwargs):
        return True

    def hold_due(self, *args):
        return False


class Allocations:
    """The allocation as the Kubernetes agent's ConfigMap reader gives it:
    parsed once per version (here: one version), ``changed()`` when it moved."""

    where = "the bench's allocation"
    synced = True

    def __init__(self, alloc):
        self.alloc = alloc

    def load(self):
        return self.alloc

    def changed(self) -> bool:
        return False


class Node:
    """The node's OVSDB as the agent reads it (the agent's NodeDb): one port
    per tunnel it asked for."""

    def __init__(self):
        self.ports: dict[str, str] = {}

    def bridge_dpid(self, bridge: str) -> int:
        return 1 if bridge == "br-int" else 2

    def iface_mac(self, name: str) -> str:
        return "02:00:00:00:00:01"

    def iface_mtu(self, name: str) -> int:
        return 1500

    def bfd_status(self, bridge: str) -> dict:
        return {}

    def sync_tunnels(self, bridge, peers, bfd=None):
        from ovs_setup import ovsdb
        self.ports = ovsdb.tunnel_port_names(peers)

    def ofports(self, bridge):
        if bridge == "br-ex":
            return {"br-ex": 65534, "patch-ex-int": 1, "uplink": 2}
        out = {"egw0": 1, "gnv-flow": 2, "patch-int-ex": 3}
        out.update({name: 10 + i for i, name in enumerate(sorted(self.ports.values()))})
        return out


def make_agent(node: str, source, status_dir: str, db=None, switches: bool = True):
    """The agent of ``node``; ``db``: its OVSDB (default: the :class:`Node`
    stand-in); ``switches``: connect :class:`Switch` stand-ins (without: the
    caller's real switches connect)."""
    from sdn_egress.agent import core as core_mod
    from sdn_egress.agent.facts import NodeReader
    from sdn_egress.allocation import FileAllocationStore

    db = db if db is not None else Node()
    bfd = {"enable": "true", "min_tx": "100", "min_rx": "100", "decay_min_rx": "0", "mult": "3"}
    cfg = core_mod.AgentConfig(node=node, ovs_db="unused", tunnel_mtu=1400, new_pod_hold=0, bfd=bfd,
                               bfd_grace=1e9)
    reader = NodeReader(node, db, bfd=bfd, tunnel_mtu=1400, next_hop_mac=lambda dest, family=4: "02:00:00:00:00:fe",
                        address_mtu=lambda ip: 1500)
    core = core_mod.AgentCore(cfg, source, Allocations(FileAllocationStore(status_dir).load()), routing=Routing(),
                              db=db, node=reader)
    for bridge in ("br-int", "br-ex") if switches else ():
        core.switch_up(Switch(bridge))
    return core


# -- one role, in its own process ----------------------------------------------------------------

def choose(size: gen.Size, alloc) -> dict:
    """The event pod (a worker's), the busiest gateway node, an unrelated worker."""
    with_eip = sorted(k for k, s in alloc.policies.items() if (s.eip_v4 or s.eip_v6) and "/" in k)
    ns = with_eip[0].split("/")[0]
    j = gen.event_pod(size, int(ns[2:]))
    worker = gen.pod_place(size, j)[1]
    active: dict[str, int] = {}
    for a in alloc.eips:
        if a.nodes:
            active[a.nodes[0]] = active.get(a.nodes[0], 0) + 1
    busiest = max(sorted(active), key=lambda n: active[n])
    unrelated = next(i for i in range(worker + 1, worker + size.nodes)
                     if gen.gateway_of_node(size, i % size.nodes) is None) % size.nodes
    return {"pod": j, "worker": gen.node_name(worker), "gateway": busiest,
            "unrelated": gen.node_name(unrelated), "eips": len(alloc.eips)}


def run_role(role: str, size: gen.Size, status_dir: str) -> dict:
    import gc

    import kubernetes.client  # noqa: F401 - every real process has it loaded
    import flows
    from sdn_egress.allocation import FileAllocationStore

    out: dict = {"role": role}
    store = FileAllocationStore(status_dir)
    picked = choose(size, store.load()) if role != "controller" else None
    node = picked[role] if picked else None
    source = make_source(role, node)
    t = time.perf_counter()
    serve(source, size)
    out["list_s"] = time.perf_counter() - t
    gc.collect()
    snaps = timed_snapshots(source)
    if role == "controller":
        from sdn_egress.controller import Controller

        kept_in = status_dir

        class Store:  # the real file store starting afresh, without the agents' report directory
            where = kept_in
            status_dir = None

            def load(self):
                return None

            def save(self, alloc):
                return store.save(alloc)

            def read_moves(self):
                return {}

            def finish_moves(self, done):
                pass
        controller = Controller(source, Store())
        t = time.perf_counter()
        alloc = controller.reconcile()
        out["first_pass_s"] = time.perf_counter() - t
        picked = choose(size, alloc)
        pass_ = controller.reconcile
    else:
        core = make_agent(node, source, status_dir)
        if role == "gateway":
            hear_senders(core, size, store.load())
        t = time.perf_counter()
        core.reconcile(full=True)
        out["first_pass_s"] = time.perf_counter() - t
        settle(core, out, "first_settle_s")
        t = time.perf_counter()
        core.reconcile(full=True)
        out["full_pass_s"] = time.perf_counter() - t
        settle(core, out, "settle_s")
        pass_ = core.reconcile
    out.update(picked)
    out["first_snapshot_s"] = snaps[0]
    del snaps[:]
    event = gen.pod(size, picked["pod"], app=0, rv=2)
    t = time.perf_counter()
    out["delivered"] = deliver(source, event)
    if source.wait_for_change(0):
        pass_()
        out["event_pass_s"] = time.perf_counter() - t
        out["event_snapshot_s"] = snaps[0]
    if role == "worker" and out.get("event_pass_s") is not None:
        out["relabel_s"] = relabels(source, core, size, picked["pod"])
    if role != "controller":
        view = core.last_result.view
        t = time.perf_counter()
        desired = flows.build(view)
        out["build_s"] = time.perf_counter() - t
        out["flows"] = sum(len(v) for v in desired.values())
        out["steers"] = len(view.steers)
        out["tunnels"] = len(core.node.peers or {})
        out["bfd"] = out["tunnels"] if core.config.bfd else 0
    out["pods_cached"] = len(source.informers["Pod"].items()) if "Pod" in source.informers else 0
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def settle(core, out: dict, name: str) -> None:
    """What the agent's loop does after each full pass (AgentCore.run):
    settle the heap (collect, freeze), timed."""
    t = time.perf_counter()
    core.settle_heap(time.monotonic())
    out[name] = time.perf_counter() - t


def relabels(source, core, size: gen.Size, j: int, rounds: int = 9) -> tuple[float, float, float, float]:
    """The event pod relabelled out of its policies and back, ``rounds``
    times: the median pass (from the watch event) of each direction, as wall
    time and as the CPU time of this process (the machine is shared: wall
    time also counts the moments another process had the core)."""
    import statistics

    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for k in range(rounds):
        for selected in (False, True):
            event = gen.pod(size, j, app=0, rv=3 + 2 * k + selected)
            if not selected:
                event["metadata"]["labels"]["app"] = f"a{gen.APPS - 1}"  # an app no policy selects
            c, t = time.process_time(), time.perf_counter()
            deliver(source, event)
            if source.wait_for_change(0):
                core.reconcile()
            times[selected].append(time.perf_counter() - t)
            cpu[selected].append(time.process_time() - c)
    return (statistics.median(times[True]), statistics.median(times[False]),
            statistics.median(cpu[True]), statistics.median(cpu[False]))


# -- the table ---------------------------------------------------------------------------------------

def ms(v) -> str:
    if v is None:
        return "—"
    return f"{v * 1000:,.1f} ms" if v < 1 else f"{v:,.2f} s"


def bfd_senders(size: gen.Size, alloc, gateway: str) -> set[int]:
    """The other nodes that keep a port (so a BFD session) to ``gateway``:
    the other gateway nodes, and those with a pod that a policy with an EIP
    on that node selects (view.used_gateways' rule, from the generator's: a
    namespaced policy selects apps a0-a9 of its namespace, a cluster policy
    app a10 of the namespaces of its tier)."""
    eips = {str(a.ip) for a in alloc.eips if gateway in a.nodes}
    on_gateway = {k for k, st in alloc.policies.items() if {str(st.eip_v4), str(st.eip_v6)} & eips}
    namespaces = {k.split("/")[0] for k in on_gateway if "/" in k}
    tiers = {f"t{int(k.rsplit('-', 1)[1]) % 4}" for k in on_gateway if "/" not in k}
    senders = set(range(3 * size.gateways))  # the gateway nodes: each has a port to every other one
    for j in range(size.pods):
        ns, i, app = gen.pod_place(size, j)
        if (app < 10 and ns in namespaces) or (app == 10 and f"t{int(ns[2:]) % 4}" in tiers):
            senders.add(i)
    return senders - {int(gateway.rsplit("-", 1)[1])}


def hear_senders(core, size: gen.Size, alloc) -> None:
    """What a gateway node's agent learns from the BFD of the nodes that send
    to it (:func:`bfd_senders`), each packet's tunnel source as the SENDER
    flow's packet-in hands it over; the ports follow in its next pass."""
    for i in sorted(bfd_senders(size, alloc, core.config.node)):
        core.node.heard(gen.node_ip(i))


def run_size(size: gen.Size) -> dict:
    from sdn_egress.allocation import FileAllocationStore

    with tempfile.TemporaryDirectory(prefix="sdn-egress-scale-") as status:
        results = {}
        for role in ROLES:
            proc = subprocess.run([sys.executable, __file__, "--role", role, "--size", size.name,
                                   "--status", status], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{size.name} {role} failed:\n{proc.stderr[-4000:]}")
            results[role] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  {size.name} {role}: {results[role]}", file=sys.stderr)
        results["bfd_up"] = len(bfd_senders(size, FileAllocationStore(status).load(), results["gateway"]["gateway"]))
    return results


def event_cell(r: dict) -> str:
    if not r["delivered"]:
        return "not sent (0)"
    return ms(r.get("event_pass_s"))


ROWS = (
    ("snapshot after the event (worker agent / controller)", lambda r: (
        f"{ms(r['worker'].get('event_snapshot_s'))} / "
        + (ms(r['controller'].get('event_snapshot_s')) if r['controller']['delivered'] else "not sent"))),
    ("first snapshot (cold parse) worker / gateway / controller", lambda r: " / ".join(
        ms(r[k]["first_snapshot_s"]) for k in ("worker", "gateway", "controller"))),
    ("one pod relabelled into a policy → new flows on its node (agent pass)", lambda r: event_cell(r["worker"])),
    ("the same pod relabelled into / out of its policies again (median of 9 each): wall · CPU", lambda r: (
        " / ".join(ms(v) for v in r["worker"]["relabel_s"][:2]) + " · "
        + " / ".join(ms(v) for v in r["worker"]["relabel_s"][2:]) if r["worker"].get("relabel_s") else "—")),
    ("the same event on an unrelated worker", lambda r: event_cell(r["unrelated"])),
    ("the same event on the busiest gateway node", lambda r: event_cell(r["gateway"])),
    ("controller pass after one pod event", lambda r: event_cell(r["controller"])),
    ("full recompute of one node (worker / gateway)", lambda r: (
        f"{ms(r['worker']['full_pass_s'])} / {ms(r['gateway']['full_pass_s'])}")),
    ("the agent's heap settling after a full pass (collect, freeze): at startup / then (worker / gateway)",
     lambda r: " / ".join(f"{ms(r[k]['first_settle_s'])} · {ms(r[k]['settle_s'])}" for k in ("worker", "gateway"))),
    ("controller first pass (allocation from scratch)", lambda r: ms(r["controller"]["first_pass_s"])),
    ("flows on the busiest gateway node", lambda r: f"{r['gateway']['flows']:,}"),
    ("`flows.build` for that gateway", lambda r: ms(r["gateway"]["build_s"])),
    ("flows on the event's worker", lambda r: f"{r['worker']['flows']:,}"),
    ("worker agent RSS (own process, peak)", lambda r: f"{r['worker']['rss_mb']:,.0f} MB"),
    ("gateway agent RSS (own process, peak)", lambda r: f"{r['gateway']['rss_mb']:,.0f} MB"),
    ("controller RSS (own process, peak)", lambda r: f"{r['controller']['rss_mb']:,.0f} MB"),
    ("pods in the cache: worker / gateway / controller", lambda r: " / ".join(
        f"{r[k]['pods_cached']:,}" for k in ("worker", "gateway", "controller"))),
    ("Geneve ports = BFD sessions: busiest gateway / event worker / unrelated worker", lambda r: (
        f"{r['gateway']['bfd']:,} / {r['worker']['bfd']:,} / {r['unrelated']['bfd']:,}")),
    ("BFD sessions up on the busiest gateway (nodes with a port to it) · its BFD packets/s sent", lambda r: (
        f"{r['bfd_up']:,} · {r['bfd_up'] * 10 + (r['gateway']['bfd'] - r['bfd_up']):,}")),
    ("EIPs", lambda r: f"{r['controller']['eips']:,}"),
)


def table(by_size: dict[str, dict]) -> str:
    from common import markdown_table

    heads = [f"{n} ({gen.SIZES[n].nodes:,} / {gen.SIZES[n].pods:,} / {gen.SIZES[n].policies:,})" for n in by_size]
    return markdown_table(heads, ROWS, list(by_size.values()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="S,M,L")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    p.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--status", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role:
        import logging
        logging.basicConfig(level=logging.ERROR)
        print(json.dumps(run_role(args.role, gen.SIZES[args.size], args.status)))
        return 0
    by_size = {}
    for name in args.sizes.split(","):
        started = time.monotonic()
        by_size[name] = run_size(gen.SIZES[name])
        print(f"{name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    body = table(by_size)
    print(body)
    if not args.no_write:
        from common import write_section
        write_section("scale", body + NOTE)
    return 0


NOTE = """

Sizes: nodes / pods / policies; 200 namespaces, bench/clustergen.py. Each role is its own process,
sent what its informers select (a watch event only where the selector matches: "not sent" means the
API server does not send that process the event at all). OVSDB, switches and the kernel are
stand-ins: the switch side is not measured here; the allocation comes as the ConfigMap reader gives it
(parsed once per version). "new flows on its node" runs from the watch event
to the end of the agent's pass (snapshot, view, `flows.build`, diff); a pass reuses what the last one
computed for every object that did not change (a pod's steers and flows, a node's return routes,
through `flows.memo.Memo`: equal inputs, equal result), so it pays for the changed pod; a policy's
destinations minus its exclusions are computed once for all its pods. The first event comes right
after the startup, when the agent's loop has settled the heap (after each full pass it collects and
`gc.freeze()`s what lives, so a pass never meets a full collection of the long-lived heap, ~0.2 s at
L). "full recompute" is the agent's periodic full pass: memos dropped, the switch dumped, every
steer, route and flow built again and diffed. `flows.build` for the gateway: without a memo.
BFD: the agent enables it on
every tunnel port. A gateway node has a port to the other gateway nodes and to the nodes it heard
BFD from (it does not watch other nodes' pods, so it cannot tell which workers send to it: a
worker's BFD arrives on gnv-flow until the gateway has a port back, and goes to the agent; here the
gateway's agent is handed those packet-ins, one per worker whose pods use one of its EIPs, before
its first pass). Packets/s: 10 per session up (100 ms), at most 1 per port whose session is down
(RFC 5880: not faster than 1 s).
RSS includes the lists as the informers read them, through the `kubernetes` client (only its transport
is the bench's): in pages of 500 objects, each page's JSON and its objects untrimmed until they are
trimmed into the cache. Flows on the busiest gateway node: one `reply_route` flow per pod CIDR of the
cluster, six per EIP it holds (both bridges), a reply flow per gateway its own pods use, its own
pods' steers (1,787 at L) and the SENDER flow: 6,913 at L, against the goal 2 x (EIPs + nodes) + a
constant = 10,500 + c.
The relabels' CPU is the process's (CLOCK_PROCESS_CPUTIME_ID); on a virtual machine it also counts
what the hypervisor took, so it tracks the wall time: the spread between runs (4-10 ms at L on this
shared machine) is the host's load, not the agent's.
"""

if __name__ == "__main__":
    sys.exit(main())
