"""Model loading: MODEL_PATH forms, the Omega aliases, processor fallbacks, dtype/device choice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omega_server import models
from omega_server.engine import Engine, EngineConfig

pytestmark = pytest.mark.timeout(300)


def test_model_path_forms(tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint("llava")
    assert models.resolve_model_path(str(path)) == path
    assert models.resolve_model_path(f"file://{path}") == path
    assert models.resolve_model_path(f"file://localhost{path}") == path


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "MODEL_PATH is empty"),
        ("/nonexistent/model", "is not a directory"),
        ("file://otherhost/models/x", "must be local"),
        ("s3://bucket/model", "unsupported scheme 's3'"),
        ("hf://just-a-name", "expected hf://org/name"),
        ("hf://org/", "expected hf://org/name"),
    ],
)
def test_bad_model_paths_name_model_path(value: str, message: str) -> None:
    with pytest.raises(models.ModelPathError) as err:
        models.resolve_model_path(value)
    assert message in str(err.value)
    assert "MODEL_PATH" in str(err.value)


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(models.ModelPathError, match=r"no config\.json"):
        models.resolve_model_path(str(tmp_path))


def test_hf_path_without_network_fails_clearly() -> None:
    # Offline mode: no request leaves the machine; the failure must still name MODEL_PATH and the repo.
    code = (
        "from omega_server.models import resolve_model_path, ModelPathError\n"
        "try:\n    resolve_model_path('hf://omega-test/no-such-model@v1')\n"
        "except ModelPathError as e:\n    print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert (
        "MODEL_PATH 'hf://omega-test/no-such-model@v1': cannot download omega-test/no-such-model@v1"
        in out.stdout
    )


@pytest.mark.parametrize(
    ("arch", "upstream", "cls"),
    [
        ("omega17_vl_exp", "qwen3_vl_moe", "Qwen3VLMoeForConditionalGeneration"),
        ("omega17_vl", "qwen3_vl", "Qwen3VLForConditionalGeneration"),
    ],
)
def test_omega_checkpoints_load_through_aliases(
    arch: str, upstream: str, cls: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    loaded = models.load(tiny_checkpoint(arch), attn_implementation="sdpa", device="cpu")
    assert loaded.model_type == arch
    assert loaded.resolved_model_type == upstream
    assert type(loaded.model).__name__ == cls
    assert type(loaded.processor).__name__ == "Qwen3VLProcessor"


def test_alias_by_class_name_and_fork_processor(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    """A fork checkpoint that names only its class and its own processor class still loads upstream."""
    path = tmp_path / "fork"
    shutil.copytree(tiny_checkpoint("omega17_vl_exp"), path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "omega17_vl_exp_v2"
    (path / "config.json").write_text(json.dumps(cfg))
    proc = json.loads((path / "processor_config.json").read_text())
    proc["processor_class"] = "Omega17VLExpProcessor"
    (path / "processor_config.json").write_text(json.dumps(proc))
    loaded = models.load(path, attn_implementation="sdpa", device="cpu")
    assert type(loaded.model).__name__ == "Qwen3VLMoeForConditionalGeneration"
    assert type(loaded.processor).__name__ == "Qwen3VLProcessor"
    assert cfg["architectures"] == ["Omega17VLExpForConditionalGeneration"]


def test_alias_rewrites_sub_config_types() -> None:
    raw = {
        "model_type": "omega17_vl_exp",
        "architectures": ["Omega17VLExpForConditionalGeneration"],
        "text_config": {"model_type": "omega17_vl_exp_text"},
        "vision_config": {"model_type": "omega17_vl_exp_vision"},
    }
    out = models._rewrite_alias(raw, "omega17_vl_exp", "qwen3_vl_moe")
    assert out["text_config"]["model_type"] == "qwen3_vl_moe_text"
    assert out["vision_config"]["model_type"] == "qwen3_vl_moe_vision"
    assert out["architectures"] == ["Qwen3VLMoeForConditionalGeneration"]


def test_unsupported_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(models.UnsupportedModelError, match="'gpt2' is not supported"):
        models.load_config(tmp_path)


def test_every_family_is_known() -> None:
    from omega_server import tiny

    for arch in tiny.ARCHES:
        assert models.canonical_model_type(arch) in models.SUPPORTED_MODEL_TYPES


def test_dtype_and_device_choice() -> None:
    assert models.pick_device("cpu") == "cpu"
    assert models.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert models.pick_dtype("auto", "cpu") == torch.float32
    assert models.pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert models.pick_dtype("FP16", "cuda") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        models.pick_dtype("int3", "cpu")


def test_engine_dtype_and_served_name(tiny_checkpoint: Callable[[str], Path]) -> None:
    eng = Engine.load(
        EngineConfig(
            model_path=f"file://{tiny_checkpoint('llava')}",
            attn_impl="sdpa",
            dtype="bfloat16",
            served_model_name="captioner",
        )
    )
    try:
        assert eng.info.dtype == "torch.bfloat16"
        assert eng.info.served_model_name == "captioner"
        assert next(eng._loaded.model.parameters()).dtype == torch.bfloat16
    finally:
        eng.shutdown()


def test_engine_load_bad_model_path_names_it() -> None:
    with pytest.raises(models.ModelPathError, match="MODEL_PATH '/no/such/dir'"):
        Engine.load(EngineConfig(model_path="/no/such/dir"))


def test_processor_without_video_keeps_upstream_name(tiny_checkpoint: Callable[[str], Path]) -> None:
    from transformers import Qwen2VLProcessor

    sub = models.processor_class_without_video(Qwen2VLProcessor)
    assert sub.__name__ == "Qwen2VLProcessor" and issubclass(sub, Qwen2VLProcessor)
    proc = json.loads((tiny_checkpoint("qwen2_vl") / "processor_config.json").read_text())
    assert proc["processor_class"] == "Qwen2VLProcessor"
    assert not (tiny_checkpoint("qwen2_vl") / "video_preprocessor_config.json").exists()
