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

GENERATION = "generation"
KEY = "record.json"
PREVIOUS = "previous.json"
HEAD = "sdn-egress-allocation-head"


def _number(text) -> int:
    try:
        return max(int(str(text)), 0)
    except (TypeError, ValueError):
        return 0


def head_generation(cm: dict | None) -> int:
    """The generation in force (0: none written yet, or an earlier version's records)."""
    return _number(((cm or {}).get("data") or {}).get(GENERATION, 0))


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
