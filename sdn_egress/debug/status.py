"""``sdn-egress status``: policies with their EIP, active and standby gateways
and who really holds the EIP; each node's agent, switch connections, flow
counts and BFD sessions; the cluster CIDRs never steered; invalid objects."""
from __future__ import annotations

import argparse
import json
import sys
import time



def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn_egress.debug import env
    parser.add_argument("--json", action="store_true")
    env.add_arguments(parser, "to report on")


def collect(env) -> dict:
    """The status from an environment (:mod:`sdn_egress.debug.env`): the
    allocation, the agents' reports (their age, BFD per tunnel, switches,
    held EIPs), the state's cluster CIDRs (in Kubernetes mode with the
    service CIDRs and ``CLUSTER_CIDRS`` of ConfigMap ``sdn-egress-config``)."""
    return summarize(env.allocation(), env.reports(), env.held(), env.cluster_state(), env)


def summarize(alloc, reports: dict[str, dict], held: dict[str, str], state, env=None,
              now: float | None = None) -> dict:
    """``reports``: node -> the agent's report (``time``: when, epoch seconds)."""
    out = {"policies": [], "nodes": [], "cluster_cidrs": [], "errors": []}
    if alloc is not None:
        by_ip = {str(a.ip): a for a in alloc.eips}

        def eip_entry(ip) -> dict:
            a = by_ip.get(str(ip)) if ip else None
            return {"eip": str(ip) if ip else None, "active": a.nodes[0] if a and a.nodes else None,
                    "standbys": list(a.nodes[1:]) if a else [], "held_by": held.get(str(ip)) if ip else None}

        for key, p in sorted(alloc.policies.items()):
            # The row's EIP is the policy's (IPv4 first: an IPv6-only policy shows its IPv6 one);
            # a dual-stack policy's IPv6 EIP, gateways and holder beside the IPv4 ones.
            entry = {"policy": key, **eip_entry(p.eip_v4 or p.eip_v6), "gateway": p.gateway}
            if p.eip_v4 and p.eip_v6:
                entry["ipv6"] = eip_entry(p.eip_v6)
            out["policies"].append({
                **entry, "ready": p.ready,
                "conditions": [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message}
                               for c in p.conditions]})
        out["errors"] = [e.to_dict() for e in alloc.errors]
    now = time.time() if now is None else now
    for node, r in sorted(reports.items()):
        entry = {"node": node, "report_age_s": round(now - r.get("time", 0), 1),
                 "passes": r.get("passes"), "error": r.get("error"),
                 "switches": r.get("switches", {}), "held_eips": r.get("held_eips", []),
                 "tunnels": r.get("tunnels", {}), "tunnel_mtu": r.get("tunnel_mtu"),
                 "mss": r.get("mss"), "oversized": r.get("oversized", {})}
        if r.get("mss_v6"):
            entry["mss_v6"] = r["mss_v6"]
        if env is not None:
            entry["agent_alive"] = env.agent_alive(node, r)
            entry["bfd"] = env.bfd(node, r)
        out["nodes"].append(entry)
    if state is not None:
        out["cluster_cidrs"] = [str(c) for c in state.cluster_cidrs(4) + state.cluster_cidrs(6)]
    return out


def _age(seconds: float) -> str:
    """A report's age: ``4s``, ``12m``, ``3h``."""
    if seconds < 120:
        return f"{max(seconds, 0):.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.0f}h"


def render(st: dict) -> str:
    lines = ["POLICY               EIP              ACTIVE    STANDBYS        HELD BY   READY"]
    for p in st["policies"]:
        rows = [p] if p["eip"] or "ipv6" not in p else []
        rows += [p["ipv6"]] if "ipv6" in p else []
        for i, r in enumerate(rows):  # one line per family, the IPv6 one under the IPv4 one
            lines.append(f"{p['policy'] if i == 0 else '':<20} {r['eip'] or '-':<16} {r['active'] or '-':<9} "
                         f"{','.join(r['standbys']) or '-':<15} {r['held_by'] or '-':<9} "
                         f"{'yes' if p['ready'] else 'no'}")
        for c in p["conditions"]:
            if c["status"] != "True":
                lines.append(f"    {c['type']}={c['status']} {c['reason']}: {c['message']}")
    lines.append("")
    lines.append("NODE       AGENT         SWITCHES (flows)                 TUNNEL MTU/MSS  HELD EIPS        BFD")
    for n in st["nodes"]:
        sw = ", ".join(f"{b} {'up' if s.get('connected') else 'DOWN'} ({s.get('flows')})"
                       for b, s in sorted(n["switches"].items()))
        bfd = ", ".join(f"{k}={v}" for k, v in sorted(n.get("bfd", {}).items())) or "-"
        alive = {True: "up", False: "DOWN", None: "?"}[n.get("agent_alive")]
        alive += f" ({_age(n['report_age_s'])})"
        mtu = f"{n['tunnel_mtu']}/{n['mss']}" if n.get("tunnel_mtu") else "-"
        if n.get("mss_v6"):
            mtu += f" (v6 {n['mss_v6']})"
        lines.append(f"{n['node']:<10} {alive:<13} {sw:<32} {mtu:<15} {','.join(n['held_eips']) or '-':<16} {bfd}")
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
    from kubernetes.client.rest import ApiException

    from sdn_egress.debug import env as env_mod
    from sdn_egress.lab import LabError
    try:
        st = collect(env_mod.from_args(args))
    except ApiException as exc:
        print(f"status: the API server: HTTP {exc.status} {exc.reason}", file=sys.stderr)
        return 1
    except (LabError, env_mod.EnvError, OSError, ValueError) as exc:
        print(f"status: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(st, sys.stdout, indent=2)
        print()
    else:
        print(render(st))
    return 0
