"""``sdn-egress demo``: the whole product on one machine, in a minute.

Brings the bundled lab up (two workers, one gateway), applies the example
EgressGateway and EgressPolicy (``sdn_egress/examples/``, shipped in the
package; ``k8s/examples`` in the repository links to it), sends TCP, UDP and ICMP
from every pod to an external host, and prints the source address the external
host saw next to the one expected: the policy's egress IP for selected pods,
the node's IP for the others.  The bundled lab is dual stack: then the same
over IPv6 with ``egressgateway-dualstack.yaml`` and ``egresspolicy-ipv6.yaml``
(the same pods, the IPv6 EIP toward the external LAN's IPv6 prefix).  Then
shows the flows that did it and takes the lab down.  Exits non-zero if any
address differs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")  # package data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-dir", default="/run/sdn-egress/demo", help="lab state directory")
    parser.add_argument("--prefix", default="sed", help="network namespace prefix of the demo lab")
    parser.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the policy to take effect")


def _expected(lab, status: dict, pod: dict, policy_ns: str, selector: dict, v6: bool = False) -> tuple[str, str]:
    """(expected source, why) for one pod, from the example policy's own terms."""
    labels = pod.get("labels", {})
    selected = pod["namespace"] == policy_ns and all(labels.get(k) == v for k, v in selector.items())
    node = next(n for n in status["nodes"] if n["name"] == pod["node"])
    node_ip = next(ip for ip in node.get("ips", [node["ip"]]) if (":" in ip) == v6)
    if not selected:
        return node_ip, "not selected: node IP"
    return "EIP", "selected: egress IP"


def run(args: argparse.Namespace) -> int:
    import yaml

    from sdn_egress.lab import Lab
    from sdn_egress.lab.topology import default_topology_path

    with open(os.path.join(EXAMPLES, "egresspolicy.yaml")) as f:
        policy = yaml.safe_load(f)
    policy_key = f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"
    selector = policy["spec"]["appliedTo"]["podSelector"].get("matchLabels", {})

    lab = Lab(state_dir=args.state_dir, prefix=args.prefix)
    print(f"== lab up ({default_topology_path()})", flush=True)
    lab.down()  # a previous demo that was interrupted
    failures = 0
    try:
        lab.up(default_topology_path())
        print(f"== apply {EXAMPLES}/egressgateway.yaml, {EXAMPLES}/egresspolicy.yaml", flush=True)
        lab.apply(os.path.join(EXAMPLES, "egressgateway.yaml"))
        lab.apply(os.path.join(EXAMPLES, "egresspolicy.yaml"))
        eip, gw_node = _wait_for_policy(lab, policy_key, args.timeout)
        print(f"   policy {policy_key}: egress IP {eip} on gateway node {gw_node}", flush=True)
        status = lab.status()
        ext = status["externals"][0]
        # The first packets may race the agents' first pass: wait until a
        # selected pod sees the EIP (bounded), then measure every pod once.
        _wait_for_source(lab, status, selector, policy, ext["ip"], eip, args.timeout)
        failures += _family_table(lab, status, policy, selector, ext, ext["ip"], eip)
        if "IPv6" in status.get("ip_families", []):
            failures += _ipv6_part(lab, status, ext, args.timeout)
        worker = next(p["node"] for p in status["pods"]
                      if p["node"] != gw_node and _expected(lab, status, p, policy["metadata"]["namespace"],
                                                            selector)[0] == "EIP")
        for node, role in ((worker, "worker"), (gw_node, "gateway")):
            print(f"\n== the flows of policy {policy_key} on {role} node {node} "
                  f"(sdn-egress flows --node {node} --policy {policy_key})")
            print(_policy_flows(lab, node, policy_key))
        pod = next(p for p in status["pods"] if p["node"] == worker
                   and _expected(lab, status, p, policy["metadata"]["namespace"], selector)[0] == "EIP")
        src = f"{pod['namespace']}/{pod['name']}"
        print(f"\n== sdn-egress trace --src {src} --dst {ext['ip']}:8080 --proto udp")
        from sdn_egress.debug import trace
        from sdn_egress.debug.env import LabEnv
        print(trace.render(trace.trace(LabEnv(lab), src, f"{ext['ip']}:8080", "udp")))
    except Exception as exc:  # noqa: BLE001 - report and clean up
        print(f"demo failed: {exc}", file=sys.stderr)
        failures += 1
    finally:
        if not args.keep:
            print("== lab down", flush=True)
            lab.down()
    print("demo: " + ("every source address as expected" if not failures else f"{failures} differ"))
    return 1 if failures else 0


def _family_table(lab, status, policy, selector, ext, ext_ip: str, eip: str) -> int:
    """Every pod's TCP, UDP and ICMP (IPv6: ICMPv6) to ``ext_ip``: what the
    external host saw beside what was expected.  Returns the differences."""
    v6, rows, failures = ":" in ext_ip, [], 0
    for pod in status["pods"]:
        want, why = _expected(lab, status, pod, policy["metadata"]["namespace"], selector, v6)
        want = eip if want == "EIP" else want
        for proto in ("tcp", "udp", "icmp"):
            seen = _source(lab, pod, {**ext, "ip": ext_ip}, proto, "IPv6" if v6 else "IPv4")
            ok = seen == want
            failures += not ok
            rows.append((f"{pod['namespace']}/{pod['name']}", pod["node"], proto + ("v6" if v6 and proto == "icmp"
                                                                                     else ""),
                         seen or "-", want, why, "ok" if ok else "DIFFERS"))
    print(f"\n== what {ext['name']} ({ext_ip}) saw")
    _table(("pod", "node", "proto", "source seen", "expected", "why", ""), rows)
    return failures


def _ipv6_part(lab, status, ext, timeout: float) -> int:
    """The same over IPv6: the dual-stack gateway and the IPv6 policy."""
    import yaml

    with open(os.path.join(EXAMPLES, "egresspolicy-ipv6.yaml")) as f:
        policy = yaml.safe_load(f)
    key = f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"
    selector = policy["spec"]["appliedTo"]["podSelector"].get("matchLabels", {})
    print(f"\n== apply {EXAMPLES}/egressgateway-dualstack.yaml, {EXAMPLES}/egresspolicy-ipv6.yaml", flush=True)
    lab.apply(os.path.join(EXAMPLES, "egressgateway-dualstack.yaml"))
    lab.apply(os.path.join(EXAMPLES, "egresspolicy-ipv6.yaml"))
    eip6, node = _wait_for_policy(lab, key, timeout, "eip_v6")
    print(f"   policy {key}: IPv6 egress IP {eip6} on gateway node {node}", flush=True)
    ext_ip = next(ip for ip in ext["ips"] if ":" in ip)
    _wait_for_source(lab, status, selector, policy, ext_ip, eip6, timeout)
    return _family_table(lab, status, policy, selector, ext, ext_ip, eip6)


def _policy_flows(lab, node: str, policy_key: str) -> str:
    from sdn_egress.debug import flows as debug_flows
    from sdn_egress.debug.env import LabEnv

    report = debug_flows.read(LabEnv(lab), node)  # what `sdn-egress flows` shows
    return debug_flows.render(debug_flows.select(report, policy_key, None, None))


def _wait_for_policy(lab, key: str, timeout: float, field: str = "eip_v4") -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        pol = (lab.status().get("allocation") or {}).get("policies", {}).get(key) or {}
        eip, node = pol.get(field), pol.get("node")
        if eip and node:
            return eip, node
        if time.monotonic() > deadline:
            raise RuntimeError(f"policy {key} got no egress IP within {timeout:.0f}s: {pol or 'no status'}")
        time.sleep(0.2)


def _wait_for_source(lab, status, selector, policy, ext_ip, eip, timeout) -> None:
    pod = next(p for p in status["pods"]
               if p["namespace"] == policy["metadata"]["namespace"]
               and all(p.get("labels", {}).get(k) == v for k, v in selector.items()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if lab.udp_source(f"{pod['namespace']}/{pod['name']}", ext_ip) == eip:
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(0.3)


def _source(lab, pod: dict, ext: dict, proto: str, family: str | None = None) -> str | None:
    name = f"{pod['namespace']}/{pod['name']}"
    try:
        if proto == "tcp":
            return lab.tcp_source(name, ext["ip"])
        if proto == "udp":
            return lab.udp_source(name, ext["ip"])
        return lab.icmp_source(name, ext["name"], family=family)
    except Exception:  # noqa: BLE001 - shown as "-"
        return None


def _table(header, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in (header, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
