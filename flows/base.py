"""The priority-0 flow of every declared table: its miss action (drop on
br-int, NORMAL on br-ex), with a cookie naming the table."""
from __future__ import annotations

from flows import cookie as C
from flows.records import Flow
from flows.tables import PIPELINE, miss_flows


def _cookie(bridge: str, table: str) -> int:
    return C.encode(C.Feature.PIPELINE, C.object_id(C.table_key(bridge, table)))


def flows() -> list[Flow]:
    return [f for bridge in PIPELINE for f in miss_flows(bridge, _cookie)]
