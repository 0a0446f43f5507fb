"""Spec validation: the schema's rules (via pydantic) plus the cross-field rules.

Each cross-field rule exists once, here, in two spellings side by side: a CEL expression that
crdgen puts into `x-kubernetes-validations` (real clusters enforce it at admission) and a Python
check that the operator runs on every reconcile (older control planes ignore CEL).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic

from omega_operator.api.models import RESERVED_ENV, EnvVar, OmegaVLMSpec


@dataclass(frozen=True)
class FieldError:
    """One problem with the spec: the field path (as a user writes it) and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class InvalidSpec(ValueError):
    """The spec cannot be reconciled; `errors` names each offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))

    @property
    def fields(self) -> list[str]:
        return [e.field for e in self.errors]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: CEL for the API server, `check` for the operator (same meaning)."""

    cel: str
    message: str
    field: str  # relative to the object the rule sits on, e.g. ".image.tag"
    check: Callable[[Any], list[FieldError]]


def _image_rule(spec: OmegaVLMSpec) -> list[FieldError]:
    img = spec.image
    if img.tag or (img.sdpa_image and (spec.attention == "sdpa" or img.flash_image)):
        return []
    return [FieldError("spec.image.tag", SPEC_RULES[0].message)]


def _env_rule(spec: OmegaVLMSpec) -> list[FieldError]:
    return [
        FieldError(
            f"spec.env[{i}].name",
            f"{e.name} is set by the operator from the spec; " + SPEC_RULES[1].message,
        )
        for i, e in enumerate(spec.env or [])
        if e.name in RESERVED_ENV
    ]


def _gpu_resource_rule(spec: OmegaVLMSpec) -> list[FieldError]:
    res = spec.resources
    out = []
    for kind in ("limits", "requests"):
        if res is not None and "nvidia.com/gpu" in (getattr(res, kind) or {}):
            out.append(FieldError(f"spec.resources.{kind}", SPEC_RULES[2].message))
    return out


def _node_selector_rule(spec: OmegaVLMSpec) -> list[FieldError]:
    if "nvidia.com/gpu.product" in (spec.node_selector or {}):
        return [FieldError("spec.nodeSelector", SPEC_RULES[3].message)]
    return []


def _gpu_selector_rule(spec: OmegaVLMSpec) -> list[FieldError]:
    gpu = spec.gpu
    if gpu is not None and gpu.selector == "none" and gpu.products:
        return [FieldError("spec.gpu.products", SPEC_RULES[4].message)]
    return []


def _cache_uri_rule(spec: OmegaVLMSpec) -> list[FieldError]:
    if spec.model.cache is not None and not spec.model.uri.startswith("hf://"):
        return [FieldError("spec.model.cache", SPEC_RULES[5].message)]
    return []


def _cache_claim_rule(spec: OmegaVLMSpec) -> list[FieldError]:
    cache = spec.model.cache
    if cache is None:
        return []
    created = cache.size is not None or cache.storage_class is not None or cache.access_mode is not None
    if (cache.claim_name is not None) == created or (created and cache.size is None):
        return [FieldError("spec.model.cache", SPEC_RULES[6].message)]
    return []


_RESERVED_CEL = ", ".join(f"'{n}'" for n in RESERVED_ENV)

SPEC_RULES: list[Rule] = [
    Rule(
        cel=(
            "has(self.image.tag) || (has(self.image.sdpaImage) && "
            "((has(self.attention) && self.attention == 'sdpa') || has(self.image.flashImage)))"
        ),
        message=(
            "image.tag is required unless image.flashImage and image.sdpaImage are both given "
            "(image.sdpaImage alone is enough for attention sdpa)"
        ),
        field=".image.tag",
        check=_image_rule,
    ),
    Rule(
        cel=f"!has(self.env) || self.env.all(e, !(e.name in [{_RESERVED_CEL}]))",
        message=f"spec.env must not set {', '.join(RESERVED_ENV)}: the operator derives them from the spec",
        field=".env",
        check=_env_rule,
    ),
    Rule(
        cel=(
            "!has(self.resources) || ((!has(self.resources.limits) || "
            "!('nvidia.com/gpu' in self.resources.limits)) && (!has(self.resources.requests) || "
            "!('nvidia.com/gpu' in self.resources.requests)))"
        ),
        message="nvidia.com/gpu comes from spec.gpu.count; do not set it in spec.resources",
        field=".resources",
        check=_gpu_resource_rule,
    ),
    Rule(
        cel="!has(self.nodeSelector) || !('nvidia.com/gpu.product' in self.nodeSelector)",
        message="select GPU products with spec.gpu.products, not nodeSelector nvidia.com/gpu.product",
        field=".nodeSelector",
        check=_node_selector_rule,
    ),
    Rule(
        cel="!has(self.gpu) || !has(self.gpu.products) || !has(self.gpu.selector) || self.gpu.selector != 'none'",
        message="gpu.products needs GPU Feature Discovery labels: it cannot be used with gpu.selector none",
        field=".gpu.products",
        check=_gpu_selector_rule,
    ),
    Rule(
        cel="!has(self.model.cache) || self.model.uri.startsWith('hf://')",
        message=(
            "model.cache keeps hf:// downloads: it cannot be used with a pvc:// or file:// model.uri "
            "(those are read where they are)"
        ),
        field=".model.cache",
        check=_cache_uri_rule,
    ),
    Rule(
        cel=(
            "!has(self.model.cache) || (has(self.model.cache.claimName) ? "
            "!(has(self.model.cache.size) || has(self.model.cache.storageClass) || "
            "has(self.model.cache.accessMode)) : has(self.model.cache.size))"
        ),
        message=(
            "model.cache takes claimName (an existing claim) or size, with optional storageClass and "
            "accessMode (a claim the operator creates), not both"
        ),
        field=".model.cache",
        check=_cache_claim_rule,
    ),
]


def _env_value_rule(env: EnvVar) -> list[FieldError]:
    if env.value is not None and env.value_from is not None:
        return [FieldError("valueFrom", ENV_RULES[0].message)]
    return []


# Rules on each item of spec.env.
ENV_RULES: list[Rule] = [
    Rule(
        cel="!(has(self.value) && has(self.valueFrom))",
        message="value and valueFrom are mutually exclusive",
        field=".valueFrom",
        check=_env_value_rule,
    )
]


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def parse_spec(raw: dict[str, Any] | None) -> OmegaVLMSpec:
    """Validate a raw `spec` mapping (as stored in the API server) and return the typed spec.

    Raises InvalidSpec naming every offending field, for schema violations as well as for the
    cross-field rules (so an API server that ignores CEL still cannot get a bad spec past us).
    """
    try:
        spec = OmegaVLMSpec.model_validate(raw or {})
    except pydantic.ValidationError as exc:
        raise InvalidSpec(
            [FieldError(_loc_to_path(tuple(err["loc"])), err["msg"]) for err in exc.errors()]
        ) from None
    errors: list[FieldError] = []
    for rule in SPEC_RULES:
        errors.extend(rule.check(spec))
    for i, env in enumerate(spec.env or []):
        for rule in ENV_RULES:
            errors.extend(FieldError(f"spec.env[{i}].{e.field}", e.message) for e in rule.check(env))
    if errors:
        raise InvalidSpec(errors)
    return spec
