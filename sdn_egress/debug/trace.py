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
    from sdn_egress.debug import env
    parser.add_argument("--src", required=True, metavar="NS/POD")
    parser.add_argument("--dst", required=True, metavar="IP[:PORT]", help="IPv4[:PORT], IPv6 or [IPv6]:PORT")
    parser.add_argument("--proto", choices=("tcp", "udp", "icmp"), default="tcp")
    parser.add_argument("--node", help="the pod's node (default: from the pod object)")
    parser.add_argument("--gateway-hop", action="store_true",
                        help="only the gateway's hop, traced on this node (the EIP's holder): on a real "
                             "cluster each node's switch is reachable only on that node")
    parser.add_argument("--json", action="store_true")
    env.add_arguments(parser, "to trace in")


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
    if ":" in dst:  # IPv6: tcp6/udp6/icmp6, echo request 128
        spec = f"{proto}6,ipv6_src={src},ipv6_dst={dst},nw_ttl=64"
        echo = ",icmp_type=128,icmp_code=0"
    else:
        spec = f"{proto},nw_src={src},nw_dst={dst},nw_ttl=64"
        echo = ",icmp_type=8,icmp_code=0"
    if proto in ("tcp", "udp"):
        spec += f",{proto}_src=40000,{proto}_dst={port or 8080}"  # tp_* is refused by ofproto/trace
    else:
        spec += echo
    return spec


def _tunnel_ends(src: str, dst: str) -> str:
    """The outer addresses of the Geneve packet: ``tun_src``/``tun_dst`` are
    IPv4 only, an IPv6 underlay (an IPv6-only cluster) has its own fields."""
    if ":" in src:
        return f"tun_ipv6_src={src},tun_ipv6_dst={dst}"
    return f"tun_src={src},tun_dst={dst}"


def split_destination(dst: str) -> tuple[str, int | None]:
    """``IP``, ``IPv4:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address -> (address, port)."""
    if dst.startswith("["):
        host, _, rest = dst[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if dst.count(":") > 1:
        return dst, None
    host, _, port = dst.partition(":")
    return host, int(port) if port else None


def trace(env, src: str, dst: str, proto: str = "tcp", node: str | None = None,
          gateway_hop: bool = False) -> dict:
    """``env``: a :class:`sdn_egress.debug.env.Environment`.  A hop the
    environment cannot reach from here (another node's switch on a real
    cluster) is listed with where to run it (``--gateway-hop`` there)."""
    from sdn_egress.debug.env import EnvError
    from sdn_egress.debug.explain import explain

    host, dport = split_destination(dst)
    state = env.cluster_state()
    alloc = env.allocation()
    pod = state.pods.get(src)
    reports = env.reports()
    report = reports.get(pod.node if pod else "", {})
    why = explain(state, alloc, src, host, dead=frozenset(report.get("dead_peers", [])))
    out = {"policy": why.to_dict(), "hops": []}
    if pod is None:
        return out
    node = node or pod.node
    family = 6 if ":" in host else 4
    pod_ip = next((str(ip) for ip in pod.ips if ip.version == family), None)
    if pod_ip is None:
        out["hops"].append({"where": f"{node} kernel", "route": "",
                            "explain": f"the pod has no IPv{family} address: nothing to trace"})
        return out

    def owners(n: str) -> dict:
        try:
            return env.desired_flows(n).get("owners", {})
        except (FileNotFoundError, EnvError):
            return {}

    if gateway_hop:
        a = alloc.eip(why.eip) if why.eip else None
        if a is None:
            out["hops"].append({"where": "gateway", "route": "", "explain":
                                "not steered to a gateway: there is no gateway hop to trace"})
            return out
        gw = env.held().get(why.eip) or (a.nodes[0] if a.nodes else None)
        if gw is None:
            out["hops"].append({"where": "gateway", "route": "", "explain":
                                f"EIP {why.eip} has no gateway node"})
            return out
        _gateway(env, out, gw, node, a.tunnel_key, proto, pod_ip, host, dport, owners)
        return out

    # 1. The host: does the kernel steer it into egw0?
    try:
        ip = ["ip"] if family == 4 else ["ip", "-6"]
        routes = env.run(node, [*ip, "route", "show", f"{pod_ip}/{32 if family == 4 else 128}"]).stdout.split()
        veth = routes[routes.index("dev") + 1] if "dev" in routes else None  # the pod's host-side veth
        route = env.run(node, [*ip, "route", "get", host, "from", pod_ip, "iif", veth or "lo"]).stdout
    except EnvError as exc:
        command = f"sdn-egress trace --src {src} --dst {dst} --proto {proto}"
        out["hops"].append({"where": f"{node} kernel", "route": "",
                            "explain": "not traced from here: " + str(exc).replace("sdn-egress ...", command)})
        return out
    route = route.strip().splitlines()
    route = route[0] if route else ""
    steered = " dev egw0 " in f" {route} "
    out["hops"].append({"where": f"{node} kernel", "route": route,
                        "explain": ("steered into br-int through egw0 (policy routing table 7100)" if steered
                                    else "not steered: the node routes it itself (the CNI's masquerade "
                                         "gives it the node IP)")})
    if not steered:
        return out

    # 2. The pod's node: br-int from egw0.
    ovs = env.switch(node)
    egw_mac = ovs.vsctl("get", "Interface", "egw0", "mac_in_use").strip().strip('"')
    flow = f"in_port=egw0,dl_src={egw_mac},dl_dst={GW_MAC}," + _packet(proto, pod_ip, host, dport)
    first = parse_trace(ovs.appctl("ofproto/trace", "br-int", flow), owners(node))
    out["hops"].append({"where": f"{node} br-int", "flow": flow, **first})

    # 3. Following the tunnel to the gateway that holds the EIP.
    key = next((int(m.group(1), 16) for s in first["steps"] for a in s["actions"]
                if (m := re.match(r"set_field:(0x[0-9a-f]+)->tun_id", a))), None)
    if key is None or why.eip is None:
        return out
    if not first["datapath_actions"] or first["datapath_actions"] == "drop":
        return out  # dropped on the pod's node (no live gateway): nothing to follow
    gw = env.held().get(why.eip) or (why.gateways[0] if why.gateways else None)
    if gw is None or gw == node:
        return out
    _gateway(env, out, gw, node, key, proto, pod_ip, host, dport, owners, (src, dst))
    return out


def _gateway(env, out: dict, gw: str, node: str, key: int, proto: str, pod_ip: str, host: str,
             dport: int | None, owners, question: tuple[str, str] | None = None) -> None:
    """The gateway's hop: the packet as it arrives over Geneve from ``node``."""
    from sdn_egress.debug.env import EnvError
    try:
        gw_ovs = env.switch(gw)
        ports = gw_ovs.vsctl("list-ports", "br-int").split()
    except EnvError as exc:
        command = "sdn-egress ..."
        if question:  # the same trace, its gateway hop, there
            command = f"sdn-egress trace --src {question[0]} --dst {question[1]} --proto {proto} --gateway-hop"
        out["hops"].append({"where": f"{gw} (gateway)", "route": "",
                            "explain": "not traced from here: " + str(exc).replace("sdn-egress ...", command)})
        return
    except OvsError as exc:
        out["hops"].append({"where": f"{gw} (gateway)", "route": "",
                            "explain": f"cannot trace on {gw}: its OVS does not answer ({exc})"})
        return
    from ovs_setup.ovsdb import FLOW_PORT, tunnel_port_name
    in_port = tunnel_port_name(node) if tunnel_port_name(node) in ports else FLOW_PORT
    flow = (f"in_port={in_port},tun_id={key:#x},{_tunnel_ends(env.address(node), env.address(gw))},"
            f"dl_dst={GW_MAC}," + _packet(proto, pod_ip, host, dport))
    second = parse_trace(gw_ovs.appctl("ofproto/trace", "br-int", flow), owners(gw))
    out["hops"].append({"where": f"{gw} br-int (gateway, over Geneve tun_id={key:#x})", "flow": flow, **second})


def render(t: dict) -> str:
    p = t["policy"]
    lines = [f"{p['pod']} -> {p['dst']}: " + (f"steered by policy {p['policy']}, egress IP {p['eip']}, "
                                                f"gateways {', '.join(p['gateways']) or 'none'}"
                                                if p["steered"] else "not steered: leaves with its node's IP")]
    lines += [f"  - {r}" for r in p["reasons"]]
    for hop in t["hops"]:
        lines.append(f"\n[{hop['where']}]")
        if "route" in hop:
            if hop["route"]:
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
    from sdn_egress.debug import env as env_mod
    from sdn_egress.lab import LabError
    try:
        env = env_mod.from_args(args)
        result = trace(env, args.src, args.dst, args.proto, args.node, args.gateway_hop)
    except (LabError, env_mod.EnvError, OvsError, OSError, ValueError) as exc:
        print(f"trace: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(render(result))
    return 0
