"""The connected bridges and the flows each holds: diff the desired set
against what the switch holds, send the change in one bundle, and before any
cluster state add only the tables' miss flows."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import flows
from flows.records import Flow
from flows.tables import table_names
from sdn_egress.agent.switch import SwitchError, SwitchPort

LOG = logging.getLogger(__name__)


def diff(desired: set[Flow], actual: set[Flow]) -> tuple[list[Flow], list[Flow]]:
    """(adds, deletes) turning ``actual`` into ``desired``.  A flow whose
    identity (table, priority, match) is kept but whose actions or cookie
    changed is re-added (an add replaces in place, no gap); identities that
    are no longer desired are deleted."""
    # Set differences first (a flow hashes once, see Flow): a pass that changed
    # a few flows pays for those, not for every identity of both sets.  A
    # switch holds one flow per identity, so a flow of ``actual`` that is no
    # longer desired keeps its identity exactly when an added flow has it.
    added = desired - actual
    replaced = {f.key for f in added}
    deletes = [f for f in actual - desired if f.key not in replaced]
    return _sorted(added), _sorted(deletes)


def _sorted(fs) -> list[Flow]:
    """In one order whatever the sets' (bridge, table, priority down, match):
    by the match entries themselves, or by their text should two hold values
    that do not compare (fields this code does not know, read from a switch)."""
    try:
        return sorted(fs, key=_order)
    except TypeError:
        return sorted(fs, key=_order_text)


def _order(f: Flow):
    return (f.bridge, f.table, -f.priority, f.match)


def _order_text(f: Flow):
    return (f.bridge, f.table, -f.priority, str(f.match))


@dataclass
class BridgeState:
    switch: SwitchPort
    installed: set[Flow] | None = None  # None: unknown, dump before diffing


class Bridges:
    """Switches come and go on os-ken's thread; passes run on the agent's."""

    def __init__(self, metrics=None):
        self.metrics = metrics
        self._states: dict[str, BridgeState] = {}
        self._lock = threading.Lock()

    def up(self, switch: SwitchPort) -> None:
        with self._lock:
            self._states[switch.bridge] = BridgeState(switch)
        if self.metrics:
            self.metrics.switch_connected.labels(switch.bridge).set(1)

    def down(self, bridge: str) -> None:
        with self._lock:
            self._states.pop(bridge, None)
        if self.metrics:
            self.metrics.switch_connected.labels(bridge).set(0)

    def switch(self, bridge: str) -> SwitchPort | None:
        with self._lock:
            st = self._states.get(bridge)
            return st.switch if st else None

    def connected(self) -> dict[str, BridgeState]:
        """The bridges connected now (a pass works on these)."""
        with self._lock:
            return dict(self._states)

    def counts(self) -> dict[str, int | None]:
        """bridge -> flows it holds as far as known (None: not dumped yet)."""
        with self._lock:
            return {b: None if st.installed is None else len(st.installed) for b, st in self._states.items()}

    def bootstrap(self, bridges: dict[str, BridgeState]) -> None:
        """Before any state: add the miss flow of every table that lacks it,
        delete nothing.  br-ex's NORMAL miss gives the node its own traffic
        back (after a fresh start of OVS the uplink bridge, fail_mode=secure,
        holds nothing: not even the way to the API server); br-int's drops
        keep what the host steers into it from leaving with the node IP."""
        base = flows.base.flows()
        for bridge, st in bridges.items():
            if st.installed is None:
                st.installed = st.switch.dump_flows(table_names(bridge))
            missing = [f for f in base if f.bridge == bridge and f not in st.installed]
            if missing:
                st.switch.apply(missing, [])
                st.installed |= set(missing)
                LOG.warning("%s: no cluster state yet; added the %d table-miss flows it lacked "
                            "(the node's own traffic passes, nothing is steered)", bridge, len(missing))

    def sync(self, bridges: dict[str, BridgeState], desired: dict[str, frozenset[Flow]],
             full: bool) -> dict[str, tuple[int, int]]:
        """Make each bridge hold its desired flows; ``full``: dump first, so
        drift (flows removed or changed behind the agent's back) is repaired.
        Returns bridge -> (added or replaced, removed)."""
        return {bridge: self._sync_one(st, desired.get(bridge, frozenset()), full)
                for bridge, st in bridges.items()}

    def _sync_one(self, st: BridgeState, desired: frozenset[Flow], full: bool) -> tuple[int, int]:
        bridge = st.switch.bridge
        if st.installed is None or full:
            st.installed = st.switch.dump_flows(table_names(bridge))
        adds, deletes = diff(desired, st.installed)
        if adds or deletes:
            try:
                st.switch.apply(adds, deletes)
            except SwitchError:
                st.installed = None  # unknown now: dump again next pass
                if self.metrics:
                    self.metrics.flow_mod_errors.labels(bridge).inc()
                raise
            if self.metrics:
                self.metrics.flow_mods.labels(bridge, "add").inc(len(adds))
                self.metrics.flow_mods.labels(bridge, "delete").inc(len(deletes))
            LOG.info("%s: %d flows added or replaced, %d removed (%d in all)",
                     bridge, len(adds), len(deletes), len(desired))
        st.installed = set(desired)
        if self.metrics:
            self.metrics.flows.labels(bridge).set(len(desired))
        return len(adds), len(deletes)
