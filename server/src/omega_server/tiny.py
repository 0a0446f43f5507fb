"""Tiny random-weight VLM checkpoints built entirely in code (no downloads).

``python -m omega_server.tiny --arch qwen2_5_vl --out DIR`` writes a checkpoint directory that
``omega_server.models.load_model`` (and plain transformers auto classes) can load: config, random
weights (hidden size 64, 2 layers), a byte-level BPE tokenizer, an image processor config and a chat
template. Tests and the demo use these; they save, load and generate in well under a second.

The processors are built without a video processor: Qwen-VL video processors need torchvision, which
does not import beside the CPU torch used here, and the server only takes images.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from omega_server.models import MODEL_TYPE_ALIASES, SUPPORTED_MODEL_TYPES, processor_class_without_video
from omega_server.tiny_text import (
    IDEFICS3_CHAT_TEMPLATE,
    IDEFICS3_SPECIALS,
    LLAVA_CHAT_TEMPLATE,
    LLAVA_SPECIALS,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIALS,
    build_tokenizer,
)

#: Families ``--arch`` accepts. ``omega17_vl``/``omega17_vl_exp`` are Qwen3-VL(-MoE) checkpoints saved
#: under the original server's model_type and class name (loaded through the alias in ``models``).
ARCHES: tuple[str, ...] = SUPPORTED_MODEL_TYPES + tuple(MODEL_TYPE_ALIASES)

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2


def _vocab_size(tokenizer: Any) -> int:
    # Round up so the embedding has spare rows, like real checkpoints.
    return ((len(tokenizer) + 63) // 64) * 64


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [int(tokenizer.convert_tokens_to_ids(t)) for t in tokens]


def _text(tokenizer: Any, bos: int, eos: int, pad: int, **extra: Any) -> dict[str, Any]:
    """The tiny text decoder every family shares (sizes and token ids), plus ``extra``."""
    return {
        "vocab_size": _vocab_size(tokenizer),
        "hidden_size": HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 32768,  # the server refuses a MAX_MODEL_LENGTH above it
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        **extra,
    }


def _qwen_text(tokenizer: Any, **extra: Any) -> dict[str, Any]:
    eos, pad = _ids(tokenizer, "<|im_end|>", "<|endoftext|>")
    return _text(tokenizer, pad, eos, pad, **extra)


def _qwen_vision(patch_size: int, **extra: Any) -> dict[str, Any]:
    """The tiny vision tower of Qwen2.5-VL and Qwen3-VL(-MoE), plus the family's own keys."""
    return {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": HIDDEN,
        "patch_size": patch_size,
        **extra,
    }


def _qwen_ids(tokenizer: Any) -> dict[str, Any]:
    img, vid, vs, ve = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    return {
        "image_token_id": img,
        "video_token_id": vid,
        "vision_start_token_id": vs,
        "vision_end_token_id": ve,
    }


def _qwen_image_processor(patch_size: int) -> Any:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    factor = patch_size * 2
    # Small images: at most 8x8 merged tokens, so prompts stay short.
    return Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": factor * factor * 16},
    )


def _build_qwen(arch: str, out: Path) -> None:
    tokenizer = build_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    ids = _qwen_ids(tokenizer)
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

        patch = 14
        text = _qwen_text(tokenizer, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]})
        vision: dict[str, Any] = {
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": HIDDEN,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": patch,
        }
        cfg: Any = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls: Any = Qwen2VLForConditionalGeneration
        proc_cls: Any = Qwen2VLProcessor
    elif arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

        patch = 14
        text = _qwen_text(tokenizer, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3]})
        vision = _qwen_vision(patch, window_size=56, fullatt_block_indexes=[1])
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        model_cls = Qwen2_5_VLForConditionalGeneration
        proc_cls = Qwen2_5_VLProcessor
    elif arch in ("qwen3_vl", "omega17_vl", "qwen3_vl_moe", "omega17_vl_exp"):
        from transformers import (
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
            Qwen3VLMoeConfig,
            Qwen3VLMoeForConditionalGeneration,
            Qwen3VLProcessor,
        )

        moe = arch in ("qwen3_vl_moe", "omega17_vl_exp")
        experts: dict[str, Any] = (
            {
                "moe_intermediate_size": 32,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "decoder_sparse_step": 1,
            }
            if moe
            else {}
        )
        patch = 16
        text = _qwen_text(
            tokenizer,
            head_dim=16,
            **experts,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        )
        vision = _qwen_vision(patch, num_position_embeddings=64, deepstack_visual_indexes=[1])
        config_cls = Qwen3VLMoeConfig if moe else Qwen3VLConfig
        cfg = config_cls(text_config=text, vision_config=vision, **ids)
        model_cls = Qwen3VLMoeForConditionalGeneration if moe else Qwen3VLForConditionalGeneration
        proc_cls = Qwen3VLProcessor
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(arch)
    processor = processor_class_without_video(proc_cls)(
        image_processor=_qwen_image_processor(patch), tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE
    )
    _save(cfg, model_cls, processor, out)


def _build_llava(out: Path) -> None:
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = build_tokenizer(LLAVA_SPECIALS, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")
    bos, eos, pad, image = _ids(tokenizer, "<s>", "</s>", "<pad>", "<image>")
    image_size, patch = 32, 8
    text = _text(tokenizer, bos, eos, pad, model_type="llama")
    vision: dict[str, Any] = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch,
        "projection_dim": 32,
    }
    seq = (image_size // patch) ** 2
    cfg = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=image,
        image_seq_length=seq,
        vision_feature_layer=-2,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    _save(cfg, LlavaForConditionalGeneration, processor, out)


def _build_idefics3(arch: str, out: Path) -> None:
    tokenizer = build_tokenizer(
        IDEFICS3_SPECIALS, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>"
    )
    bos, eos, pad, image = _ids(tokenizer, "<|im_start|>", "<end_of_utterance>", "<|endoftext|>", "<image>")
    image_size, patch, scale = 32, 8, 2
    seq = (image_size // patch) ** 2 // (scale * scale)
    text = _text(tokenizer, bos, eos, pad, model_type="llama")
    vision: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": image_size,
        "patch_size": patch,
    }
    common = {"longest_edge": image_size * 2}
    if arch == "idefics3":
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        cfg: Any = Idefics3Config(
            text_config=text, vision_config=vision, image_token_id=image, scale_factor=scale
        )
        ip: Any = Idefics3ImageProcessorPil(
            size=common, max_image_size={"longest_edge": image_size}, do_image_splitting=True
        )
        processor: Any = Idefics3Processor(
            image_processor=ip, tokenizer=tokenizer, image_seq_len=seq, chat_template=IDEFICS3_CHAT_TEMPLATE
        )
        model_cls: Any = Idefics3ForConditionalGeneration
    else:
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMProcessor
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        cfg = SmolVLMConfig(text_config=text, vision_config=vision, image_token_id=image, scale_factor=scale)
        ip = SmolVLMImageProcessorPil(
            size=common, max_image_size={"longest_edge": image_size}, do_image_splitting=True
        )
        processor = processor_class_without_video(SmolVLMProcessor)(
            image_processor=ip,
            tokenizer=tokenizer,
            image_seq_len=seq,
            chat_template=IDEFICS3_CHAT_TEMPLATE,
        )
        model_cls = SmolVLMForConditionalGeneration
    _save(cfg, model_cls, processor, out)


def _save(cfg: Any, model_cls: Any, processor: Any, out: Path) -> None:
    torch.manual_seed(0)
    model = model_cls(cfg)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _rename_model_type(out: Path, model_type: str, architecture: str) -> None:
    """Rewrite a saved Qwen3-VL(-MoE) config under the original server's model_type and class name."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg["model_type"] = model_type
    cfg["architectures"] = [architecture]
    path.write_text(json.dumps(cfg, indent=2) + "\n")


_BUILDERS: dict[str, Callable[[Path], None]] = {
    "qwen2_vl": lambda out: _build_qwen("qwen2_vl", out),
    "qwen2_5_vl": lambda out: _build_qwen("qwen2_5_vl", out),
    "qwen3_vl": lambda out: _build_qwen("qwen3_vl", out),
    "qwen3_vl_moe": lambda out: _build_qwen("qwen3_vl_moe", out),
    "llava": _build_llava,
    "idefics3": lambda out: _build_idefics3("idefics3", out),
    "smolvlm": lambda out: _build_idefics3("smolvlm", out),
}


def build(arch: str, out: str | Path) -> Path:
    """Write a tiny random checkpoint of ``arch`` (one of ``ARCHES``) into ``out`` and return its path."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHES)}")
    path = Path(out)
    if arch == "omega17_vl":
        _BUILDERS["qwen3_vl"](path)
        _rename_model_type(path, "omega17_vl", "Omega17VLForConditionalGeneration")
    elif arch == "omega17_vl_exp":
        _BUILDERS["qwen3_vl_moe"](path)
        _rename_model_type(path, "omega17_vl_exp", "Omega17VLExpForConditionalGeneration")
    else:
        _BUILDERS[arch](path)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry: ``python -m omega_server.tiny --arch <family> --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m omega_server.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=ARCHES, help="model family")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    args = parser.parse_args(argv)
    path = build(args.arch, args.out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
