"""``sdn-egress lab ...``: the netns lab from the command line."""
from __future__ import annotations

import argparse
import json
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn_egress.lab.lab import DEFAULT_STATE_DIR
    parser.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                        help="where the lab keeps its state (env SDN_EGRESS_LAB_DIR)")
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("up", help="build the lab: namespaces, OVS per node, agents, controller")
    p.add_argument("--topology", help="topology YAML (default: the bundled three-node cluster)")
    p.add_argument("--manifests", help="apply this file or directory of manifests once up")
    p.add_argument("--prefix", default="se", help="network namespace name prefix")
    p.add_argument("--no-agents", action="store_true", help="no agents and no controller")
    p.add_argument("--force", action="store_true", help="replace a lab that is up")
    p.add_argument("--kube", action="store_true",
                   help="serve the cluster state from an API server in the router namespace "
                        "(192.0.2.1:6443); controller and agents run in Kubernetes mode")
    sub.add_parser("down", help="remove every namespace, process and file of the lab")
    p = sub.add_parser("status", help="addresses, policies, errors")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("exec", help="run a command on a node, pod (ns/name), external host or router")
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    for name, help_ in (("apply", "add or replace the objects in a YAML file or directory"),
                        ("delete", "remove the objects a YAML file or directory names")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("path")
    for name, help_ in (("kill", "power-cut a node: its OVS daemons and agent die at once (SIGKILL)"),
                        ("revive", "start a killed node's OVS and agent again"),
                        ("cut", "take a node's underlay link down (processes live on)"),
                        ("heal", "bring a cut node's underlay link back")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("node")
    p = sub.add_parser("pod", help="pods come and go: add, delete, move (reschedule) a pod")
    podsub = p.add_subparsers(dest="pod_command", metavar="ACTION")
    podsub.required = True
    q = podsub.add_parser("add", help="create a pod: its network, then its Pod object with its IP")
    q.add_argument("pod", metavar="NS/NAME")
    q.add_argument("--node", required=True)
    q.add_argument("--labels", default="", metavar="K=V,...")
    q.add_argument("--ip", help="the pod's address (default: the lowest free one of the node's pod CIDR)")
    q = podsub.add_parser("delete", help="delete a pod: its network, then its Pod object")
    q.add_argument("pod", metavar="NS/NAME")
    q = podsub.add_parser("move", help="reschedule: delete, then create on NODE with the same name and "
                                       "labels and a new IP")
    q.add_argument("pod", metavar="NS/NAME")
    q.add_argument("--node", required=True)
    p = sub.add_parser("label", help="set (KEY=VALUE) or remove (KEY-) a pod label")
    p.add_argument("pod")
    p.add_argument("label")


def _print_status(st: dict) -> None:
    print(f"underlay {st['underlay']}  external LAN {st['external_lan']}  pods {st['cluster_pod_cidr']}  "
          f"EIP range {st['eip_range']}  controller {'up' if st['controller']['alive'] else 'DOWN'}")
    print("\nNODE       IP            POD CIDR           AGENT  PASSES  LABELS")
    for n in st["nodes"]:
        a = n["agent"]
        print(f"{n['name']:<10} {n['ip']:<13} {n['pod_cidr']:<18} {'up' if a['alive'] else 'DOWN':<6} "
              f"{a['passes']:<7} {','.join(f'{k}={v}' for k, v in n['labels'].items())}"
              + (f"  error: {a['error']}" if a.get("error") else ""))
    print("\nPOD                  IP              NODE       LABELS")
    for p in st["pods"]:
        print(f"{p['namespace'] + '/' + p['name']:<20} {p['ip']:<15} {p['node']:<10} "
              f"{','.join(f'{k}={v}' for k, v in p['labels'].items())}")
    print("\nEXTERNAL   IP              MTU")
    for x in st["externals"]:
        print(f"{x['name']:<10} {x['ip']:<15} {x.get('mtu', 1500)}")
    policies = (st.get("allocation") or {}).get("policies") or {}
    if policies:
        print("\nPOLICY               EIP              GATEWAY NODE  READY")
        for key, p in sorted(policies.items()):
            print(f"{key:<20} {p.get('eip_v4') or '-':<16} {p.get('node') or '-':<13} "
                  f"{'yes' if p.get('ready') else 'no'}")
    if st.get("errors"):
        print("\nERRORS")
        for e in st["errors"]:
            obj = f"{e.get('kind')} {e.get('namespace') + '/' if e.get('namespace') else ''}{e.get('name')}"
            print(f"  {obj}: {e.get('field')}: {e.get('message')}")


def run(args: argparse.Namespace) -> int:
    from sdn_egress.lab.lab import Lab, LabError
    from sdn_egress.lab.topology import TopologyError

    lab = Lab(state_dir=args.state_dir, prefix=getattr(args, "prefix", "se"))
    try:
        cmd = args.lab_command
        if cmd == "up":
            lab.up(args.topology, manifests_dir=args.manifests, agents=not args.no_agents, force=args.force,
                       kube=args.kube)
            _print_status(lab.status())
        elif cmd == "down":
            lab.down()
            print("lab down: namespaces, processes and state removed")
        elif cmd == "status":
            st = lab.status()
            if args.json:
                json.dump(st, sys.stdout, indent=2, sort_keys=True)
                print()
            else:
                _print_status(st)
        elif cmd == "exec":
            argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not argv:
                raise LabError("exec: no command given (lab exec HOST -- CMD...)")
            os.execvp("ip", ["ip", "netns", "exec", lab.host_ns(args.host), *argv])
        elif cmd == "apply":
            for f in lab.apply(args.path):
                print(f"applied {f}")
        elif cmd == "delete":
            print(f"deleted {lab.delete(args.path)} object(s)")
        elif cmd in ("kill", "revive", "cut", "heal"):
            if args.node not in {n.name for n in lab.topology().nodes}:
                raise LabError(f"{cmd}: no node named {args.node!r}")
            getattr(lab, cmd)(args.node)
            print(f"{cmd}: {args.node}")
        elif cmd == "pod":
            from sdn_egress.lab.pods import parse_labels
            if args.pod_command == "add":
                pod = lab.add_pod(args.pod, args.node, parse_labels(args.labels), ip=args.ip)
                print(f"pod {pod.key}: {pod.ip} on {pod.node}")
            elif args.pod_command == "delete":
                lab.delete_pod(args.pod)
                print(f"pod {args.pod}: deleted")
            else:
                pod = lab.move_pod(args.pod, args.node)
                print(f"pod {pod.key}: {pod.ip} on {pod.node}")
        elif cmd == "label":
            if args.label.endswith("-") and "=" not in args.label:
                lab.label(args.pod, args.label[:-1], None)
            elif "=" in args.label:
                key, value = args.label.split("=", 1)
                lab.label(args.pod, key, value)
            else:
                raise LabError(f"label: {args.label!r}: use KEY=VALUE to set or KEY- to remove")
        return 0
    except (LabError, TopologyError) as exc:
        print(f"sdn-egress lab {args.lab_command}: {exc}", file=sys.stderr)
        return 1
