"""Start and stop one Open vSwitch instance (ovsdb-server + ovs-vswitchd),
optionally inside a network namespace, with everything under one directory.

Several instances run side by side on one machine (one per lab node): each has
its own database, control sockets (``OVS_RUNDIR``) and log files, so nothing
falls back to the system-wide ``/var/run/openvswitch``.
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import time

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


class OvsError(RuntimeError):
    pass


class OvsInstance:
    def __init__(self, rundir: str, netns: str | None = None):
        self.rundir = os.path.abspath(rundir)
        self.netns = netns

    # -- paths and environment -------------------------------------------------
    @property
    def db_sock(self) -> str:
        return os.path.join(self.rundir, "db.sock")

    @property
    def db_target(self) -> str:
        return f"unix:{self.db_sock}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(OVS_RUNDIR=self.rundir, OVS_DBDIR=self.rundir, OVS_LOGDIR=self.rundir,
                   OVS_SYSCONFDIR=self.rundir)
        return env

    def _cmd(self, *args: str) -> list[str]:
        return (["ip", "netns", "exec", self.netns] if self.netns else []) + list(args)

    def _run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(self._cmd(*args), env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise OvsError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    # -- tools against this instance ----------------------------------------------
    def vsctl(self, *args: str) -> str:
        return self._run("ovs-vsctl", f"--db={self.db_target}", "--timeout=10", *args)

    def ofctl(self, *args: str) -> str:
        """ovs-ofctl against this instance; OpenFlow 1.4 unless ``-O`` is given
        (the bridges speak 1.3 and 1.4, not ovs-ofctl's default 1.0)."""
        if "-O" not in args and not any(a.startswith("--protocols") for a in args):
            args = ("-O", "OpenFlow14", *args)
        return self._run("ovs-ofctl", *args)

    def appctl(self, *args: str, target: str = "ovs-vswitchd") -> str:
        """ovs-appctl to ``target``: its control socket ``RUNDIR/TARGET.ctl``
        where this class started it, else (an OVS started by its
        distribution: ``RUNDIR/TARGET.PID.ctl``) by name, which ovs-appctl
        resolves through ``RUNDIR/TARGET.pid``."""
        ctl = os.path.join(self.rundir, f"{target}.ctl")
        return self._run("ovs-appctl", "-t", ctl if os.path.exists(ctl) else target, *args)

    # -- life cycle ---------------------------------------------------------------------
    def pidfile(self, daemon: str) -> str:
        return os.path.join(self.rundir, f"{daemon}.pid")

    def pid(self, daemon: str) -> int | None:
        return _read_pid(self.pidfile(daemon))

    def running(self, daemon: str = "ovs-vswitchd") -> bool:
        return process_alive(self.pid(daemon))

    def start(self, vswitchd: bool = True) -> "OvsInstance":
        os.makedirs(self.rundir, exist_ok=True)
        db = os.path.join(self.rundir, "conf.db")
        if not os.path.exists(db):
            self._run("ovsdb-tool", "create", db, SCHEMA)
        if not self.running("ovsdb-server"):
            self._run("ovsdb-server", db, f"--remote=punix:{self.db_sock}",
                      "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                      f"--pidfile={self.pidfile('ovsdb-server')}",
                      f"--unixctl={os.path.join(self.rundir, 'ovsdb-server.ctl')}",
                      f"--log-file={os.path.join(self.rundir, 'ovsdb-server.log')}", "--detach")
        self._wait(lambda: os.path.exists(self.db_sock), "ovsdb-server socket")
        self.vsctl("--no-wait", "init")
        if vswitchd and not self.running("ovs-vswitchd"):
            self._run("ovs-vswitchd", self.db_target,
                      f"--pidfile={self.pidfile('ovs-vswitchd')}",
                      f"--unixctl={os.path.join(self.rundir, 'ovs-vswitchd.ctl')}",
                      f"--log-file={os.path.join(self.rundir, 'ovs-vswitchd.log')}", "--detach")
            self._wait(lambda: self._answers("ovs-vswitchd"), "ovs-vswitchd")
        return self

    def _answers(self, target: str) -> bool:
        try:
            self.appctl("version", target=target)
            return True
        except OvsError:
            return False

    @staticmethod
    def _wait(pred, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise OvsError(f"{what} did not come up within {timeout:.0f}s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop both daemons (SIGTERM, then SIGKILL); fine when already gone."""
        for daemon in ("ovs-vswitchd", "ovsdb-server"):
            terminate(self.pid(daemon))

    def __enter__(self) -> "OvsInstance":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_all_under(path: str) -> int:
    """Kill every OVS daemon whose pidfile lives below ``path`` (crash cleanup).
    Returns how many were alive."""
    killed = 0
    for pidfile in glob.glob(os.path.join(path, "**", "ovs*.pid"), recursive=True):
        pid = _read_pid(pidfile)
        if process_alive(pid):
            killed += 1
        terminate(pid)
    return killed


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def process_alive(pid: int | None) -> bool:
    """True for a running process (a zombie counts as gone, and so does one
    that exits while its stat is read: the read fails with ESRCH)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def terminate(pid: int | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; fine when already gone."""
    if not process_alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if process_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while process_alive(pid) and time.monotonic() < deadline + timeout:
            time.sleep(0.02)
