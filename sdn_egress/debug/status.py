"""``sdn-egress status``: policies with their EIP, active and standby gateways
and who really holds the EIP; each node's agent, switch connections, flow
counts and BFD sessions; the cluster CIDRs never steered; invalid objects."""
from __future__ import annotations

import argparse
import json
import sys
import time

from sdn_egress.reports import AgentReports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn_egress.lab.lab import DEFAULT_STATE_DIR
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--lab-state", default=DEFAULT_STATE_DIR, help="the lab to report on")
    parser.add_argument("--status", help="a controller status directory instead of a lab")
    parser.add_argument("--manifests", help="with --status: the manifest directory (cluster CIDRs)")
    kube = parser.add_argument_group("Kubernetes (the objects, the allocation ConfigMap, the agents' Leases)")
    kube.add_argument("--kubeconfig", metavar="PATH", help="report on the cluster this kubeconfig reaches")
    kube.add_argument("--context", help="the kubeconfig context (default: its current one)")
    kube.add_argument("--namespace", default="sdn-egress", help="sdn-egress's namespace (default sdn-egress)")
    kube.add_argument("--lease-namespace", default="sdn-egress-agents",
                      help="where the agents keep their Leases (default sdn-egress-agents)")


def _bfd(ovs) -> dict[str, str]:
    """tunnel port -> BFD state, from the node's OVSDB."""
    out = ovs.vsctl("--columns=name,bfd_status", "--format=json", "find", "Interface", "type=geneve")
    rows = json.loads(out)["data"]
    result = {}
    for name, status in rows:
        pairs = dict(status[1]) if isinstance(status, list) and status[0] == "map" else {}
        if pairs:
            result[name] = pairs.get("state", "?") + ("" if pairs.get("forwarding") == "true" else " (not forwarding)")
    return result


def collect(status_dir: str, manifests: str | None, lab=None) -> dict:
    from sdn_egress.allocation import AllocationStore
    from sdn_egress.source import ManifestDirSource

    reports = AgentReports(status_dir)
    if lab is not None:
        state = lab.cluster_state()
    else:
        state = ManifestDirSource(manifests).snapshot() if manifests else None
    return summarize(AllocationStore(status_dir).load(), reports.read(), reports.held(), state, lab)


def collect_kube(api, namespace: str, lease_namespace: str, timeout: float = 30.0) -> dict:
    """The same from the API: the objects (and the service CIDRs) through the
    Kubernetes source, the allocation ConfigMap, the agents' Leases; the
    ranges never steered include ``CLUSTER_CIDRS`` of ConfigMap
    ``sdn-egress-config`` (the deployment's configuration)."""
    import datetime

    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from sdn_egress.kube.heartbeat import LeaseReports
    from sdn_egress.kube.source import KubeSource
    from sdn_egress.kube.store import ConfigMapAllocationStore

    try:
        cm = client.CoreV1Api(api).read_namespaced_config_map("sdn-egress-config", namespace)
        extra = ((cm.data or {}).get("CLUSTER_CIDRS") or "").split()
    except ApiException as exc:
        if exc.status != 404:
            raise
        extra = []
    source = KubeSource(api, extra_cluster_cidrs=extra).start()
    leases = LeaseReports(api, lease_namespace).start()
    try:
        if not source.wait_synced(timeout=timeout) or not leases.informer.synced.wait(timeout):
            raise ValueError(f"the API server listed nothing within {timeout:.0f} s")
        state = source.snapshot()
        reports = {}
        for node, r in leases.read().items():
            try:
                renewed = datetime.datetime.fromisoformat(r["renewTime"]).timestamp()  # Z or +00:00
            except ValueError:
                renewed = 0
            reports[node] = {**r, "time": renewed}
        held = leases.held()
    finally:
        source.stop()
        leases.stop()
    return summarize(ConfigMapAllocationStore(api, namespace).load(), reports, held, state)


def summarize(alloc, reports: dict[str, dict], held: dict[str, str], state, lab=None) -> dict:
    """``reports``: node -> the agent's report (``time``: when, epoch seconds)."""
    out = {"policies": [], "nodes": [], "cluster_cidrs": [], "errors": []}
    if alloc is not None:
        by_ip = {str(a.ip): a for a in alloc.eips}
        for key, p in sorted(alloc.policies.items()):
            a = by_ip.get(str(p.eip_v4)) if p.eip_v4 else None
            out["policies"].append({
                "policy": key, "eip": str(p.eip_v4) if p.eip_v4 else None, "gateway": p.gateway,
                "active": a.nodes[0] if a and a.nodes else None,
                "standbys": list(a.nodes[1:]) if a else [],
                "held_by": held.get(str(p.eip_v4)) if p.eip_v4 else None,
                "ready": p.ready,
                "conditions": [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                               for c in p.conditions]})
        out["errors"] = [e.to_dict() for e in alloc.errors]
    now = time.time()
    for node, r in sorted(reports.items()):
        entry = {"node": node, "report_age_s": round(now - r.get("time", 0), 1),
                 "passes": r.get("passes"), "error": r.get("error"),
                 "switches": r.get("switches", {}), "held_eips": r.get("held_eips", []),
                 "tunnels": r.get("tunnels", {}), "tunnel_mtu": r.get("tunnel_mtu"),
                 "mss": r.get("mss"), "oversized": r.get("oversized", {})}
        if lab is not None:
            entry["agent_alive"] = lab.agent_status(node).get("pid") == lab.agent_pid(node) and \
                lab.ovs(node).running()
            try:
                entry["bfd"] = _bfd(lab.ovs(node)) if lab.ovs(node).running() else {}
            except Exception:  # noqa: BLE001 - a node being killed right now
                entry["bfd"] = {}
        out["nodes"].append(entry)
    if state is not None:
        out["cluster_cidrs"] = [str(c) for c in state.cluster_cidrs(4) + state.cluster_cidrs(6)]
    return out


def render(st: dict) -> str:
    lines = ["POLICY               EIP              ACTIVE    STANDBYS        HELD BY   READY"]
    for p in st["policies"]:
        lines.append(f"{p['policy']:<20} {p['eip'] or '-':<16} {p['active'] or '-':<9} "
                     f"{','.join(p['standbys']) or '-':<15} {p['held_by'] or '-':<9} "
                     f"{'yes' if p['ready'] else 'no'}")
        for c in p["conditions"]:
            if c["status"] != "True":
                lines.append(f"    {c['type']}={c['status']} {c['reason']}: {c['message']}")
    lines.append("")
    lines.append("NODE       AGENT  SWITCHES (flows)                 TUNNEL MTU/MSS  HELD EIPS        BFD")
    for n in st["nodes"]:
        sw = ", ".join(f"{b} {'up' if s.get('connected') else 'DOWN'} ({s.get('flows')})"
                       for b, s in sorted(n["switches"].items()))
        bfd = ", ".join(f"{k}={v}" for k, v in sorted(n.get("bfd", {}).items())) or "-"
        alive = {True: "up", False: "DOWN", None: "?"}[n.get("agent_alive")]
        mtu = f"{n['tunnel_mtu']}/{n['mss']}" if n.get("tunnel_mtu") else "-"
        lines.append(f"{n['node']:<10} {alive:<6} {sw:<32} {mtu:<15} {','.join(n['held_eips']) or '-':<16} {bfd}")
        big = n.get("oversized") or {}
        if any(big.values()):
            lines.append(f"    too big for the tunnel, from the uplink: {big.get('icmp', 0)} answered with "
                         f"ICMP frag-needed, {big.get('fragmented', 0)} fragmented, "
                         f"{big.get('dropped', 0)} dropped")
        if n.get("error"):
            lines.append(f"    error: {n['error']}")
    if st["cluster_cidrs"]:
        lines.append("")
        lines.append("never steered (cluster): " + ", ".join(st["cluster_cidrs"]))
    if st["errors"]:
        lines.append("")
        lines.append("INVALID OBJECTS")
        for e in st["errors"]:
            obj = f"{e['kind']} {e['namespace'] + '/' if e['namespace'] else ''}{e['name']}"
            lines.append(f"  {obj}: {e['field']}: {e['message']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from sdn_egress.lab import Lab, LabError
    try:
        if args.kubeconfig:
            from kubernetes.client.rest import ApiException

            from sdn_egress.kube.client import api_client
            try:
                st = collect_kube(api_client(args.kubeconfig, args.context), args.namespace, args.lease_namespace)
            except ApiException as exc:
                raise ValueError(f"the API server: HTTP {exc.status} {exc.reason}") from None
        elif args.status:
            st = collect(args.status, args.manifests)
        else:
            lab = Lab(args.lab_state)
            lab.load()
            st = collect(lab.status_dir, lab.manifests, lab)
    except (LabError, OSError, ValueError) as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(st, sys.stdout, indent=2)
        print()
    else:
        print(render(st))
    return 0
