"""Pool arithmetic: which families a policy gets, where a free address is.

A fresh allocation hands out addresses in order, so :class:`FreeCursor`
remembers, per gateway and family (or pair of families), the index below
which every address is taken: finding the lowest free address is amortised
O(1) instead of a scan from the start for every policy.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import netaddr

from sdn_egress.model import EgressGateway, EgressPolicy


def families(p: EgressPolicy, gw: EgressGateway) -> tuple[int, ...]:
    """The address families a policy gets an EIP of: both of a dual-stack
    gateway's; else those it names one for, and those its gateway has a pool for."""
    if gw.dual_stack:
        return (4, 6)
    return tuple(v for v in (4, 6) if p.explicit_eip(v) is not None or gw.pool(v))


def lowest_free(pool: Iterable[netaddr.IPRange], taken: Mapping | set) -> netaddr.IPAddress | None:
    """The lowest address of ``pool`` not in ``taken``; O(len(taken)) per range."""
    for r in sorted(pool, key=lambda r: r.first):
        candidate = r.first
        while candidate <= r.last:
            ip = netaddr.IPAddress(candidate, r.version)
            if ip not in taken:
                return ip
            candidate += 1
    return None


def index_after(gw: EgressGateway, version: int, last: netaddr.IPAddress | None) -> int:
    """The pool index of the first address above ``last`` (0 when none is)."""
    if last is None:
        return 0
    offset = 0
    for r in gw.pool(version):
        if int(last) < r.first:
            return offset
        if int(last) < r.last:
            return offset + int(last) - r.first + 1
        offset += r.size
    return 0


def _free(gw: EgressGateway, versions: tuple[int, ...], taken: Mapping, index: int) -> bool:
    return all(gw.address_at(v, index) not in taken for v in versions)


def free_index(gw: EgressGateway, versions: tuple[int, ...], taken: Mapping, start: int = 0) -> int | None:
    """The first pool index from ``start`` on (wrapping) whose addresses of
    every family in ``versions`` are free; O(len(taken)) steps."""
    size = gw.pool_size(versions[0])
    if not size:
        return None
    index = start % size
    for _ in range(min(size, len(taken) + 1)):
        if _free(gw, versions, taken, index):
            return index
        index = (index + 1) % size
    return None


class FreeCursor:
    """The lowest free pool index per (gateway, families), while addresses
    are only taken (rule 3 of the allocation never gives one back): every
    index below the cursor is taken, so the search goes on from there.  Same
    answers as ``free_index(gw, versions, taken, 0)``, amortised O(1) each."""

    def __init__(self) -> None:
        self._below: dict[tuple[str, tuple[int, ...]], int] = {}

    def lowest(self, gw: EgressGateway, versions: tuple[int, ...], taken: Mapping) -> int | None:
        key = (gw.name, versions)
        size = gw.pool_size(versions[0])
        index = self._below.get(key, 0)
        while index < size and not _free(gw, versions, taken, index):
            index += 1
        self._below[key] = index
        return index if index < size else None
