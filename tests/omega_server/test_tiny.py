"""The tiny checkpoints: every family builds, reloads through the server's loader and generates with an image."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omega_server import models, tiny
from PIL import Image


@pytest.mark.parametrize("arch", tiny.ARCHES)
def test_tiny_checkpoint_loads_and_generates_with_image(
    arch: str, tiny_checkpoint: Callable[[str], Path]
) -> None:
    path = tiny_checkpoint(arch)
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "processor_config.json",
        "chat_template.jinja",
    ):
        assert (path / name).is_file(), name
    loaded = models.load(path, attn_implementation="sdpa", device="cpu")
    assert loaded.model_type == arch
    assert loaded.model.config.text_config.hidden_size == tiny.HIDDEN
    assert loaded.model.config.text_config.num_hidden_layers == tiny.LAYERS
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "hi"}]}
    ]
    text = loaded.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = loaded.processor(text=[text], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    new_tokens = out.shape[1] - inputs["input_ids"].shape[1]
    assert 1 <= new_tokens <= 4


def test_cli_writes_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-m", "omega_server.tiny", "--arch", "llava", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"


def test_cli_rejects_unknown_arch(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "omega_server.tiny", "--arch", "gpt2", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "invalid choice" in proc.stderr


def test_omega_alias_checkpoints_declare_original_names(tiny_checkpoint: Callable[[str], Path]) -> None:
    cfg = json.loads((tiny_checkpoint("omega17_vl_exp") / "config.json").read_text())
    assert cfg["model_type"] == "omega17_vl_exp"
    assert cfg["architectures"] == ["Omega17VLExpForConditionalGeneration"]
