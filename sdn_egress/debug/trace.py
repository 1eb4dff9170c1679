"""``sdn-egress trace --src NS/POD --dst IP[:PORT]``: why did this pod's packet
leave with that address?

Three answers, one per hop: the policies (which one matched, or why none did,
from the same selection code the agent runs), the host's routing on the pod's
node (steered into egw0 or not), and ``ofproto/trace`` on the pod's node and,
following the tunnel, on the gateway, each step named by the flow's cookie.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from flows import cookie as C
from flows.view import GW_MAC
from ovs_setup.daemons import OvsError

STEP = re.compile(r"^\s*(\d+)\. (.*?), priority (\d+), cookie (0x[0-9a-f]+)\s*$")
BRIDGE = re.compile(r'^bridge\("([^"]+)"\)')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn_egress.lab.lab import DEFAULT_STATE_DIR
    parser.add_argument("--src", required=True, metavar="NS/POD")
    parser.add_argument("--dst", required=True, metavar="IP[:PORT]")
    parser.add_argument("--proto", choices=("tcp", "udp", "icmp"), default="tcp")
    parser.add_argument("--node", help="the pod's node (default: from the pod object)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--lab-state", default=DEFAULT_STATE_DIR, help="the lab to trace in")


def parse_trace(text: str, owners: dict[str, str]) -> dict:
    """``ofproto/trace`` output -> steps (bridge, table, match, priority,
    cookie, feature, owner, actions) and the datapath actions."""
    steps, bridge, current = [], None, None
    datapath = ""
    for line in text.splitlines():
        m = BRIDGE.match(line.strip())
        if m:
            bridge = m.group(1)
            continue
        m = STEP.match(line)
        if m:
            cookie = int(m.group(4), 16)
            ck = C.decode(cookie)
            current = {"bridge": bridge, "table": int(m.group(1)), "match": m.group(2),
                       "priority": int(m.group(3)), "cookie": f"{cookie:#x}",
                       "feature": ck.feature.name if isinstance(ck.feature, C.Feature) else str(ck.feature),
                       "owner": owners.get(f"{cookie:#x}", ""), "actions": []}
            steps.append(current)
            continue
        if line.startswith("Datapath actions:"):
            datapath = line.split(":", 1)[1].strip()
            current = None
        elif current is not None and line.startswith("    ") and line.strip() and not line.strip().startswith("-"):
            current["actions"].append(line.strip())
        elif not line.strip():
            current = None
    return {"steps": steps, "datapath_actions": datapath}


def _packet(proto: str, src: str, dst: str, port: int | None) -> str:
    spec = f"{proto},nw_src={src},nw_dst={dst},nw_ttl=64"
    if proto in ("tcp", "udp"):
        spec += f",{proto}_src=40000,{proto}_dst={port or 8080}"  # tp_* is refused by ofproto/trace
    else:
        spec += ",icmp_type=8,icmp_code=0"
    return spec


def trace(lab, src: str, dst: str, proto: str = "tcp", node: str | None = None) -> dict:
    from sdn_egress.allocation import Allocation, AllocationStore
    from sdn_egress.debug.explain import explain
    from sdn_egress.debug.records import load_desired
    from sdn_egress.reports import AgentReports

    host, _, port = dst.partition(":")
    state = lab.cluster_state()  # the manifest directory, or the lab's API server
    alloc = AllocationStore(lab.status_dir).load() or Allocation()
    pod = state.pods.get(src)
    report = AgentReports(lab.status_dir).read().get(pod.node if pod else "", {})
    why = explain(state, alloc, src, host, dead=frozenset(report.get("dead_peers", [])))
    out = {"policy": why.to_dict(), "hops": []}
    if pod is None:
        return out
    node = node or pod.node
    pod_ip = str(next(ip for ip in pod.ips if ip.version == 4))

    def owners(n: str) -> dict:
        try:
            return load_desired(lab.status_dir, n).get("owners", {})
        except FileNotFoundError:
            return {}

    # 1. The host: does the kernel steer it into egw0?
    routes = lab.exec(node, ["ip", "route", "show", f"{pod_ip}/32"]).stdout.split()
    veth = routes[routes.index("dev") + 1] if "dev" in routes else None  # the pod's host-side veth
    route = lab.exec(node, ["ip", "route", "get", host, "from", pod_ip, "iif", veth or "lo"],
                     check=False).stdout.strip().splitlines()
    route = route[0] if route else ""
    steered = " dev egw0 " in f" {route} "
    out["hops"].append({"where": f"{node} kernel", "route": route,
                        "explain": ("steered into br-int through egw0 (policy routing table 7100)" if steered
                                    else "not steered: the node routes it itself (the CNI's masquerade "
                                         "gives it the node IP)")})
    if not steered:
        return out

    # 2. The pod's node: br-int from egw0.
    ovs = lab.ovs(node)
    egw_mac = ovs.vsctl("get", "Interface", "egw0", "mac_in_use").strip().strip('"')
    flow = f"in_port=egw0,dl_src={egw_mac},dl_dst={GW_MAC}," + _packet(proto, pod_ip, host, int(port) if port else None)
    first = parse_trace(ovs.appctl("ofproto/trace", "br-int", flow), owners(node))
    out["hops"].append({"where": f"{node} br-int", "flow": flow, **first})

    # 3. Following the tunnel to the gateway that holds the EIP.
    key = next((int(m.group(1), 16) for s in first["steps"] for a in s["actions"]
                if (m := re.match(r"set_field:(0x[0-9a-f]+)->tun_id", a))), None)
    if key is None or why.eip is None:
        return out
    if not first["datapath_actions"] or first["datapath_actions"] == "drop":
        return out  # dropped on the pod's node (no live gateway): nothing to follow
    holders = AgentReports(lab.status_dir).held()
    gw = holders.get(why.eip) or (why.gateways[0] if why.gateways else None)
    if gw is None or gw == node:
        return out
    gw_ovs = lab.ovs(gw)
    try:
        ports = gw_ovs.vsctl("list-ports", "br-int").split()
    except OvsError as exc:
        out["hops"].append({"where": f"{gw} (gateway)", "route": "",
                            "explain": f"cannot trace on {gw}: its OVS does not answer ({exc})"})
        return out
    from ovs_setup.ovsdb import FLOW_PORT, tunnel_port_name
    in_port = tunnel_port_name(node) if tunnel_port_name(node) in ports else FLOW_PORT
    flow = (f"in_port={in_port},tun_id={key:#x},tun_src={lab.address(node)},tun_dst={lab.address(gw)},"
            f"dl_dst={GW_MAC}," + _packet(proto, pod_ip, host, int(port) if port else None))
    second = parse_trace(gw_ovs.appctl("ofproto/trace", "br-int", flow), owners(gw))
    out["hops"].append({"where": f"{gw} br-int (gateway, over Geneve tun_id={key:#x})", "flow": flow, **second})
    return out


def render(t: dict) -> str:
    p = t["policy"]
    lines = [f"{p['pod']} -> {p['dst']}: " + (f"steered by policy {p['policy']}, egress IP {p['eip']}, "
                                                f"gateways {', '.join(p['gateways']) or 'none'}"
                                                if p["steered"] else "not steered: leaves with its node's IP")]
    lines += [f"  - {r}" for r in p["reasons"]]
    for hop in t["hops"]:
        lines.append(f"\n[{hop['where']}]")
        if "route" in hop:
            lines.append(f"  {hop['route']}")
            lines.append(f"  => {hop['explain']}")
            continue
        for s in hop["steps"]:
            who = s["feature"] + (f" {s['owner']}" if s["owner"] else "")
            lines.append(f"  {s['bridge']} table {s['table']} prio {s['priority']} [{who}]: {s['match']}")
            for a in s["actions"]:
                lines.append(f"      {a}")
        lines.append(f"  datapath actions: {hop['datapath_actions'] or '(none: dropped)'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from sdn_egress.lab import Lab, LabError
    try:
        lab = Lab(args.lab_state)
        lab.load()
        result = trace(lab, args.src, args.dst, args.proto, args.node)
    except (LabError, OSError, ValueError) as exc:
        print(f"trace: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(render(result))
    return 0
