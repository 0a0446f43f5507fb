"""The generated CRD: in sync with the models, byte-identical copies, structural, documented."""

from __future__ import annotations

from typing import Any

import yaml
from omega_operator import crdgen
from omega_operator.api.validation import ENV_RULES, SPEC_RULES


def test_files_are_up_to_date() -> None:
    assert crdgen.main(["--check"]) == 0, "run: python -m omega_operator.crdgen"


def test_copies_are_byte_identical() -> None:
    top, chart = crdgen.output_paths()
    assert top.read_bytes() == chart.read_bytes() == crdgen.render().encode()


def test_check_detects_drift(tmp_path: Any) -> None:
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 0
    chart = crdgen.output_paths(tmp_path)[1]
    chart.write_text(chart.read_text().replace("maximum: 1024", "maximum: 2048"))
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1


def _walk(node: Any, path: str = "") -> Any:
    yield path, node
    if isinstance(node, dict):
        for k, v in (node.get("properties") or {}).items():
            yield from _walk(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            yield from _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _schema() -> dict[str, Any]:
    doc = yaml.safe_load(crdgen.render())
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural_and_described() -> None:
    for path, node in _walk(_schema()):
        assert "$ref" not in node and "title" not in node and "default" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "boolean", "number"}, path
        assert "anyOf" not in node and "allOf" not in node, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            assert node["type"] == "object" and "properties" not in node, path
        # every field a user can write is documented, for kubectl explain
        if path.startswith((".spec", ".status")) and path.count("{}") == 0 and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"


def test_bounds_and_enums() -> None:
    spec = _schema()["properties"]["spec"]["properties"]
    assert spec["replicas"]["minimum"] == 0
    rt = spec["runtime"]["properties"]
    assert (rt["maxBatchSize"]["minimum"], rt["maxBatchSize"]["maximum"]) == (1, 1024)
    assert rt["maxModelLength"]["minimum"] == 256
    assert (spec["gpu"]["properties"]["count"]["minimum"], spec["gpu"]["properties"]["count"]["maximum"]) == (
        1,
        8,
    )
    assert spec["attention"]["enum"] == ["auto", "flash_attention_2", "sdpa"]
    assert spec["model"]["properties"]["uri"]["pattern"].startswith("^(pvc://")
    assert set(_schema()["properties"]["spec"]["required"]) == {"model", "image"}


def test_cel_rules_are_the_operators_rules() -> None:
    spec = _schema()["properties"]["spec"]
    assert [r["rule"] for r in spec["x-kubernetes-validations"]] == [r.cel for r in SPEC_RULES]
    env_item = spec["properties"]["env"]["items"]
    assert [r["rule"] for r in env_item["x-kubernetes-validations"]] == [r.cel for r in ENV_RULES]
    assert spec["properties"]["env"]["x-kubernetes-list-type"] == "map"


def test_names_columns_subresource() -> None:
    doc = yaml.safe_load(crdgen.render())
    assert doc["metadata"]["name"] == "omegavlms.vlm.omega.io"
    names = doc["spec"]["names"]
    assert names["shortNames"] == ["ovlm"] and names["categories"] == ["omega"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert cols == ["Ready", "Attention", "Replicas", "Variant", "Reason", "Age"]
    assert version["additionalPrinterColumns"][1]["jsonPath"] == ".status.attention.active"
