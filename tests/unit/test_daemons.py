"""Whether a lab daemon runs, as ``process_alive`` reads /proc."""
from __future__ import annotations

import builtins
import os
import subprocess

from ovs_setup.daemons import process_alive


def test_a_process_runs_until_it_is_reaped_and_one_exiting_while_read_is_gone(monkeypatch):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert process_alive(proc.pid)
        proc.kill()
        proc.wait()
        assert not process_alive(proc.pid)
    finally:
        proc.kill()
    assert process_alive(os.getpid())
    # A process that exits between the open and the read of its stat: the read fails with ESRCH (CI, stop 20).
    real_open = builtins.open

    def exiting(path, *args, **kwargs):
        f = real_open(path, *args, **kwargs)
        if str(path).startswith("/proc/"):
            def read(*a):
                raise ProcessLookupError(3, "No such process")
            f.read = read
        return f
    monkeypatch.setattr(builtins, "open", exiting)
    assert not process_alive(os.getpid())
