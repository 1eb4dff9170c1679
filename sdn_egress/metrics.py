"""Prometheus metrics of the agent and the controller.

Each process has its own registry (no global state shared between them or
with tests). The agent's per-policy egress counters are read from the
switch's flow statistics at scrape time: the STEER flows of a policy count
every packet a selected pod sent through it.
"""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily

LOG = logging.getLogger(__name__)


class AgentMetrics:
    def __init__(self, node: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self.node = node
        self.reconcile_seconds = Histogram(
            "sdn_egress_agent_reconcile_seconds", "Duration of one agent pass (state -> flows -> rules)",
            registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
        self.reconcile_errors = Counter("sdn_egress_agent_reconcile_errors_total",
                                        "Agent passes that failed (retried)", registry=r)
        self.flows = Gauge("sdn_egress_agent_flows", "Flows the agent holds on a bridge", ["bridge"], registry=r)
        self.flow_mods = Counter("sdn_egress_agent_flow_mods_total", "Flows added or removed",
                                 ["bridge", "op"], registry=r)
        self.flow_mod_errors = Counter("sdn_egress_agent_flow_mod_errors_total",
                                       "Bundles the switch refused", ["bridge"], registry=r)
        self.switch_connected = Gauge("sdn_egress_agent_switch_connected",
                                      "1 while the bridge is connected to the agent", ["bridge"], registry=r)
        self.failovers = Counter("sdn_egress_agent_gateway_takeovers_total",
                                 "EIPs this node started to hold (takeovers and first assignments)",
                                 ["eip"], registry=r)
        self.bfd_peers_down = Gauge("sdn_egress_agent_bfd_peers_down", "Gateway peers whose BFD session is down",
                                    registry=r)
        self.report_writes = Counter("sdn_egress_agent_report_writes_total",
                                     "Writes of this node's report Lease (Kubernetes mode), by result",
                                     ["result"], registry=r)
        self.report_last_success = Gauge("sdn_egress_agent_report_last_success_timestamp_seconds",
                                         "When the report Lease was last written (Kubernetes mode); the "
                                         "controller takes a node silent for 30 s as gone", registry=r)
        self._egress_source = None

    def egress_from(self, source) -> None:
        """``source()`` -> {policy: (packets, bytes)}; read at every scrape."""
        self._egress_source = source
        self.registry.register(_EgressCollector(self))

    def serve(self, port: int, addr: str | None = None) -> None:
        """On every address of both families by default ("::", which takes
        IPv4 too); on IPv4 only where the node has no IPv6 at all."""
        if addr is not None:
            serve(self.registry, port, addr)
        elif not serve(self.registry, port, "::", quiet=True):
            serve(self.registry, port, "0.0.0.0")


class _EgressCollector:
    def __init__(self, metrics: AgentMetrics):
        self.metrics = metrics

    def collect(self):
        packets = CounterMetricFamily("sdn_egress_policy_egress_packets",
                                      "Packets selected pods sent through a policy (from flow statistics)",
                                      labels=["policy"])
        octets = CounterMetricFamily("sdn_egress_policy_egress_bytes",
                                     "Bytes selected pods sent through a policy (from flow statistics)",
                                     labels=["policy"])
        try:
            per_policy = self.metrics._egress_source() if self.metrics._egress_source else {}
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail for a busy switch
            LOG.debug("egress counters unavailable: %s", exc)
            per_policy = {}
        for policy, (p, b) in sorted(per_policy.items()):
            packets.add_metric([policy], p)
            octets.add_metric([policy], b)
        yield packets
        yield octets


class ControllerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_seconds = Histogram("sdn_egress_controller_reconcile_seconds",
                                           "Duration of one controller pass", registry=r)
        self.policies = Gauge("sdn_egress_controller_policies", "Policies by readiness", ["ready"], registry=r)
        self.eips = Gauge("sdn_egress_controller_eips", "Allocated EIPs", registry=r)
        self.invalid_objects = Gauge("sdn_egress_controller_invalid_objects", "Objects refused", registry=r)
        self.gateway_moves = Counter("sdn_egress_controller_gateway_moves_total",
                                     "EIPs whose active gateway changed", registry=r)

    def observe(self, before, after) -> None:
        ready = sum(s.ready for s in after.policies.values())
        self.policies.labels("true").set(ready)
        self.policies.labels("false").set(len(after.policies) - ready)
        self.eips.set(len(after.eips))
        self.invalid_objects.set(len(after.errors))
        if before is not None:
            old = {str(a.ip): a.nodes[:1] for a in before.eips}
            self.gateway_moves.inc(sum(1 for a in after.eips
                                       if str(a.ip) in old and old[str(a.ip)] and a.nodes[:1] != old[str(a.ip)]))

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        serve(self.registry, port, addr)


def serve(registry, port: int, addr: str, quiet: bool = False) -> bool:
    """Start the metrics endpoint; a port already taken is logged, never fatal
    (metrics must not take the data path down with them)."""
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        if not quiet:
            LOG.error("metrics: cannot listen on %s:%d: %s; running without metrics", addr, port, exc)
        return False
    LOG.info("metrics on http://%s:%d/metrics", addr, port)
    return True
