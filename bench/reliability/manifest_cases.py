"""Randomly mutated OmegaVLM specs for the bad-objects experiment: type changes, missing and extra fields,
extreme values, applied to a small valid spec. Pure: builds dicts.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

from bench.reliability.fuzz_cases import json_values

#: The spec every mutation starts from: valid, no pods (replicas 0), every section present.
BASE_SPEC: dict[str, Any] = {
    "model": {"name": "tiny", "uri": "file:///models/tiny"},
    "replicas": 0,
    "image": {"repository": "registry.example.com/omega-idle", "tag": "v1"},
    "attention": "auto",
    "runtime": {"maxBatchSize": 8, "maxModelLength": 4096, "dtype": "bfloat16"},
    "gpu": {"count": 1},
    "service": {"port": 8000},
    "fallback": {"crashLoopRestarts": 3},
    "env": [{"name": "LOG_LEVEL", "value": "info"}],
}

EXTREMES = [0, -1, 2**31, 2**63 - 1, 10**30, -(10**30), 1e300, "", "x" * 5000, [], {}, None, True]


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``value`` (dict keys and list indexes), the containers included."""
    paths: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            paths += leaf_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            paths += leaf_paths(child, (*prefix, i))
    return paths


def _set(doc: Any, path: tuple[Any, ...], new: Any, delete: bool = False) -> None:
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new


@st.composite
def mutated_specs(draw: st.DrawFn) -> dict[str, Any]:
    """BASE_SPEC with one to three mutations: a value replaced (any JSON, an extreme), a field deleted,
    or an unknown field added."""
    spec = copy.deepcopy(BASE_SPEC)
    for _ in range(draw(st.integers(1, 3))):
        paths = leaf_paths(spec)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "extreme", "delete", "add"]))
        if action == "replace":
            _set(spec, path, draw(json_values(4)))
        elif action == "extreme":
            _set(spec, path, draw(st.sampled_from(EXTREMES)))
        elif action == "delete":
            _set(spec, path, None, delete=True)
        else:
            target = spec
            for key in path[:-1]:
                target = target[key]
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=10))] = draw(json_values(3))
    return spec


def sample_specs(count: int, seed_value: int = 0) -> list[dict[str, Any]]:
    """``count`` mutated specs, reproducible from ``seed_value`` (fewer only if hypothesis runs dry)."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    out: list[dict[str, Any]] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(spec=mutated_specs())
    def collect(spec: dict[str, Any]) -> None:
        out.append(spec)

    collect()
    return out
