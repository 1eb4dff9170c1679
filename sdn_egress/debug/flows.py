"""``sdn-egress flows --node NODE``: a node's flows grouped by pipeline table,
each annotated from its cookie with the feature and the object that owns it
(policy and pod, EIP, node), with counters; plus drift: flows on the switch
that the agent does not want (stale) and wanted flows the switch lacks
(missing)."""
from __future__ import annotations

import argparse
import json
import sys

from flows import cookie as C
from sdn_egress.debug.records import flow_key, load_desired, parse_dump, parse_ofctl

BRIDGES = ("br-int", "br-ex")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn_egress.lab.lab import DEFAULT_STATE_DIR
    parser.add_argument("--node", required=True)
    parser.add_argument("--policy", metavar="NS/NAME", help="only flows owned by this policy (or its EIP)")
    parser.add_argument("--pod", metavar="NS/NAME", help="only flows of this pod")
    parser.add_argument("--table", metavar="NAME", help="only this pipeline table")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--lab-state", default=DEFAULT_STATE_DIR, help="the lab whose node to read")
    parser.add_argument("--ovs-rundir", help="on a real node: the OVS run directory (instead of a lab)")
    parser.add_argument("--status", help="on a real node: the agent's status directory")


def _feature(cookie: int) -> str:
    ck = C.decode(cookie)
    return ck.feature.name if isinstance(ck.feature, C.Feature) else f"feature{ck.feature}"


def collect(node: str, dump_text: dict[str, str], desired: dict) -> dict:
    """Join the live dumps with the agent's record: per bridge, the flows
    grouped by table with owner and counters, and the drift."""
    out = {"node": node, "bridges": {}}
    owners = desired.get("owners", {})
    for bridge in BRIDGES:
        want = desired.get("bridges", {}).get(bridge)
        if want is None and not dump_text.get(bridge):
            continue
        names = {int(k): v for k, v in (want or {}).get("tables", {}).items()}
        wanted = {}
        for e in (want or {}).get("flows", []):
            p = parse_ofctl(e["ofctl"])
            wanted[flow_key(p["table"], p["priority"], p["match"])] = e
        live = parse_dump(dump_text.get(bridge, ""))
        seen, tables, stale = set(), {}, []
        for f in live:
            key = flow_key(f["table"], f["priority"], f["match"])
            entry = wanted.get(key)
            cookie = f"{f['cookie']:#x}"
            row = {"table": names.get(f["table"], f"table{f['table']}"), "priority": f["priority"],
                   "match": ",".join(f["match"]) or "*", "actions": f["actions"], "cookie": cookie,
                   "feature": _feature(f["cookie"]), "owner": owners.get(cookie, ""),
                   "n_packets": f["n_packets"], "n_bytes": f["n_bytes"], "state": "ok"}
            if entry is None:
                row["state"] = "stale"
                row["owner"] = row["owner"] or "no object owns it"
                stale.append(row)
            elif entry["cookie"] != cookie:
                row["state"] = "differs"
            seen.add(key)
            tables.setdefault(row["table"], []).append(row)
        missing = [{"table": e["table"], "priority": e["priority"], "describe": e["describe"],
                    "cookie": e["cookie"], "owner": e["owner"], "feature": e["feature"]}
                   for key, e in wanted.items() if key not in seen]
        order = {name: i for i, name in sorted(names.items())}
        out["bridges"][bridge] = {
            "tables": {t: sorted(rows, key=lambda r: -r["priority"])
                       for t, rows in sorted(tables.items(), key=lambda kv: order.get(kv[0], 999))},
            "stale": stale, "missing": missing}
    return out


def select(report: dict, policy: str | None, pod: str | None, table: str | None) -> dict:
    def keep(row) -> bool:
        owner = row.get("owner", "")
        if table and row["table"] != table:
            return False
        if policy and f"policy {policy}" not in owner and not (
                owner.startswith("EIP ") and f"{policy}" in owner):
            return False
        if pod and f"pod {pod}" not in owner:
            return False
        return True

    for b in report["bridges"].values():
        b["tables"] = {t: [r for r in rows if keep(r)] for t, rows in b["tables"].items()}
        b["tables"] = {t: rows for t, rows in b["tables"].items() if rows}
        b["stale"] = [r for r in b["stale"] if keep(r)]
        b["missing"] = [r for r in b["missing"] if keep(r)]
    return report


def render(report: dict) -> str:
    lines = []
    for bridge, b in report["bridges"].items():
        lines.append(f"== {report['node']} {bridge}")
        for table, rows in b["tables"].items():
            lines.append(f"  [{table}]")
            for r in rows:
                owner = f"{r['feature']}" + (f" {r['owner']}" if r["owner"] else "")
                mark = {"ok": "", "stale": "  << STALE", "differs": "  << COOKIE DIFFERS"}[r["state"]]
                lines.append(f"    prio={r['priority']:<5} {r['match']:<60} -> {r['actions']}")
                lines.append(f"               ({owner}; packets={r['n_packets']} bytes={r['n_bytes']}){mark}")
        if b["stale"]:
            lines.append(f"  stale (on the switch, owned by nothing the agent wants): {len(b['stale'])}")
            for r in b["stale"]:
                lines.append(f"    {r['table']} prio={r['priority']} {r['match']} cookie={r['cookie']}")
        if b["missing"]:
            lines.append(f"  missing (wanted, not on the switch): {len(b['missing'])}")
            for r in b["missing"]:
                lines.append(f"    {r['describe']}")
        if not b["stale"] and not b["missing"]:
            lines.append("  no drift: the switch holds exactly what the agent wants")
    return "\n".join(lines)


def node_sources(args) -> tuple[object, str]:
    """(an OvsInstance for the node's switch, the agent's status directory)."""
    from ovs_setup.daemons import OvsInstance
    from sdn_egress.lab import Lab
    if args.ovs_rundir:
        if not args.status:
            raise SystemExit("flows: --ovs-rundir needs --status (the agent's status directory)")
        return OvsInstance(args.ovs_rundir), args.status
    lab = Lab(args.lab_state)
    lab.load()
    if args.node not in {n.name for n in lab.topology().nodes}:
        raise SystemExit(f"flows: no node named {args.node!r} in the lab at {args.lab_state}")
    return lab.ovs(args.node), lab.status_dir


def run(args: argparse.Namespace) -> int:
    from sdn_egress.lab.lab import LabError
    try:
        ovs, status_dir = node_sources(args)
        try:
            desired = load_desired(status_dir, args.node)
        except FileNotFoundError:
            print(f"flows: the agent of {args.node} has not recorded its flows yet "
                  f"({status_dir}/nodes/{args.node}.flows.json)", file=sys.stderr)
            desired = {}
        dumps = {}
        for bridge in BRIDGES:
            try:
                dumps[bridge] = ovs.ofctl("--no-names", "dump-flows", bridge)
            except Exception as exc:  # noqa: BLE001 - a node without br-ex
                if bridge == "br-int":
                    raise
                dumps[bridge] = ""
                del exc
        report = select(collect(args.node, dumps, desired), args.policy, args.pod, args.table)
    except (LabError, OSError) as exc:
        print(f"flows: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(render(report))
    return 0
