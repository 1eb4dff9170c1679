"""Which version of each allocation record is in force: generations and a head.

A save writes several records one by one; a crash (or a lost leadership) half
way must not leave a reader acting on part of the new allocation and part of
the old.  So every record a save writes carries that save's *generation*
(key ``generation``) and, when it had a value before, the value in force
until then (key ``previous.json``); a record that goes is first written as a
*tombstone* (no ``record.json``, its previous value kept).  When every record
is written, the save writes the *head*, ConfigMap ``sdn-egress-allocation-head``
(key ``generation``): only then is the generation in force.  Then the
tombstones are deleted.

The head also names the generation in force before (key ``previous``) and,
when they are few (at most :data:`NAMED`), the records the save wrote (key
``written.json``): a reader whose watch of one of those has not brought its
new version yet (the head comes through a watch of its own, which may be
ahead) reads at the previous generation until it has (:func:`reading_at`).

A reader takes of each record the value in force at the head's generation
(:func:`in_force`): ``record.json`` when the record's generation is at most
the head's, else ``previous.json`` (absent: the record did not exist).  Before
the head moves it reads the old allocation whole, after it the new one whole;
a save that never finished is never read.  The next save writes at a
generation above every one it finds (:func:`next_generation`), so the
leftovers of a failed one are written over or, once the head moves past
them, in force only where they are what that save wants.  Records of
earlier versions (no generation) and a missing head count as generation 0:
in force, as they were.
"""
from __future__ import annotations

import json

GENERATION = "generation"
KEY = "record.json"
PREVIOUS = "previous.json"
HEAD = "sdn-egress-allocation-head"
PREVIOUS_HEAD = "previous"
WRITTEN = "written.json"
CREATED = "created.json"
NAMED = 256  # records a head names at most (a first write or a migration writes them all: not named)


def _number(text) -> int:
    try:
        return max(int(str(text)), 0)
    except (TypeError, ValueError):
        return 0


def head_generation(cm: dict | None) -> int:
    """The generation in force (0: none written yet, or an earlier version's records)."""
    return _number(((cm or {}).get("data") or {}).get(GENERATION, 0))


def head_data(gen: int, previous: int, written, created=()) -> dict[str, str]:
    """``created``: the names of ``written`` that did not exist before."""
    written, created = sorted(written), sorted(created)
    if len(written) > NAMED:
        return {GENERATION: str(gen), PREVIOUS_HEAD: str(previous)}
    return {GENERATION: str(gen), PREVIOUS_HEAD: str(previous),
            WRITTEN: json.dumps(written, separators=(",", ":")),
            **({CREATED: json.dumps(created, separators=(",", ":"))} if created else {})}


def _names(data: dict, key: str) -> set[str]:
    try:
        return set(json.loads(data.get(key) or "[]"))
    except ValueError:
        return set()


def reading_at(head: dict | None, items, selects_all: str | None = None) -> int:
    """The generation a reader with these records (ConfigMaps) reads at: the
    head's, or the one before while a record the head names as written at
    it is still older here.  ``selects_all``: the reader receives every
    record whose name starts so (a reader of all EIP records): a record the
    head names as created at its generation that has not arrived yet is
    waited for too.  (A reader of a node's part cannot tell which created
    records are its own: for it, one that arrives after the head is missing
    from the new generation until it does, docs/kubernetes.md.)"""
    gen = head_generation(head)
    data = (head or {}).get("data") or {}
    written = _names(data, WRITTEN)
    behind = any(record_generation(cm) < gen for cm in items if cm["metadata"]["name"] in written)
    if not behind and selects_all is not None:
        have = {cm["metadata"]["name"] for cm in items}
        behind = any(n.startswith(selects_all) and n not in have for n in _names(data, CREATED))
    return _number(data.get(PREVIOUS_HEAD, 0)) if behind else gen


def record_generation(cm: dict) -> int:
    return _number((cm.get("data") or {}).get(GENERATION, 0))


def in_force(cm: dict, head: int) -> str | None:
    """The record's value (its JSON text) at generation ``head``; None: it has none."""
    data = cm.get("data") or {}
    return data.get(KEY) if record_generation(cm) <= head else data.get(PREVIOUS)


def next_generation(head: int, stored) -> int:
    """Above the head and above every record's, written or half-written."""
    return max([head, *(record_generation(cm) for cm in stored)]) + 1


def record_data(text: str | None, generation: int, previous: str | None) -> dict[str, str]:
    """A record's ConfigMap data: ``text`` (None: a tombstone) at ``generation``,
    ``previous`` the value in force until that generation is."""
    data = {GENERATION: str(generation)}
    if text is not None:
        data[KEY] = text
    if previous is not None:
        data[PREVIOUS] = previous
    return data
