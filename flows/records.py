"""The project's own flow record and action records: immutable, canonical,
comparable.

A :class:`Flow` built by the pipeline and the :class:`Flow` that
``flows.ofp.from_stats`` reads back from a switch holding it are equal, so
the agent can diff desired against actual with plain set operations.  To get
there every value is canonicalised on construction: match entries sorted by
field, MACs lower case, IP addresses and masks as netaddr prints them,
all-ones masks dropped, all-zero masks drop the field, values ANDed with
their mask.

Nothing here checks the pipeline's rules (declared tables, allowed fields,
allowed next tables): that is :func:`flows.tables.flow`'s job.  A ``Flow``
may describe anything a switch holds, including flows of an older pipeline
that are about to be deleted.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, Union

import netaddr

from flows import fields as F

MatchEntry = tuple  # (field, value) or (field, value, mask)


# -- values ---------------------------------------------------------------------

def canonical_value(name: str, value: Any) -> Any:
    """One field value in canonical form (int, lower-case MAC, IP string)."""
    kind = F.FIELDS[name].kind if name in F.FIELDS else None
    try:
        if kind == F.INT:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"expected an integer, got {type(value).__name__}")
            bits = F.FIELDS[name].bits
            if not 0 <= value < 2**bits:
                raise ValueError(f"{value} does not fit in {bits} bits")
            return value
        if kind == F.MAC:
            return str(netaddr.EUI(value, dialect=netaddr.mac_unix_expanded)).lower()
        if kind in (F.IPV4, F.IPV6):
            ip = netaddr.IPAddress(value)
            want = 4 if kind == F.IPV4 else 6
            if ip.version != want:
                raise ValueError(f"{value} is not an IPv{want} address")
            return str(ip)
    except (TypeError, ValueError, netaddr.AddrFormatError) as exc:
        raise ValueError(f"field {name}: bad value {value!r}: {exc}") from None
    # A field this project does not use (seen on a switch): keep it comparable.
    return value.lower() if isinstance(value, str) else value


def _as_int(name: str, v: Any) -> int:
    kind = F.FIELDS[name].kind
    if kind == F.INT:
        return v
    if kind == F.MAC:
        return int(netaddr.EUI(v))
    return int(netaddr.IPAddress(v))


def _from_int(name: str, n: int) -> Any:
    kind = F.FIELDS[name].kind
    if kind == F.INT:
        return n
    if kind == F.MAC:
        return str(netaddr.EUI(n, dialect=netaddr.mac_unix_expanded)).lower()
    return str(netaddr.IPAddress(n, 4 if kind == F.IPV4 else 6))


def canonical_entry(name: str, value: Any, mask: Any = None) -> MatchEntry | None:
    """``(field, value[, mask])`` in canonical form; None for a wildcard.
    The same entry recurs in many flows (a pod's address in each of its
    steers, a port, an eth_type): hashable ones are canonicalised once
    (``typed``: ``True`` is not taken for ``1``)."""
    if mask is None:
        kind = type(value)
        if kind is int and name in _PLAIN_INT and 0 <= value < _PLAIN_INT[name]:
            return (name, value)
        # netaddr hashes in Python: key its objects by their ints instead.
        if kind is netaddr.IPNetwork:
            return _network_entry(name, value.version, value.first, value.prefixlen)
        if kind is netaddr.IPAddress:
            return _address_entry(name, value.version, value.value)
    try:
        return _canonical_entry_cached(name, value, mask)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
        return _canonical_entry(name, value, mask)


_PLAIN_INT = {f.name: 2 ** f.bits for f in F.FIELDS.values() if f.kind == F.INT}


@lru_cache(maxsize=1 << 16, typed=True)
def _canonical_entry_cached(name: str, value: Any, mask: Any) -> MatchEntry | None:
    return _canonical_entry(name, value, mask)


@lru_cache(maxsize=1 << 16)
def _network_entry(name: str, version: int, first: int, prefixlen: int) -> MatchEntry | None:
    f = F.FIELDS.get(name)
    if f is None or f.kind != _IP_KIND.get(version) or not 0 <= prefixlen <= f.bits:
        return _canonical_entry(name, netaddr.IPNetwork(f"{netaddr.IPAddress(first, version)}/{prefixlen}"), None)
    # _canonical_entry's result, from the integers: the value ANDed with the mask, both as netaddr prints them
    ones = (1 << f.bits) - 1
    mask = ones ^ ((1 << (f.bits - prefixlen)) - 1)
    if mask == 0:
        return None
    value = str(netaddr.IPAddress(first & mask, version))
    return (name, value) if mask == ones else (name, value, str(netaddr.IPAddress(mask, version)))


_IP_KIND = {4: F.IPV4, 6: F.IPV6}


@lru_cache(maxsize=1 << 16)
def _address_entry(name: str, version: int, value: int) -> MatchEntry | None:
    return _canonical_entry(name, netaddr.IPAddress(value, version), None)


def _canonical_entry(name: str, value: Any, mask: Any) -> MatchEntry | None:
    if isinstance(value, netaddr.IPNetwork):
        if mask is not None:
            raise ValueError(f"field {name}: a CIDR value carries its own mask")
        value, mask = value.network, value.netmask
    value = canonical_value(name, value)
    if mask is None:
        return (name, value)
    mask = canonical_value(name, mask)
    if name not in F.FIELDS:
        return (name, value, mask)
    ones = 2 ** F.FIELDS[name].bits - 1
    m = _as_int(name, mask)
    if m == 0:
        return None
    v = _as_int(name, value) & m
    if m == ones:
        return (name, _from_int(name, v))
    return (name, _from_int(name, v), _from_int(name, m))


MatchSpec = Union[Mapping[str, Any], Iterable[tuple]]


def canonical_match(spec: MatchSpec) -> tuple[MatchEntry, ...]:
    """A match as a sorted tuple of entries.  ``spec`` is a mapping
    ``{field: value | (value, mask) | IPNetwork}`` or an iterable of
    ``(field, value[, mask])``."""
    if type(spec) is dict:  # as the pipeline writes them: each field once already
        out = {}
        for k, v in spec.items():
            if type(v) is tuple:
                if len(v) != 2:
                    raise ValueError(f"match entry {(k, *v)!r}: expected (field, value[, mask])")
                entry = canonical_entry(k, v[0], v[1])
            else:
                entry = canonical_entry(k, v)
            if entry is not None:
                out[k] = entry
        return tuple(out[k] for k in sorted(out))
    if isinstance(spec, Mapping):
        entries = [(k, *v) if isinstance(v, tuple) else (k, v) for k, v in spec.items()]
    else:
        entries = [tuple(e) for e in spec]
    out: dict[str, MatchEntry] = {}
    seen: set[str] = set()
    for e in entries:
        if len(e) not in (2, 3):
            raise ValueError(f"match entry {e!r}: expected (field, value[, mask])")
        if e[0] in seen:
            raise ValueError(f"field {e[0]} matched twice")
        seen.add(e[0])
        entry = canonical_entry(*e)
        if entry is not None:
            out[e[0]] = entry
    return tuple(out[k] for k in sorted(out))


# -- actions ----------------------------------------------------------------------

@dataclass(frozen=True)
class Output:
    """Send out of an OpenFlow port (never the packet's in_port: use InPort)."""
    port: int

    def __post_init__(self):
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 0xFFFFFF00:
            raise ValueError(f"output: bad port {self.port!r}")


@dataclass(frozen=True)
class InPort:
    """Send back out of the port the packet came in on."""


@dataclass(frozen=True)
class Normal:
    """Hand to the bridge's normal L2 switching."""


@dataclass(frozen=True)
class Drop:
    """Explicitly nothing (a flow with no actions)."""


@dataclass(frozen=True)
class Goto:
    """Continue in a later table of the same bridge (by name)."""
    table: str


@dataclass(frozen=True)
class SetField:
    """Overwrite a whole header or metadata field (not a register: see Load)."""
    field: str
    value: Any

    def __post_init__(self):
        if F.is_register(self.field):
            raise ValueError(f"set_field to {self.field}: use Load for registers")
        object.__setattr__(self, "value", canonical_value(self.field, self.value))


@dataclass(frozen=True)
class Load:
    """Load a constant into a whole register."""
    field: str
    value: int

    def __post_init__(self):
        if not F.is_register(self.field):
            raise ValueError(f"load into {self.field}: not a register (use SetField)")
        object.__setattr__(self, "value", canonical_value(self.field, self.value))


@dataclass(frozen=True)
class Move:
    """Copy one whole field into another of the same width."""
    src: str
    dst: str

    def __post_init__(self):
        a, b = F.field(self.src), F.field(self.dst)
        if a.bits != b.bits:
            raise ValueError(f"move {self.src} -> {self.dst}: widths differ ({a.bits} vs {b.bits})")


@dataclass(frozen=True)
class Nat:
    """The NAT part of a ct action: ``kind`` "src" or "dst" with one address
    (and optionally a port range ``ports``), or neither (``nat`` alone:
    de-NAT packets of connections already NATed)."""
    kind: str | None = None
    addr: str | None = None
    ports: tuple[int, int] | None = None

    def __post_init__(self):
        if self.ports is not None:
            lo, hi = self.ports
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 65535):
                raise ValueError(f"nat: ports must be (min, max) within 1..65535, not {self.ports!r}")
            if self.kind is None:
                raise ValueError("nat: a port range needs kind 'src' or 'dst'")
            object.__setattr__(self, "ports", (lo, hi))
        if self.kind is None:
            if self.addr is not None:
                raise ValueError("nat: an address needs kind 'src' or 'dst'")
            return
        if self.kind not in ("src", "dst"):
            raise ValueError(f"nat: kind must be 'src', 'dst' or None, not {self.kind!r}")
        if self.addr is None:
            raise ValueError(f"nat({self.kind}): needs an address")
        object.__setattr__(self, "addr", str(netaddr.IPAddress(self.addr)))


@dataclass(frozen=True)
class CT:
    """Send through the connection tracker in ``zone``; with ``commit`` make
    the connection persistent and run ``actions`` (e.g. set ct_mark) on it;
    with ``table`` continue the packet, with its ct_state, in that table."""
    commit: bool = False
    zone: int = 0
    table: str | None = None
    nat: Nat | None = None
    actions: tuple = ()

    def __post_init__(self):
        if not 0 <= self.zone <= 0xFFFF:
            raise ValueError(f"ct: zone {self.zone} outside 0..65535")
        object.__setattr__(self, "actions", tuple(self.actions))
        if self.actions and not self.commit:
            raise ValueError("ct: exec actions need commit")
        for a in self.actions:
            if not isinstance(a, (SetField, Load)):
                raise ValueError(f"ct: exec allows set_field/load only, not {a!r}")


@dataclass(frozen=True)
class Bundle:
    """Output to the first *live* port of ``ports`` (``bundle(active_backup)``):
    the switch itself moves traffic when a member's liveness (BFD on a tunnel,
    carrier) goes, no controller in the loop; no live member: nothing is sent."""
    ports: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "ports", tuple(self.ports))
        if len(self.ports) < 2 or len(set(self.ports)) != len(self.ports):
            raise ValueError(f"bundle: needs two or more distinct ports, got {self.ports!r}")
        for p in self.ports:
            Output(p)  # same port rules


@dataclass(frozen=True)
class CheckLarger:
    """``check_pkt_larger(length)->field[bit]``: the register bit becomes 1
    when the whole frame (Ethernet header included) is longer than
    ``length`` bytes, else 0.  Nothing else about the packet changes."""
    length: int
    field: str
    bit: int = 0

    def __post_init__(self):
        if not F.is_register(self.field):
            raise ValueError(f"check_pkt_larger into {self.field}: not a register")
        if not 0 <= self.bit < F.field(self.field).bits:
            raise ValueError(f"check_pkt_larger: bit {self.bit} outside {self.field}")
        if isinstance(self.length, bool) or not isinstance(self.length, int) or not 0 < self.length <= 0xFFFF:
            raise ValueError(f"check_pkt_larger: bad length {self.length!r}")


@dataclass(frozen=True)
class Controller:
    """Send the whole packet to the agent (a packet-in, never buffered); the
    flow's cookie tells the agent why it came."""


@dataclass(frozen=True)
class Unknown:
    """An action read from a switch that this project does not model."""
    text: str


Action = Union[Output, InPort, Normal, Drop, Goto, SetField, Load, Move, CT, Bundle, CheckLarger,
               Controller, Unknown]
ACTION_TYPES = (Output, InPort, Normal, Drop, Goto, SetField, Load, Move, CT, Bundle, CheckLarger,
                Controller, Unknown)


# -- the flow ---------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Flow:
    """One flow entry.  ``table`` is a table name of ``flows.tables`` (or
    ``table<N>`` for a table the pipeline does not declare)."""

    bridge: str
    table: str
    priority: int
    match: tuple = ()
    actions: tuple = (Drop(),)
    cookie: int = 0

    def __post_init__(self):
        if not 0 <= self.priority <= 0xFFFF:
            raise ValueError(f"{self.bridge}/{self.table}: priority {self.priority} outside 0..65535")
        if not 0 <= self.cookie < 2**64:
            raise ValueError(f"{self.bridge}/{self.table}: cookie {self.cookie:#x} is not 64-bit")
        object.__setattr__(self, "match", canonical_match(self.match))
        actions = tuple(self.actions) or (Drop(),)
        last = len(actions) - 1
        for i, a in enumerate(actions):
            if not isinstance(a, ACTION_TYPES):
                raise ValueError(f"{self.bridge}/{self.table}: not an action record: {a!r}")
            if last and isinstance(a, Drop):
                raise ValueError(f"{self.bridge}/{self.table}: drop cannot be combined with other actions")
            if i != last and isinstance(a, Goto):
                raise ValueError(f"{self.bridge}/{self.table}: goto must be the single last action")
        object.__setattr__(self, "actions", actions)
        # Computed once: a pass hashes and keys every flow it diffs.
        object.__setattr__(self, "key", (self.bridge, self.table, self.priority, self.match))
        object.__setattr__(self, "_hash", hash((self.key, actions, self.cookie)))

    @classmethod
    def of_canonical(cls, bridge: str, table: str, priority: int, match: tuple, actions: tuple,
                     cookie: int) -> "Flow":
        """A flow from parts that are already another flow's: ``match`` a
        canonical match (as :func:`canonical_match` gives it: sorted, each
        entry as :func:`canonical_entry` makes it), ``actions`` a flow's
        tuple of action records, ``priority`` and ``cookie`` in range.
        Nothing is checked or converted (the caller vouches: the result must
        equal ``Flow(...)`` of the same parts); for the thousands of flows
        of one shape a pipeline builds (a pod's steers)."""
        f = object.__new__(cls)
        key = (bridge, table, priority, match)
        f.__dict__.update(bridge=bridge, table=table, priority=priority, match=match, actions=actions,
                          cookie=cookie, key=key, _hash=hash((key, actions, cookie)))
        return f

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if other.__class__ is not Flow:
            return NotImplemented
        return (self._hash == other._hash and self.cookie == other.cookie and self.key == other.key
                and self.actions == other.actions)

    # ``key``: the flow's identity on a switch (bridge, table, priority,
    # match): an add with the same key replaces it.  Set in __post_init__.

    def match_dict(self) -> dict[str, tuple]:
        """``{field: (value, mask-or-None)}``."""
        return {e[0]: (e[1], e[2] if len(e) == 3 else None) for e in self.match}
