"""The agent's metrics endpoint answers on both families: Prometheus on an
IPv6-only cluster scrapes the node's IPv6 address."""
import socket
import urllib.request

import pytest

from sdn_egress.metrics import AgentMetrics


def free_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::", 0))
        return s.getsockname()[1]


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 on this machine")
def test_the_agents_metrics_answer_on_ipv4_and_ipv6():
    metrics = AgentMetrics("alpha")
    metrics.reconcile_errors.inc()
    port = free_port()
    metrics.serve(port)
    for host in ("127.0.0.1", "[::1]"):
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
        assert "sdn_egress_agent_reconcile_errors_total 1.0" in body, host
