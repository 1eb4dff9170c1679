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
from ovs_setup.daemons import OvsError
from sdn_egress.reports.flowrecords import flow_key, parse_dump, parse_ofctl

BRIDGES = ("br-int", "br-ex")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn_egress.debug import env
    parser.add_argument("--node", required=True)
    parser.add_argument("--policy", metavar="NS/NAME", help="only flows owned by this policy (or its EIP)")
    parser.add_argument("--pod", metavar="NS/NAME", help="only flows of this pod")
    parser.add_argument("--table", metavar="NAME", help="only this pipeline table")
    parser.add_argument("--json", action="store_true")
    env.add_arguments(parser, "whose node to read")


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


def read(env, node: str, warn=None) -> dict:
    """The node's flows joined with its agent's record, from ``env``."""
    ovs = env.switch(node)
    try:
        desired = env.desired_flows(node)
    except FileNotFoundError as exc:
        if warn:
            warn(f"the agent of {node} has not recorded its flows yet ({exc.filename})")
        desired = {}
    dumps = {}
    for bridge in BRIDGES:
        try:
            dumps[bridge] = ovs.ofctl("--no-names", "dump-flows", bridge)
        except OvsError:
            if bridge == "br-int":
                raise
            dumps[bridge] = ""  # a node without br-ex
    return collect(node, dumps, desired)


def run(args: argparse.Namespace) -> int:
    from sdn_egress.debug import env as env_mod
    from sdn_egress.lab.lab import LabError
    try:
        env = env_mod.from_args(args)
        report = read(env, args.node, warn=lambda m: print(f"flows: {m}", file=sys.stderr))
        report = select(report, args.policy, args.pod, args.table)
    except (LabError, env_mod.EnvError, OvsError, OSError) as exc:
        print(f"flows: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(render(report))
    return 0
