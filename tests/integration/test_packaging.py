"""What the image gets (k8s/image/Dockerfile installs the package with ``pip
install .``, not from a checkout): a wheel that holds every module and data
file the commands need, and the commands run from it."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_wheel_holds_every_package_and_runs_outside_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), ROOT], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").iterdir()
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {os.path.relpath(os.path.join(d, f), ROOT) for top in ("flows", "ovs_setup", "sdn_egress")
               for d, _, fs in os.walk(os.path.join(ROOT, top)) for f in fs if f.endswith((".py", ".yaml"))}
    assert sources - names == set()
    # Installed elsewhere, imported from there: no module reaches back into the checkout.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c",
                          "import sdn_egress.cli, sdn_egress.agent.main, sdn_egress.controller, "
                          "sdn_egress.reports.leases, sdn_egress.lab.kubeapi, flows, ovs_setup.cli; "
                          "import sdn_egress; print(sdn_egress.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target))
    for cmd in (["agent", "--help"], ["controller", "--help"], ["validate", "--help"]):
        run = subprocess.run([sys.executable, "-m", "sdn_egress.cli", *cmd], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (cmd, run.stderr)
    assert "--in-cluster" in subprocess.run([sys.executable, "-m", "sdn_egress.cli", "agent", "--help"],
                                            cwd=tmp_path, env=env, capture_output=True, text=True).stdout
    # The console script the wheel installs, run from there.
    script = target / "bin" / "sdn-egress"
    for cmd in (["--help"], ["demo", "--help"], ["flows", "--help"], ["trace", "--help"], ["status", "--help"]):
        run = subprocess.run([sys.executable, str(script), *cmd], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, (cmd, run.stderr)
    # demo's examples and the lab's topology are package data of the install, not files of the checkout.
    out = subprocess.run([sys.executable, "-c",
                          "from sdn_egress.commands import demo; from sdn_egress.lab.topology import default_topology_path;"
                          "print(demo.EXAMPLES); print(default_topology_path())"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    examples, topology = out.stdout.split()
    assert examples.startswith(str(target)) and topology.startswith(str(target)), out.stdout
    assert {"egressgateway.yaml", "egresspolicy.yaml"} <= set(os.listdir(examples))
    assert os.path.isfile(topology)


def test_the_image_copies_what_setup_py_packages():
    with open(os.path.join(ROOT, "k8s", "image", "Dockerfile")) as f:
        copied = {line.split()[1] for line in f if line.startswith("COPY ")}
    assert {"flows", "ovs_setup", "sdn_egress", "setup.py"} <= copied
    assert all(os.path.exists(os.path.join(ROOT, c)) for c in copied)


def test_the_image_installs_the_tools_the_debug_commands_run():
    """flows, trace and status in the agent's pod call these; each comes
    from a Debian package the Dockerfile installs (the package that holds
    it here, on Debian 12 as the image's base)."""
    import re
    with open(os.path.join(ROOT, "k8s", "image", "Dockerfile")) as f:
        text = f.read()
    installed = set(re.search(r"apt-get install -y --no-install-recommends ([^\\&]+)", text).group(1).split())
    for tool in ("ovs-ofctl", "ovs-appctl", "ovs-vsctl", "ip", "iptables"):
        path = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        # merged /usr and alternatives: dpkg knows the file under one of these names
        names = [os.path.realpath(path), path] + [f"{d}/{os.path.basename(path)}" for d in ("/bin", "/sbin")]
        owners = [subprocess.run(["dpkg", "-S", n], capture_output=True, text=True) for n in names]
        package = next(o.stdout.split(":")[0].strip() for o in owners if o.returncode == 0)
        assert package in installed, (tool, package, installed)
