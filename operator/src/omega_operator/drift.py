"""Whether a child must be (re)applied: a desired server-side-apply body against the live object. Pure.

A reconcile applies a child only when the live object does not already hold every field we
set with the value we set, so a reconcile that changes nothing writes nothing. Fields others
own (defaults, other managers' additions) are ignored.

A field we stop setting (an env item or a nodeSelector the user removed) is still "held" by the
live object, so the desired body also carries a hash of itself (:func:`stamp`): a new desired body
has a new hash, and the apply that follows drops the fields we no longer own.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from omega_operator.quantity import parse_quantity

#: Annotation with the hash of the desired body last applied to a child.
APPLIED_HASH_ANNOTATION = "vlm.omega.io/applied-hash"

# Lists whose items SSA merges by a key: extra items owned by others are fine.
_LIST_KEYS = ("name", "type")


def _list_key(items: list[Any]) -> str | None:
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in _LIST_KEYS:
        if all(key in i for i in items):
            return key
    return None


def stamp(desired: dict[str, Any]) -> dict[str, Any]:
    """A copy of `desired` whose metadata carries the hash of the rest (see the module docstring)."""
    body = copy.deepcopy(desired)
    annotations = body.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(APPLIED_HASH_ANNOTATION, None)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    annotations[APPLIED_HASH_ANNOTATION] = digest[:16]
    return body


def _same_quantity(actual: str, desired: str) -> bool:
    """The API server rewrites quantities into canonical form ("0.5" -> "500m", "1024Mi" -> "1Gi")."""
    try:
        return bool(parse_quantity(actual) == parse_quantity(desired))
    except (ValueError, ArithmeticError, TypeError):
        return False


def contains(actual: Any, desired: Any) -> bool:
    """True when `actual` holds everything `desired` says (recursively)."""
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return False
        return all(k in actual and contains(actual[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list):
            return False
        key = _list_key(desired)
        if key is not None and _list_key(actual) == key:
            by_key = {i[key]: i for i in actual}
            # Same keys in the same relative order (env order matters for $(VAR) references).
            order = [i[key] for i in actual if i[key] in {d[key] for d in desired}]
            return order == [d[key] for d in desired] and all(contains(by_key[d[key]], d) for d in desired)
        return len(actual) == len(desired) and all(
            contains(a, d) for a, d in zip(actual, desired, strict=True)
        )
    if isinstance(desired, bool) or isinstance(actual, bool):
        return actual is desired
    if isinstance(desired, int | float) and isinstance(actual, int | float):
        return actual == desired
    if isinstance(desired, str) and isinstance(actual, str) and actual != desired:
        return _same_quantity(actual, desired)
    return actual == desired


def needs_apply(desired: dict[str, Any], actual: dict[str, Any] | None) -> bool:
    """Whether the desired object must be (re)applied: missing, or any of our fields differs."""
    if actual is None or (actual.get("metadata") or {}).get("deletionTimestamp"):
        return True
    return not (
        contains(actual.get("metadata") or {}, desired["metadata"])
        and contains(actual.get("spec") or {}, desired.get("spec") or {})
    )
