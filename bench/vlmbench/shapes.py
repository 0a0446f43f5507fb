"""Model shapes, their tokenizer and processor, a weightless checkpoint, and random weights on the device.

Real sizes without downloads: a shape is a transformers config (the published sizes of the model),
a byte-level tokenizer built in code whose vocabulary fills the model's whole vocabulary (so every
generated id decodes to text, as with a real tokenizer), and a Qwen-VL processor with the real image
settings. ``write_checkpoint`` saves config + processor only (a few MB); ``random_weights`` makes the
server's loader build the weights on the device from that config (``from_config`` under
``torch.device``), so ``Engine.load(EngineConfig(model_path=...))`` runs the server's own loading
path (model-type aliases, processor, attention choice with flash -> sdpa fallback, warm-up) without
writing or reading 17-62 GB of weights.

The lm_head rows of the special tokens (EOS, pad, vision markers) are zeroed, so greedy decoding of
the random model never emits them: every request runs to max_tokens (EOS ignored) through any
driver, HTTP included, and every token carries text.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omega_server import tiny_text
from omega_server.models import processor_class_without_video

SPECIALS: tuple[str, ...] = tuple(tiny_text.QWEN_SPECIALS)
EOS = "<|im_end|>"
PAD = "<|endoftext|>"


@dataclass(frozen=True)
class ModelShape:
    """A model architecture at a given size (a transformers config, minus the token ids)."""

    name: str  # the bench's name for it (rows' ``model``)
    family: str  # upstream model_type: qwen2_5_vl | qwen3_vl_moe
    text: dict[str, Any]
    vision: dict[str, Any]
    vocab_size: int
    patch_size: int
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    #: model_type / architecture written into config.json (the original server's names load via aliases)
    declared: tuple[str, str] | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_moe(self) -> bool:
        """True for mixture-of-experts text models."""
        return "num_experts" in self.text

    @property
    def num_layers(self) -> int:
        """Text decoder layers."""
        return int(self.text["num_hidden_layers"])

    @property
    def kv_heads(self) -> int:
        """Key/value heads per layer."""
        return int(self.text["num_key_value_heads"])

    @property
    def head_dim(self) -> int:
        """Attention head size."""
        return int(self.text.get("head_dim") or self.text["hidden_size"] // self.text["num_attention_heads"])

    @property
    def hidden_size(self) -> int:
        """Text hidden size."""
        return int(self.text["hidden_size"])


_QWEN3_VL_ROPE = {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True}

#: Omega17VLExp = Qwen3-VL-MoE at Qwen3-VL-30B-A3B's sizes: 48 layers, hidden 2048, 128 experts / 8
#: active, vision depth 27; ~31.1B parameters, ~3B active. Saved under the original server's
#: model_type (omega17_vl_exp), so the server loads it through its alias, as it would the real thing.
OMEGA17_VL_EXP = ModelShape(
    name="omega17_vl_exp",
    family="qwen3_vl_moe",
    text={
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_hidden_layers": 48,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "decoder_sparse_step": 1,
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "rope_parameters": {**_QWEN3_VL_ROPE, "rope_theta": 5000000.0},
    },
    vision={
        "depth": 27,
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [8, 16, 24],
        "hidden_act": "gelu_pytorch_tanh",
    },
    vocab_size=151936,
    patch_size=16,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    declared=("omega17_vl_exp", "Omega17VLExpForConditionalGeneration"),
    notes="Qwen3-VL-MoE, Qwen3-VL-30B-A3B sizes",
)

#: Qwen2.5-VL-7B-Instruct's sizes (~8.3B parameters).
QWEN2_5_VL_7B = ModelShape(
    name="qwen2_5_vl_7b",
    family="qwen2_5_vl",
    text={
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
    },
    vision={
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    vocab_size=152064,
    patch_size=14,
    notes="Qwen2.5-VL-7B-Instruct sizes",
)

# Tiny shapes of the same two architectures, for the CPU tests of the harness.
TINY_QWEN3_VL_MOE = ModelShape(
    name="tiny_qwen3_vl_moe",
    family="qwen3_vl_moe",
    text={
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "decoder_sparse_step": 1,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
    },
    vision={
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 16,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": [1],
    },
    vocab_size=1024,
    patch_size=16,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    declared=("omega17_vl_exp", "Omega17VLExpForConditionalGeneration"),
)
TINY_QWEN2_5_VL = ModelShape(
    name="tiny_qwen2_5_vl",
    family="qwen2_5_vl",
    text={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3]},
    },
    vision={
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "window_size": 56,
        "fullatt_block_indexes": [1],
    },
    vocab_size=1024,
    patch_size=14,
)

SHAPES: dict[str, ModelShape] = {
    s.name: s for s in (OMEGA17_VL_EXP, QWEN2_5_VL_7B, TINY_QWEN3_VL_MOE, TINY_QWEN2_5_VL)
}


def get_shape(name: str) -> ModelShape:
    """The shape called ``name``; ValueError listing the known ones otherwise."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"unknown model shape {name!r}; choose one of {', '.join(SHAPES)}") from None


# --------------------------------------------------------------------------- tokenizer + processor


def word_vocab(size: int) -> dict[str, int]:
    """``size`` BPE vocabulary entries: the 256 byte symbols, then 2-, 3-, 4-letter ASCII words.

    No merges are defined, so text still tokenizes to one token per byte (prompt lengths are exact),
    while every id decodes to one to four printable characters.
    """
    vocab = dict(tiny_text.byte_vocab())
    if size < len(vocab):
        raise ValueError(f"a vocabulary needs at least {len(vocab)} entries, got {size}")
    letters = string.ascii_letters
    for length in itertools.count(2):
        for combo in itertools.product(letters, repeat=length):
            if len(vocab) >= size:
                return vocab
            vocab["".join(combo)] = len(vocab)
    raise AssertionError("unreachable")  # pragma: no cover


def build_tokenizer(vocab_size: int) -> Any:
    """A fast tokenizer whose ids fill ``vocab_size`` exactly; the Qwen special tokens take the last ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=word_vocab(vocab_size - len(SPECIALS)), merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    fast.add_special_tokens({"additional_special_tokens": [s for s in SPECIALS if s not in (EOS, PAD)]})
    fast.add_tokens(list(SPECIALS), special_tokens=True)
    if len(fast) != vocab_size:
        raise AssertionError(f"tokenizer has {len(fast)} ids, expected {vocab_size}")
    return fast


def special_ids(tokenizer: Any) -> dict[str, int]:
    """Token ids the model config needs."""

    def tid(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    return {
        "image_token_id": tid("<|image_pad|>"),
        "video_token_id": tid("<|video_pad|>"),
        "vision_start_token_id": tid("<|vision_start|>"),
        "vision_end_token_id": tid("<|vision_end|>"),
        "eos_token_id": tid(EOS),
        "pad_token_id": tid(PAD),
    }


def build_config(shape: ModelShape, tokenizer: Any) -> Any:
    """The transformers config of ``shape`` with this tokenizer's special ids."""
    ids = special_ids(tokenizer)
    text = {
        **shape.text,
        "vocab_size": shape.vocab_size,
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
        "bos_token_id": ids["pad_token_id"],
    }
    top: dict[str, Any] = {k: v for k, v in ids.items() if k not in ("eos_token_id", "pad_token_id")}
    if shape.family == "qwen3_vl_moe":
        from transformers import Qwen3VLMoeConfig

        return Qwen3VLMoeConfig(text_config=text, vision_config=shape.vision, **top)
    if shape.family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(text_config=text, vision_config=shape.vision, **top)
    raise ValueError(f"unsupported family {shape.family!r}")


def build_processor(shape: ModelShape, tokenizer: Any) -> Any:
    """The family's processor (no video processor) with the real image settings (448x448 -> 448x448)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    factor = shape.patch_size * 2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=shape.patch_size,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": factor * factor * 1280},
        image_mean=list(shape.image_mean),
        image_std=list(shape.image_std),
    )
    if shape.family == "qwen3_vl_moe":
        from transformers import Qwen3VLProcessor as proc_cls
    else:
        from transformers import Qwen2_5_VLProcessor as proc_cls  # type: ignore[assignment]
    return processor_class_without_video(proc_cls)(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tiny_text.QWEN_CHAT_TEMPLATE
    )


def write_checkpoint(shape: ModelShape, out: str | Path) -> Path:
    """Write config.json + tokenizer + processor (no weights) for ``shape`` into ``out``."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(shape.vocab_size)
    config = build_config(shape, tokenizer)
    config.save_pretrained(path)
    build_processor(shape, tokenizer).save_pretrained(path)
    if shape.declared is not None:
        model_type, architecture = shape.declared
        cfg_file = path / "config.json"
        raw = json.loads(cfg_file.read_text())
        raw["model_type"] = model_type
        raw["architectures"] = [architecture]
        cfg_file.write_text(json.dumps(raw, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- random weights


def silenced_token_ids(config: Any) -> list[int]:
    """Ids whose lm_head rows are zeroed: the special tokens (the last ids of the vocabulary)."""
    text = getattr(config, "text_config", config)
    ids = [
        getattr(config, name, None)
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    ]
    ids += [getattr(text, name, None) for name in ("eos_token_id", "pad_token_id", "bos_token_id")]
    flat = [i for i in ids if isinstance(i, int)]
    vocab = int(text.vocab_size)
    return sorted(set(range(min(flat), vocab))) if flat else []


def silence_special_tokens(model: Any) -> None:
    """Zero the lm_head rows of the special tokens, so greedy decoding never picks them."""
    import torch

    head = model.get_output_embeddings()
    ids = silenced_token_ids(model.config)
    if head is not None and ids:
        with torch.no_grad():
            head.weight[ids[0] : ids[-1] + 1] = 0


@dataclass
class BuiltModels:
    """The models the patched loader built (the last is the one in use)."""

    models: list[Any] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def last(self) -> Any:
        """The most recently built model."""
        return self.models[-1]

    def clear(self) -> None:
        """Drop the references (so the GPU memory can be freed)."""
        self.models.clear()


@contextlib.contextmanager
def random_weights(seed: int = 0, on_build: Callable[[Any], None] | None = None) -> Iterator[BuiltModels]:
    """While active, the server's ``models.load_model`` builds random weights on the device instead of
    reading a checkpoint's weights (config, processor and everything else load as usual)."""
    import time

    import torch
    from omega_server import models

    built = BuiltModels()
    original = models.load_model

    def load_model(
        path: Path, *, attn_implementation: str, dtype: Any, device: str, config: Any | None = None
    ) -> Any:
        from transformers import AutoModelForImageTextToText

        if config is None:
            config, _, _ = models.load_config(path)
        target = "cuda:0" if device == "cuda" else device
        started = time.perf_counter()
        torch.manual_seed(seed)
        with torch.device(target):
            model = AutoModelForImageTextToText.from_config(
                config, dtype=dtype, attn_implementation=attn_implementation
            )
        model.eval()
        silence_special_tokens(model)
        if target.startswith("cuda"):
            torch.cuda.synchronize()
        built.models.append(model)
        built.seconds.append(time.perf_counter() - started)
        if on_build is not None:
            on_build(model)
        return model

    models.load_model = load_model  # type: ignore[assignment]
    try:
        yield built
    finally:
        models.load_model = original  # type: ignore[assignment]
