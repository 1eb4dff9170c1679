"""Offline checking of a document against a CRD's ``openAPIV3Schema``.

The structural subset Kubernetes serves for CRDs: ``type``, ``properties``
(unknown keys are errors, as with ``kubectl apply --validate=strict``),
``additionalProperties``, ``required``, ``enum``, ``pattern``, ``minimum`` /
``maximum``, ``minLength`` / ``maxLength``, ``minItems`` / ``maxItems``.
``x-kubernetes-validations`` (CEL) are not evaluated here: the parser in
``sdn_egress.model.manifests`` enforces the same rules.  Every violation is
reported, each as (field path, message).
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterator, Mapping

from sdn_egress.model.manifests import describe, quote, shown_number

_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "object": ("a mapping", lambda v: isinstance(v, Mapping)),
    "array": ("a list", lambda v: isinstance(v, list)),
    "string": ("a string", lambda v: isinstance(v, str)),
    # 1.0 is an integer to the API server (JSON has one number type)
    "integer": ("an integer", lambda v: (isinstance(v, int) and not isinstance(v, bool))
                or (isinstance(v, float) and v.is_integer())),
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "boolean": ("a boolean", lambda v: isinstance(v, bool)),
}


@functools.lru_cache(maxsize=None)
def _pattern(pattern: str) -> re.Pattern:
    """A schema pattern as the API server reads it (Go RE2): "$" matches only
    at the very end, where Python's also matches before a final newline."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def violations(value: Any, schema: Mapping[str, Any], path: str = "",
               meaning: Mapping[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """Yield (field path, message) for every way ``value`` breaks ``schema``.
    ``meaning``: pattern -> what it stands for, for messages."""
    meaning = meaning or {}
    where = path or "(document)"
    kind = schema.get("type")
    if value is None:
        # A null is as good as absent for an optional field (kubectl drops it).
        return
    if kind in _TYPES:
        what, ok = _TYPES[kind]
        if not ok(value):
            hint = ""
            if kind == "string" and isinstance(value, (bool, int, float)):
                hint = f' (quote it: "{str(value).lower() if isinstance(value, bool) else shown_number(value)}")'
            yield where, f"must be {what}, not {describe(value)}{hint}"
            return
    if "enum" in schema and value not in schema["enum"]:
        yield where, f"{quote(value)} is not allowed; allowed: {', '.join(map(str, schema['enum']))}"
    if kind == "string":
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            what = meaning.get(schema["pattern"])
            yield where, (f"{quote(value)} is not {what}" if what else
                          f"{quote(value)} does not match the pattern {schema['pattern']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield where, f"must be at most {schema['maxLength']} characters long"
        if "minLength" in schema and len(value) < schema["minLength"]:
            yield where, "must not be empty" if schema["minLength"] == 1 else \
                f"must be at least {schema['minLength']} characters long"
    elif kind in ("integer", "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            low, high = "" if lo is None else lo, "" if hi is None else hi
            yield where, f"{shown_number(value)} is out of range {low}..{high}"
    elif kind == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            yield where, (f"must list at least {schema['minItems']} "
                          f"{'entry' if schema['minItems'] == 1 else 'entries'}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield where, f"must list at most {schema['maxItems']} entries"
        items = schema.get("items")
        if items:
            for i, item in enumerate(value):
                yield from violations(item, items, f"{path}[{i}]", meaning)
    elif kind == "object":
        for key in schema.get("required", ()):
            if value.get(key) is None:
                yield _join(path, key), "is required"
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if not isinstance(key, str):
                yield where, f"keys must be strings, not {describe(key)} ({quote(key)})"
            elif props is not None and key in props:
                yield from violations(item, props[key], _join(path, key), meaning)
            elif isinstance(extra, Mapping):
                yield from violations(item, extra, _join(path, key), meaning)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield _join(path, key), f"unknown key {quote(key)}; allowed: {', '.join(sorted(props))}"
