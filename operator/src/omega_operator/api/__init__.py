"""The OmegaVLM API: pydantic models (the single source of the CRD) and spec validation."""

from omega_operator.api.models import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    RESERVED_ENV,
    VERSION,
    AttentionStatus,
    Condition,
    FallbackRecord,
    OmegaVLM,
    OmegaVLMSpec,
    OmegaVLMStatus,
)
from omega_operator.api.placement import H100_PRODUCTS, HOPPER_PRODUCTS
from omega_operator.api.validation import ENV_RULES, SPEC_RULES, FieldError, InvalidSpec, parse_spec

__all__ = [
    "API_VERSION",
    "ENV_RULES",
    "GROUP",
    "H100_PRODUCTS",
    "HOPPER_PRODUCTS",
    "KIND",
    "PLURAL",
    "RESERVED_ENV",
    "SPEC_RULES",
    "VERSION",
    "AttentionStatus",
    "Condition",
    "FallbackRecord",
    "FieldError",
    "InvalidSpec",
    "OmegaVLM",
    "OmegaVLMSpec",
    "OmegaVLMStatus",
    "parse_spec",
]
