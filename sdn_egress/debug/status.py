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

    alloc = AllocationStore(status_dir).load()
    reports = AgentReports(status_dir)
    held = reports.held()
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
    for node, r in sorted(reports.read().items()):
        entry = {"node": node, "report_age_s": round(now - r.get("time", 0), 1),
                 "passes": r.get("passes"), "error": r.get("error"),
                 "switches": r.get("switches", {}), "held_eips": r.get("held_eips", []),
                 "tunnels": r.get("tunnels", {})}
        if lab is not None:
            entry["agent_alive"] = lab.agent_status(node).get("pid") == lab.agent_pid(node) and \
                lab.ovs(node).running()
            try:
                entry["bfd"] = _bfd(lab.ovs(node)) if lab.ovs(node).running() else {}
            except Exception:  # noqa: BLE001 - a node being killed right now
                entry["bfd"] = {}
        out["nodes"].append(entry)
    if manifests:
        state = ManifestDirSource(manifests).snapshot()
        out["cluster_cidrs"] = [str(c) for c in state.cluster_cidrs(4)]
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
    lines.append("NODE       AGENT  SWITCHES (flows)                 HELD EIPS        BFD")
    for n in st["nodes"]:
        sw = ", ".join(f"{b} {'up' if s.get('connected') else 'DOWN'} ({s.get('flows')})"
                       for b, s in sorted(n["switches"].items()))
        bfd = ", ".join(f"{k}={v}" for k, v in sorted(n.get("bfd", {}).items())) or "-"
        alive = {True: "up", False: "DOWN", None: "?"}[n.get("agent_alive")]
        lines.append(f"{n['node']:<10} {alive:<6} {sw:<32} {','.join(n['held_eips']) or '-':<16} {bfd}")
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
        if args.status:
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
