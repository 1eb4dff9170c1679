"""`sdn-egress demo` from an installed wheel (as in the image): its examples
are package data, it brings a lab up, shows the source addresses, the flows
and a trace, and takes the lab down."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_runs_from_an_installed_wheel(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), ROOT], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").iterdir()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(site))  # the install, not the checkout
    prefix = "sed" + uuid.uuid4().hex[:3]
    out = subprocess.run([sys.executable, str(site / "bin" / "sdn-egress"), "demo", "--state-dir",
                          str(tmp_path / "demo"), "--prefix", prefix], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"== apply {site}/sdn_egress/examples/egressgateway.yaml" in out.stdout
    assert "demo: every source address as expected" in out.stdout
    assert "steered by policy shop/cart, egress IP" in out.stdout  # the trace
    assert "STEER policy shop/cart, pod shop/cart-" in out.stdout  # the flows
    assert prefix not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
