"""The agent's host-side helpers that need no kernel: the reserved ports list."""
from __future__ import annotations

from sdn_egress.agent.routing import HostRouting


def test_reserving_the_snat_ports_keeps_what_was_reserved_and_happens_once(tmp_path):
    path = tmp_path / "ip_local_reserved_ports"
    path.write_text("8080,30000-30010\n")
    routing = HostRouting()
    assert routing.reserve_ports(61440, 65535, path=str(path))
    assert path.read_text() == "8080,30000-30010,61440-65535"
    assert not routing.reserve_ports(61440, 65535, path=str(path))  # already there
    path.write_text("")
    assert routing.reserve_ports(61440, 65535, path=str(path)) and path.read_text() == "61440-65535"


def test_a_partly_reserved_range_is_completed(tmp_path):
    path = tmp_path / "ip_local_reserved_ports"
    path.write_text("61440-62000,65535")
    assert HostRouting().reserve_ports(61440, 65535, path=str(path))
    assert path.read_text().endswith(",61440-65535")


def test_the_hosts_proc_sys_net_can_live_elsewhere(tmp_path):
    """In the DaemonSet the host's /proc/sys/net is mounted at another path
    (the container's own /proc/sys is read-only)."""
    (tmp_path / "ipv4").mkdir()
    (tmp_path / "ipv4" / "ip_local_reserved_ports").write_text("8080\n")
    assert HostRouting(proc_sys_net=str(tmp_path)).reserve_ports(61440, 65535)
    assert (tmp_path / "ipv4" / "ip_local_reserved_ports").read_text() == "8080,61440-65535"
