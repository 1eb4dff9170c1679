"""The OpenFlow pipeline of sdn-egress as pure code (no I/O, no os-ken connection).

``build(view)`` is the whole desired state of one node's switches: the same
view always gives the same flows, whatever order its entries come in.
"""
from __future__ import annotations

from flows import arp, base, gateway, nd, uplink, worker
from flows.check import ViewError, check
from flows.cookie import legend
from flows.memo import Memo
from flows.records import Flow
from flows.render import describe
from flows.tables import PIPELINE
from flows.view import NodeView

__all__ = ["build", "Memo", "ViewError"]


def build(view: NodeView, memo: Memo | None = None) -> dict[str, frozenset[Flow]]:
    """Every flow ``view``'s node must hold, by bridge name ("br-int", "br-ex").

    br-ex always holds its NORMAL miss flow, so a bridge that exists without
    an uplink still switches the node's own traffic; everything else needs the
    ports it uses.  ``memo`` (:class:`flows.memo.Memo`, one per node, kept
    between builds): the flows of the view objects that did not change are
    taken from the last build; the result is the same."""
    try:
        check(view, memo)
        parts = [base.flows() if memo is None else memo.get("base", (), base.flows),  # the same every time
                 *worker.flow_parts(view, memo), gateway.flows(view, memo), uplink.flows(view), arp.flows(view),
                 nd.flows(view)]
        return _by_bridge(parts, view, memo)
    finally:
        if memo is not None:
            memo.turn()


def _by_bridge(parts: list, view: NodeView, memo: Memo | None) -> dict[str, frozenset[Flow]]:
    """The flows of ``parts`` (lists and sets of flows) by bridge, each
    identity once (a conflict raises).  With ``memo``, from the last build's
    result and the flows that came or went (set operations, no loop over
    every flow; a part that is a set is gathered without hashing its flows)."""
    wanted: set[Flow] = set()
    for part in parts:
        wanted.update(part)
    last = memo.peek("built", ()) if memo is not None else None
    if last is not None:
        had, by_key, out = last
        added, removed = wanted - had, had - wanted
        by_key = dict(by_key)
        for f in removed:
            del by_key[f.key]
        by_key.update((f.key, f) for f in added)
        if len(by_key) == len(wanted):  # else two flows want one identity: the full way names them
            touched = {f.bridge for f in added} | {f.bridge for f in removed}
            out = {b: fs - removed | {f for f in added if f.bridge == b} if b in touched else fs
                   for b, fs in out.items()}
            memo.put("built", (), (wanted, by_key, out))
            return out
    by_key = {f.key: f for f in wanted}
    if len(by_key) != len(wanted):  # one identity, two different flows
        by_key = {}
        for f in (f for part in parts for f in part):
            other = by_key.setdefault(f.key, f)
            if other != f:
                names = legend(view)
                raise ViewError(f"two objects of the view want {f.bridge}/{f.table} priority "
                                f"{f.priority} with different actions: {describe(other, names)} "
                                f"| {describe(f, names)}")
    grouped: dict[str, list[Flow]] = {b: [] for b in PIPELINE}
    for f in by_key.values():
        grouped[f.bridge].append(f)
    out = {b: frozenset(fs) for b, fs in grouped.items()}
    if memo is not None:
        memo.put("built", (), (wanted, by_key, out))
    return out
