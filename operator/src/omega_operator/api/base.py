"""The building blocks every OmegaVLM API model uses: the base model, open objects, quantities."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel


def open_object(description: str) -> Any:
    """An object whose inner schema is Kubernetes' own (kept as-is, not pruned)."""
    return WithJsonSchema(
        {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "description": description}
    )


class ApiModel(BaseModel):
    """snake_case fields, camelCase aliases (the Kubernetes spelling), unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False)


# Kubernetes resource quantity: an integer or a string such as "64Gi".
Quantity = Annotated[
    int | str,
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}),
]
