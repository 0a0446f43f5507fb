"""The pydantic models and the spec validation (schema rules and cross-field rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from omega_operator.api import InvalidSpec, OmegaVLMSpec, parse_spec
from omega_operator.api.models import RESERVED_ENV, URI_RE

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("omegavlm*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "vlm.omega.io/v1alpha1"
    assert doc["kind"] == "OmegaVLM"
    spec = parse_spec(doc["spec"])
    assert isinstance(spec, OmegaVLMSpec)


def test_round_trip_keeps_camel_case(example: dict[str, Any]) -> None:
    spec = parse_spec(example["spec"])
    assert spec.runtime is not None and spec.runtime.max_batch_size == 4
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["runtime"]["maxBatchSize"] == 4
    assert dumped["fallback"]["crashLoopRestarts"] == 3


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://models/omega-17",
        "pvc://models",
        "hf://Qwen/Qwen2.5-VL-7B-Instruct",
        "hf://org/name@v1.0",
        "file:///mnt/models/x",
    ],
)
def test_uri_pattern_accepts(uri: str) -> None:
    assert URI_RE.match(uri)


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/x", "pvc://", "hf://only-org", "file://relative/path", "/abs/path", "pvc://Bad_Claim/x"],
)
def test_uri_pattern_refuses(uri: str) -> None:
    assert not URI_RE.match(uri)


# (mutation of the minimal spec, field the error must name)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("negative replicas", {"replicas": -1}, "spec.replicas"),
    ("batch size zero", {"runtime": {"maxBatchSize": 0}}, "spec.runtime.maxBatchSize"),
    ("batch size too big", {"runtime": {"maxBatchSize": 4096}}, "spec.runtime.maxBatchSize"),
    ("model length too small", {"runtime": {"maxModelLength": 128}}, "spec.runtime.maxModelLength"),
    ("gpu count 9", {"gpu": {"count": 9}}, "spec.gpu.count"),
    ("empty products", {"gpu": {"products": []}}, "spec.gpu.products"),
    ("attention enum", {"attention": "xformers"}, "spec.attention"),
    ("dtype enum", {"runtime": {"dtype": "int4"}}, "spec.runtime.dtype"),
    ("uri scheme", {"model": {"name": "m", "uri": "s3://bucket/m"}}, "spec.model.uri"),
    ("missing model name", {"model": {"uri": "file:///m"}}, "spec.model.name"),
    ("service port", {"service": {"port": 70000}}, "spec.service.port"),
    ("crash loop restarts 0", {"fallback": {"crashLoopRestarts": 0}}, "spec.fallback.crashLoopRestarts"),
    ("unknown field", {"runtime": {"maxBatch": 2}}, "spec.runtime.maxBatch"),
    ("reserved env", {"env": [{"name": "ATTN_IMPL", "value": "eager"}]}, "spec.env[0].name"),
    ("no tag nor images", {"image": {"repository": "r/omega-vlm-server"}}, "spec.image.tag"),
    (
        "only sdpaImage with auto",
        {"image": {"repository": "r/s", "sdpaImage": "r/s:sdpa"}},
        "spec.image.tag",
    ),
    ("gpu in resources", {"resources": {"limits": {"nvidia.com/gpu": 2}}}, "spec.resources.limits"),
    ("product in nodeSelector", {"nodeSelector": {"nvidia.com/gpu.product": "X"}}, "spec.nodeSelector"),
    ("gpu selector enum", {"gpu": {"selector": "gfd"}}, "spec.gpu.selector"),
    ("products with selector none", {"gpu": {"selector": "none", "products": ["X"]}}, "spec.gpu.products"),
    ("runtime class name", {"runtimeClassName": "Nvidia_GPU"}, "spec.runtimeClassName"),
    ("grace below the hook", {"terminationGracePeriodSeconds": 5}, "spec.terminationGracePeriodSeconds"),
    (
        "value and valueFrom",
        {"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        "spec.env[0].valueFrom",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "field"), [(m, f) for _, m, f in INVALID], ids=[n for n, _, _ in INVALID]
)
def test_invalid_specs_name_the_field(
    minimal_spec: dict[str, Any], mutation: dict[str, Any], field: str
) -> None:
    raw = {**minimal_spec, **mutation}
    with pytest.raises(InvalidSpec) as info:
        parse_spec(raw)
    assert field in info.value.fields, info.value.errors
    assert field in str(info.value)


def test_sdpa_image_alone_is_enough_for_sdpa(minimal_spec: dict[str, Any]) -> None:
    minimal_spec["image"] = {"repository": "r/s", "sdpaImage": "r/s:sdpa"}
    minimal_spec["attention"] = "sdpa"
    parse_spec(minimal_spec)


def test_every_reserved_env_is_refused(minimal_spec: dict[str, Any]) -> None:
    minimal_spec["env"] = [{"name": n, "value": "x"} for n in RESERVED_ENV]
    with pytest.raises(InvalidSpec) as info:
        parse_spec(minimal_spec)
    assert info.value.fields == [f"spec.env[{i}].name" for i in range(len(RESERVED_ENV))]


def test_several_errors_are_all_reported(minimal_spec: dict[str, Any]) -> None:
    minimal_spec["replicas"] = -2
    minimal_spec["gpu"] = {"count": 0}
    with pytest.raises(InvalidSpec) as info:
        parse_spec(minimal_spec)
    assert {"spec.replicas", "spec.gpu.count"} <= set(info.value.fields)
