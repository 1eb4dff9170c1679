"""What every part of the lab shares: its error, and the commands it runs
(``sh``, ``nsx`` inside a namespace, the venv's executables)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

from sdn_egress.lab.objects import ObjectsError


class LabError(RuntimeError):
    pass


@contextlib.contextmanager
def lab_errors():
    """The object store's refusals, as the lab's errors."""
    try:
        yield
    except ObjectsError as exc:
        raise LabError(str(exc)) from None


def venv_bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def sh(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002 - subprocess.run's name
    proc = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def nsx(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", ns, *cmd, check=check)
