"""What the agents report about their data plane, and how the controller reads it.

Two roles, each with its standalone implementation here and its Kubernetes
one in :mod:`sdn_egress.reports.leases`:

- :class:`StatusWriter`, the agent's side: told its status after every pass.
  :class:`FileStatusWriter` writes ``STATUS/nodes/NODE.json`` (the lab's
  equivalent of a heartbeat Lease); ``LeaseReporter`` renews the node's Lease.
- :class:`ReportsReader`, the controller's side: which node *holds* which
  EIP, so an election follows a failover the switches already made, and
  which agents stopped reporting.  :class:`AgentReports` reads the files;
  ``LeaseReports`` the Leases.
"""
from __future__ import annotations

import json
import os
import time
from typing import Protocol

from sdn_egress.allocation.store_file import MOVES  # a planned move asked for wakes the controller too
from sdn_egress.fileio import write_json_atomic

FRESH = 30.0  # seconds: an older report (a dead or stuck agent) claims nothing


class StatusWriter(Protocol):
    def report(self, status: dict) -> None:
        """The agent's status after a pass (never blocks the pass for long)."""


class ReportsReader(Protocol):
    fresh: float  # seconds: an older report claims nothing

    def held(self) -> dict[str, str]:
        """EIP -> the node whose fresh report says it holds it."""

    def gone(self) -> set[str]:
        """Nodes whose agent reported before but not for ``fresh`` seconds."""

    def changed(self) -> bool:
        """True when a report changed since the last call."""


class FileStatusWriter:
    """``STATUS/nodes/NODE.json``, replaced whole after every pass."""

    def __init__(self, status_dir: str, node: str):
        self.path = os.path.join(status_dir, "nodes", f"{node}.json")

    @property
    def where(self) -> str:
        return self.path

    def report(self, status: dict) -> None:
        write_json_atomic(self.path, status)


class AgentReports:
    def __init__(self, status_dir: str, fresh: float = FRESH, clock=time.time):
        self.dir = os.path.join(status_dir, "nodes")
        self.fresh = fresh
        self.clock = clock
        self._stamp = None

    def read(self) -> dict[str, dict]:
        out = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            if not name.endswith(".json") or name.startswith(".") or name.count(".") != 1:
                continue  # NODE.json only (NODE.flows.json is the agent's flow record)
            try:
                with open(os.path.join(self.dir, name)) as f:
                    report = json.load(f)
            except (OSError, ValueError):
                continue  # being replaced, or damaged: skip this round
            if isinstance(report, dict) and isinstance(report.get("node"), str):
                out[report["node"]] = report
        return out

    def _fresh(self, reports: dict[str, dict] | None = None) -> dict[str, dict]:
        """node -> its report, for the reports (default: read now) younger than ``fresh`` seconds."""
        now = self.clock()
        return {node: r for node, r in (self.read() if reports is None else reports).items()
                if isinstance(r.get("time"), (int, float)) and now - r["time"] <= self.fresh}

    def held(self) -> dict[str, str]:
        """EIP -> node, from fresh reports; when two nodes claim one EIP (a
        split brain while a link is cut) the most recent report wins."""
        best: dict[str, tuple[float, str]] = {}
        for node, r in self._fresh().items():
            for eip in r.get("held_eips") or []:
                if eip not in best or r["time"] > best[eip][0]:
                    best[eip] = (r["time"], node)
        return {eip: node for eip, (_, node) in best.items()}

    def claimants(self, eip: str) -> list[str]:
        """The nodes whose fresh report says they hold ``eip`` (more than one:
        a handover under way, or a split brain)."""
        return sorted(node for node, r in self._fresh().items() if eip in (r.get("held_eips") or []))

    def gone(self) -> set[str]:
        """Nodes whose agent reported before but not for ``fresh`` seconds: a
        missed heartbeat. (No report at all means not started yet, not gone.)"""
        reports = self.read()
        return set(reports) - set(self._fresh(reports))

    def changed(self) -> bool:
        """True when a report file changed since the last call."""
        try:
            stamp = tuple(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(self.dir)
                                 if e.name.endswith(".json") and e.name.count(".") == 1))
        except FileNotFoundError:
            stamp = ()
        try:  # a planned move asked for wakes the controller too
            stamp += (("moves", os.stat(os.path.join(os.path.dirname(self.dir), MOVES)).st_mtime_ns),)
        except FileNotFoundError:
            pass
        if stamp != self._stamp:
            self._stamp = stamp
            return True
        return False
