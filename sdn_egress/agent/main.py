"""``sdn-egress agent``: run the per-node agent."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

from sdn_egress.kube.client import add_source_arguments

STOP_TIMEOUT = 5.0  # seconds for the pass under way to end at a stop
LOG = logging.getLogger(__name__)

API_BACKOFF = 10.0  # seconds: the longest wait between two tries to reach the API server


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node", required=True, help="this node's name (as in its Node object)")
    add_source_arguments(parser, "standalone mode: read cluster state from this manifest directory")
    parser.add_argument("--status", metavar="DIR",
                        help="standalone mode: the controller's status directory (allocation.json; this "
                             "agent's report goes to nodes/NODE.json). Kubernetes mode: optional, where "
                             "this agent records its status and desired flows for the debug commands")
    parser.add_argument("--ovs-db", default="unix:/var/run/openvswitch/db.sock",
                        help="OVSDB target of this node's Open vSwitch")
    parser.add_argument("--ovs-rundir", help="OVS run directory (for logs and traces only)")
    parser.add_argument("--listen", metavar="punix:PATH|tcp:HOST:PORT",
                        help="where the bridges' controller target points: default punix:DIR/sdn-egress.sock, "
                             "DIR the --ovs-db socket's directory (the OVS run directory; the bridges' "
                             "target is unix:DIR/sdn-egress.sock, as `sdn-egress ovs setup` sets it)")
    parser.add_argument("--proc-sys-net", default="/proc/sys/net", metavar="DIR",
                        help="the host's /proc/sys/net, writable (rp_filter, reserved ports); in a container "
                             "its own is read-only: mount the host's elsewhere and name it here")
    parser.add_argument("--resync-interval", type=float, default=10.0,
                        help="seconds between full flow dumps that repair drift")
    parser.add_argument("--bfd-interval", type=int, default=100, metavar="MS",
                        help="BFD min_tx/min_rx on the tunnels to gateways (default 100 ms)")
    parser.add_argument("--bfd-mult", type=int, default=3,
                        help="BFD detection multiplier (default 3: down after 3 missed intervals)")
    parser.add_argument("--failback-hold", type=float, default=10.0, metavar="SECONDS",
                        help="after its cut-off link heals, a gateway node forwards nothing (BFD cpath_down) "
                             "while a standby may hold its EIPs and the controller has not re-ordered them, "
                             "at most this long (default 10; docs/ha.md)")
    parser.add_argument("--no-bfd", action="store_true",
                        help="no BFD: no data-plane failover, gateways follow the controller only")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus metrics on this port (all addresses); off by default")
    parser.add_argument("--tunnel-mtu", type=int, metavar="BYTES",
                        help="the largest IP packet the Geneve tunnels carry whole (default: the underlay "
                             "MTU minus the Geneve overhead, 50 bytes over IPv4, 70 over IPv6); steered "
                             "TCP is clamped to it, larger packets get ICMP frag-needed or fragments. Set "
                             "it to the smallest underlay MTU minus the overhead where links differ")
    parser.add_argument("--new-pod-hold", type=float, default=5.0, metavar="SECONDS",
                        help="drop the external traffic of a local pod address this agent has not "
                             "classified yet, for at most SECONDS from when its route appeared, so a new "
                             "pod's first packets never leave with the node address (default 5; 0: no "
                             "hold, a new pod's first packets may leave the CNI's way). "
                             "See docs/pod-lifecycle.md")
    parser.add_argument("--cluster-cidr", action="append", default=[],
                        help="extra CIDR never steered (service CIDR and the like); repeatable")
    kube = parser.add_argument_group("Kubernetes mode")
    kube.add_argument("--namespace", help="sdn-egress's namespace: the allocation ConfigMap and the agents' "
                                          "Leases (default: $POD_NAMESPACE, the pod's, else sdn-egress)")
    kube.add_argument("--lease-namespace", default=None, metavar="NAMESPACE",
                      help="where this node's Lease (its report to the controller) goes "
                           "(default: sdn-egress-agents)")
    kube.add_argument("--heartbeat", type=float, default=5.0, metavar="SECONDS",
                      help="renew this node's Lease at least this often (default 5 s)")


def run(args: argparse.Namespace) -> int:
    import netaddr

    from os_ken import cfg
    from os_ken.base.app_manager import AppManager

    from sdn_egress.agent.core import AgentConfig, AgentCore
    from sdn_egress.agent.nodedb import OvsdbNode
    from sdn_egress.agent.routing import HostRouting
    from sdn_egress.allocation import FileAllocationStore
    from sdn_egress.reports import FileStatusWriter
    from sdn_egress.source import ManifestDirSource

    if args.manifests and not args.status:
        LOG.error("agent: --status DIR is required with --manifests (standalone mode)")
        return 2
    try:
        extra = tuple(netaddr.IPNetwork(c) for c in args.cluster_cidr)
    except (netaddr.AddrFormatError, ValueError) as exc:
        LOG.error("agent: --cluster-cidr: %s", exc)
        return 2
    from flows.check import MAX_TUNNEL_MTU, MIN_TUNNEL_MTU
    if args.tunnel_mtu is not None and not MIN_TUNNEL_MTU <= args.tunnel_mtu <= MAX_TUNNEL_MTU:
        LOG.error("agent: --tunnel-mtu: %d is not an MTU in %d..%d", args.tunnel_mtu, MIN_TUNNEL_MTU,
                  MAX_TUNNEL_MTU)
        return 2
    from ovs_setup.node import agent_socket
    from sdn_egress.agent import listen as listen_mod
    try:
        listen = listen_mod.parse(args.listen or f"punix:{agent_socket(args.ovs_db)}")
        listen_mod.prepare(listen)
    except ValueError as exc:
        LOG.error("agent: %s", exc)
        return 2
    if not 0 <= args.new_pod_hold <= 300:
        LOG.error("agent: --new-pod-hold: %s is not a number of seconds in 0..300", args.new_pod_hold)
        return 2
    reporter = None
    started = []
    if args.manifests:
        source = ManifestDirSource(args.manifests, extra_cluster_cidrs=extra)
        store = FileAllocationStore(args.status)
    else:
        from sdn_egress.kube.client import api_client_from, pod_namespace
        from sdn_egress.reports.leases import NAMESPACE as LEASE_NAMESPACE, LeaseReporter
        from sdn_egress.source.kube import KubeSource
        from sdn_egress.allocation.reader_kube import KubeAllocationReader
        from sdn_egress.model import ObjectRef

        api = api_client_from(args, "agent")
        if api is None:
            return 2
        namespace = args.namespace or pod_namespace()
        # Retries at most API_BACKOFF apart: a node that lost the API (its
        # restart, a cut link) picks the state up again soon after it is back.
        source = KubeSource(api, extra_cluster_cidrs=extra, backoff_max=API_BACKOFF, node=args.node)
        store = KubeAllocationReader(api, namespace, backoff_max=API_BACKOFF, node=args.node, source=source)
        node_ref = ObjectRef("Node", "", args.node)
        from sdn_egress.kube.events import EventRecorder
        reporter = LeaseReporter(api, args.lease_namespace or LEASE_NAMESPACE, args.node,
                                 interval=args.heartbeat,
                                 events=EventRecorder(api, component="sdn-egress-agent", instance=args.node),
                                 node_uid=lambda: ((source.raw(node_ref) or {}).get("metadata") or {}).get("uid"))
        started = [source.start(), store.start(), reporter.start()]
        LOG.info("agent %s: state from the API server; allocation in %s; reports in %s", args.node,
                 store.where, reporter.where)
    cfg.CONF(args=listen.os_ken_args(), project="os_ken")
    metrics = None
    if args.metrics_port:
        from sdn_egress.metrics import AgentMetrics
        metrics = AgentMetrics(args.node)
    core = AgentCore(
        AgentConfig(node=args.node, ovs_db=args.ovs_db, status_dir=args.status,
                    resync_interval=args.resync_interval, tunnel_mtu=args.tunnel_mtu,
                    new_pod_hold=args.new_pod_hold, failback_hold=args.failback_hold,
                    bfd=None if args.no_bfd else {
                        "enable": "true", "min_tx": str(args.bfd_interval),
                        "min_rx": str(args.bfd_interval), "decay_min_rx": "0",
                        "mult": str(args.bfd_mult)}),
        source, store, metrics=metrics,
        writers=[w for w in (reporter, FileStatusWriter(args.status, args.node) if args.status else None)
                 if w is not None],
        routing=HostRouting(proc_sys_net=args.proc_sys_net), db=OvsdbNode(args.ovs_db),
    )
    if metrics:
        if reporter is not None:
            reporter.metrics = metrics
        metrics.egress_from(core.egress_by_policy)
        metrics.serve(args.metrics_port)
    manager = AppManager.get_instance()
    manager.load_apps(["sdn_egress.agent.app"])
    listen_mod.install(manager, listen)
    contexts = manager.create_contexts()
    services = manager.instantiate_apps(agent_core=core, **contexts)

    stopping = threading.Event()

    def stop(signum, frame):
        LOG.info("agent %s: signal %d, stopping (flows stay on the switch)", args.node, signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("agent %s: listening for OpenFlow on %s", args.node, listen)
    try:
        while not stopping.wait(1.0) and any(t.is_alive() for t in services):
            pass
    finally:
        core.stop()
        if not core.wait_stopped(STOP_TIMEOUT):
            LOG.warning("agent %s: the pass under way did not end within %.0f s", args.node, STOP_TIMEOUT)
        for part in started:
            part.stop()
    LOG.info("agent %s: stopped", args.node)
    logging.shutdown()
    # os-ken's native hub cannot stop its threads (hub.kill does nothing; the
    # OpenFlow server and the datapaths' loops are not daemons): a return
    # would leave the process hanging until SIGKILL, the pod's whole grace
    # period.  Our own work is done and written (files atomically, flows by
    # bundle), so the process ends here.
    os._exit(0)
