"""``sdn-egress move --eip IP --to NODE``: a planned move of an egress IP to
another of its gateway nodes (rebalancing is never automatic).

The controller makes NODE the EIP's active; the old holder stops SNAT and ARP
for it, NODE starts and announces it with gratuitous ARPs; the move is done
when NODE's agent reports holding the EIP. Connections through the old holder
break, as in any gateway move (conntrack is per gateway).

Standalone, the request goes into the controller's status directory
(``moves.json``); with ``--kubeconfig``, into the allocation ConfigMap (key
``moves.json``: updating it is an administrator's right, not the agents')."""
from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from sdn_egress.lab.lab import DEFAULT_STATE_DIR
    parser.add_argument("--eip", required=True, help="the egress IP to move")
    parser.add_argument("--to", required=True, metavar="NODE", help="one of the EIP's gateway nodes")
    parser.add_argument("--status", help="the controller's status directory (default: the lab's)")
    parser.add_argument("--lab-state", default=DEFAULT_STATE_DIR)
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the move (0: do not)")
    kube = parser.add_argument_group("Kubernetes (the request goes into the allocation ConfigMap)")
    kube.add_argument("--kubeconfig", metavar="PATH", help="reach the API server with this kubeconfig")
    kube.add_argument("--context", help="the kubeconfig context (default: its current one)")
    kube.add_argument("--namespace", default="sdn-egress", help="the controller's namespace (default sdn-egress)")


def _check(alloc, args) -> tuple[int, str | None]:
    """(exit code, None) to stop now, or (0, the current active) to go on."""
    a = alloc.eip(args.eip) if alloc else None
    if a is None:
        print(f"move: no EIP {args.eip} is allocated (see sdn-egress status)", file=sys.stderr)
        return 1, None
    if a.node_ip:
        print(f"move: {args.eip} is a node's own address (useNodeIP): it cannot move to another node",
              file=sys.stderr)
        return 1, None
    if args.to not in a.nodes:
        print(f"move: {args.to} is not a gateway node of EIP {args.eip} (its nodes: "
              f"{', '.join(a.nodes) or 'none'})", file=sys.stderr)
        return 1, None
    if a.nodes[0] == args.to:
        print(f"EIP {args.eip} is already active on {args.to}")
        return 0, None
    return 0, a.nodes[0]


def _run_kube(args: argparse.Namespace) -> int:
    from kubernetes.client.rest import ApiException

    from sdn_egress.kube.client import api_client
    from sdn_egress.allocation.store_kube import KubeAllocationStore

    try:
        store = KubeAllocationStore(api_client(args.kubeconfig, args.context), args.namespace)
        code, active = _check(store.load(), args)
        if active is None:
            return code
        store.request_move(args.eip, args.to)
        print(f"EIP {args.eip}: planned move {active} -> {args.to} requested ({store.where})")
        deadline = time.monotonic() + args.wait
        while args.wait and time.monotonic() < deadline:
            a = store.load().eip(args.eip)
            if a is not None and a.nodes[:1] == (args.to,) and args.eip not in store.read_moves():
                print(f"EIP {args.eip}: now held by {args.to}")
                return 0
            time.sleep(0.2)
    except (ApiException, LookupError, ValueError) as exc:
        print(f"move: {getattr(exc, 'reason', None) or exc}", file=sys.stderr)
        return 1
    if args.wait:
        print(f"move: {args.to} does not hold EIP {args.eip} after {args.wait:.0f}s "
              "(is its agent up? see its Lease in sdn-egress-agents)", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    from sdn_egress.allocation import FileAllocationStore
    from sdn_egress.reports import AgentReports

    if args.kubeconfig:
        return _run_kube(args)
    status = args.status
    if not status:
        from sdn_egress.lab import Lab, LabError
        lab = Lab(args.lab_state)
        try:
            kube = lab.kube
        except LabError as exc:
            print(f"move: {exc}", file=sys.stderr)
            return 1
        if kube:
            print("move: this lab keeps its state in an API server (lab up --kube): ask it there, from the "
                  f"router namespace: sdn-egress lab exec router -- sdn-egress move --kubeconfig {lab.kubeconfig} "
                  f"--eip {args.eip} --to {args.to}", file=sys.stderr)
            return 2
        status = lab.status_dir
    try:
        alloc = FileAllocationStore(status).load()
    except ValueError as exc:
        print(f"move: {exc}", file=sys.stderr)
        return 1
    code, active = _check(alloc, args)
    if active is None:
        return code
    store = FileAllocationStore(status)
    store.request_move(args.eip, args.to)
    print(f"EIP {args.eip}: planned move {active} -> {args.to} requested")
    deadline = time.monotonic() + args.wait
    while args.wait and time.monotonic() < deadline:
        # Done when the target is the only holder: the old one has let go too.
        if AgentReports(status).claimants(args.eip) == [args.to] and args.eip not in store.read_moves():
            print(f"EIP {args.eip}: now held by {args.to}")
            return 0
        time.sleep(0.1)
    if args.wait:
        print(f"move: {args.to} does not hold EIP {args.eip} after {args.wait:.0f}s "
              "(is its agent up? see sdn-egress status)", file=sys.stderr)
        return 1
    return 0
