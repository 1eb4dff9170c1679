"""The steering rules against a real kernel (a network namespace of its own,
``unshare -n``, gone with the process; no OVS): what the agent computes is
what the kernel takes, also when one policy's rules give way to another's."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

# Syncs the steers of each step in turn, as the agent's passes do, and prints
# the IPv6 and IPv4 rules of ours after each (or the error of the step).
# Only the rules are under test: egw0's route and iptables are left out.
SYNC = r"""
import json, subprocess, sys
import netaddr
from flows.view import Steer
from sdn_egress.agent import routing
ip, net = netaddr.IPAddress, netaddr.IPNetwork
r = routing.HostRouting()
for name in ("_ensure_link", "_ensure_link_v6", "_ensure_nat_bypass", "_ensure_mss_clamp"):
    setattr(r, name, lambda *a, **k: None)
for step in json.loads(sys.argv[1]):
    steers = tuple(Steer("shop/cart-1", ip(pod), net(dest), "shop/cart", ip(eip), rank=rank, exclude=ex)
                   for pod, dest, eip, rank, ex in step)
    try:
        r.sync(steers, 1450)
        error = None
    except Exception as exc:
        error = str(exc)
    rules = [line for family in ("-4", "-6")
             for line in subprocess.run(["ip", family, "rule"], capture_output=True, text=True).stdout.splitlines()
             if "lookup 7100" in line or line.startswith("70")]
    print(json.dumps({"error": error, "rules": rules}), flush=True)
"""

POD4, POD6 = "203.0.113.2", "2001:db8:113::2"
EIP4, EIP6 = "192.0.2.200", "2001:db8::200"


def sync_steps(*steps) -> list[dict]:
    if os.geteuid() != 0:
        pytest.skip("a network namespace of its own needs root")
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", SYNC, json.dumps(steps)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_a_policy_widened_to_everywhere_replaces_the_narrower_rules_in_one_pass():
    """IPv6 dual stack (issue 12): the policy's IPv6 destSubnet replaced by
    none at all (everywhere, the exclusions rules of their own).  The kernel
    took a rule without a destination for a duplicate of the narrower one
    still there (adds go first) and refused it: the agent failed every pass
    from then on, the revived gateway of the dual-stack failover test among
    them."""
    narrow = [(POD6, "2001:db8:100::/64", EIP6, 0, False), (POD4, "198.51.100.0/24", EIP4, 0, False)]
    wide = [(POD6, "::/0", EIP6, 0, False), (POD6, "2001:db8:113::/48", EIP6, 0, True),
            (POD4, "0.0.0.0/0", EIP4, 0, False)]
    first, second, back = sync_steps(narrow, wide, narrow)
    assert first["error"] is None and second["error"] is None and back["error"] is None, (first, second, back)
    assert sorted(second["rules"]) == sorted([
        "7099:\tfrom 2001:db8:113::2 to 2001:db8:113::/48 lookup main",
        "7100:\tfrom 2001:db8:113::2 to ::/1 lookup 7100",
        "7100:\tfrom 2001:db8:113::2 to 8000::/1 lookup 7100",
        "7100:\tfrom 203.0.113.2 to 0.0.0.0/1 lookup 7100",
        "7100:\tfrom 203.0.113.2 to 128.0.0.0/1 lookup 7100"]), second
    assert sorted(back["rules"]) == sorted(first["rules"]) == sorted([
        "7100:\tfrom 2001:db8:113::2 to 2001:db8:100::/64 lookup 7100",
        "7100:\tfrom 203.0.113.2 to 198.51.100.0/24 lookup 7100"]), (first, back)
