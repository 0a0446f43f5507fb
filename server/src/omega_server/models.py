"""Model and processor loading: MODEL_PATH resolution, model-type aliases, dtype/device choice.

Everything goes through transformers' auto classes for image-text-to-text models. Checkpoints of the
original Omega server (``model_type`` ``omega17_vl`` / ``omega17_vl_exp``, class
``Omega17VLExpForConditionalGeneration``) are Qwen3-VL / Qwen3-VL-MoE checkpoints under another name:
they load with upstream transformers by rewriting the config in memory (no dependency on forks).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

log = logging.getLogger(__name__)

#: Families the server supports, by the ``model_type`` in config.json (after aliasing).
SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "llava",
    "idefics3",
    "smolvlm",
)

#: model_type aliases: the original server's names -> upstream transformers model types.
MODEL_TYPE_ALIASES: dict[str, str] = {
    "omega17_vl": "qwen3_vl",
    "omega17_vl_exp": "qwen3_vl_moe",
}

#: Architecture (class name) aliases, for checkpoints whose config names only the class.
ARCHITECTURE_ALIASES: dict[str, str] = {
    "Omega17VLForConditionalGeneration": "Qwen3VLForConditionalGeneration",
    "Omega17VLExpForConditionalGeneration": "Qwen3VLMoeForConditionalGeneration",
}

_ARCH_TO_TYPE: dict[str, str] = {
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "Qwen3VLMoeForConditionalGeneration": "qwen3_vl_moe",
}

#: Processor class used for an aliased model type when the checkpoint names a fork's processor class.
_ALIAS_PROCESSORS: dict[str, str] = {"qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor"}

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


class ModelPathError(RuntimeError):
    """MODEL_PATH cannot be resolved to a checkpoint directory (message names MODEL_PATH)."""


class UnsupportedModelError(RuntimeError):
    """The checkpoint's model type is not one of the supported families."""


@dataclass(frozen=True)
class LoadedModel:
    """A model with its processor and what was decided while loading it."""

    model: Any
    processor: Any
    path: Path
    model_type: str  # as the checkpoint declares it (e.g. omega17_vl_exp)
    resolved_model_type: str  # the upstream type it loaded as (e.g. qwen3_vl_moe)
    dtype: torch.dtype
    devices: list[str]


# --------------------------------------------------------------------------- MODEL_PATH


def resolve_model_path(model_path: str, *, cache_dir: str | None = None) -> Path:
    """Turn MODEL_PATH (a directory, ``file:///dir`` or ``hf://org/name[@rev]``) into a local directory.

    ``hf://`` downloads a snapshot when there is network; any failure becomes a ModelPathError that
    names MODEL_PATH, so the server can print one clear fatal line.
    """
    if not model_path:
        raise ModelPathError("MODEL_PATH is empty")
    if model_path.startswith("hf://"):
        from omega_server.download import DownloadError, parse_hf_uri

        try:
            hub = parse_hf_uri(model_path)
        except DownloadError as exc:
            raise ModelPathError(str(exc)) from None
        repo_id, revision = hub.repo_id, hub.revision or ""
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(repo_id=repo_id, revision=revision or None, cache_dir=cache_dir)
        except Exception as exc:
            raise ModelPathError(
                f"MODEL_PATH {model_path!r}: cannot download {repo_id}"
                f"{'@' + revision if revision else ''}: {type(exc).__name__}: {exc}"
            ) from exc
        path = Path(local)
    elif model_path.startswith("file://"):
        parsed = urlparse(model_path)
        if parsed.netloc not in ("", "localhost"):
            raise ModelPathError(f"MODEL_PATH {model_path!r}: file:// URLs must be local (file:///dir)")
        path = Path(unquote(parsed.path))
    elif "://" in model_path:
        scheme = model_path.split("://", 1)[0]
        raise ModelPathError(
            f"MODEL_PATH {model_path!r}: unsupported scheme {scheme!r} (use a directory, file:///dir or hf://org/name)"
        )
    else:
        path = Path(model_path)
    if not path.is_dir():
        raise ModelPathError(f"MODEL_PATH {model_path!r}: {path} is not a directory")
    if not (path / "config.json").is_file():
        raise ModelPathError(f"MODEL_PATH {model_path!r}: no config.json in {path}")
    return path


# --------------------------------------------------------------------------- config + aliases


def _rewrite_alias(obj: Any, src: str, dst: str) -> Any:
    """Replace the aliased model_type (and its ``_text``/``_vision`` sub-types) throughout a config dict."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            if key == "model_type" and isinstance(value, str) and value.startswith(src):
                out[key] = dst + value[len(src) :]
            elif key == "architectures" and isinstance(value, list):
                out[key] = [ARCHITECTURE_ALIASES.get(v, v) for v in value]
            else:
                out[key] = _rewrite_alias(value, src, dst)
        return out
    if isinstance(obj, list):
        return [_rewrite_alias(v, src, dst) for v in obj]
    return obj


def canonical_model_type(model_type: str, architectures: list[str] | None = None) -> str:
    """Upstream model_type for a declared model_type (and architectures), applying the aliases."""
    if model_type in MODEL_TYPE_ALIASES:
        return MODEL_TYPE_ALIASES[model_type]
    for arch in architectures or []:
        target = ARCHITECTURE_ALIASES.get(arch)
        if target is not None and model_type not in SUPPORTED_MODEL_TYPES:
            return _ARCH_TO_TYPE[target]
    return model_type


def load_config(path: Path) -> tuple[Any, str, str]:
    """Load config.json, applying aliases. Returns (config, declared_type, upstream_type)."""
    from transformers import CONFIG_MAPPING, AutoConfig

    raw = json.loads((path / "config.json").read_text())
    declared = str(raw.get("model_type", ""))
    target = canonical_model_type(declared, raw.get("architectures"))
    if target not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model_type {declared!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES + tuple(MODEL_TYPE_ALIASES))}"
        )
    if target != declared:
        rewritten = _rewrite_alias(raw, declared, target)
        rewritten["model_type"] = target
        config = CONFIG_MAPPING[target].from_dict(rewritten)
    else:
        config = AutoConfig.from_pretrained(path)
    return config, declared, target


# --------------------------------------------------------------------------- processor


def processor_class_without_video(cls: type) -> type:
    """A subclass of a processor class that takes no video processor.

    Qwen-VL / SmolVLM processors require a video processor, and video processors need torchvision,
    which may not import (DESIGN.md section 4). The server only takes images, so the subclass drops
    the ``video_processor`` argument; ProcessorMixin then neither loads nor saves one. The subclass
    keeps the class name, so saved checkpoints name the upstream processor class.
    """
    import inspect

    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    if "video_processor" not in params:
        return cls
    # from_pretrained() matches saved settings against the __init__ signature, so the subclass's
    # __init__ lists the parent's parameters (minus video_processor) by name.
    names = [
        p.name
        for p in params.values()
        if p.name not in ("self", "video_processor")
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    defaults = {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in params.values()
        if p.name in names
    }
    src = (
        "def __init__(self, "
        + "".join(f"{n}=_defaults[{n!r}], " for n in names)
        + "**kwargs):\n"
        + "    kwargs.pop('video_processor', None)\n"
        + "    _parent.__init__(self, "
        + "".join(f"{n}={n}, " for n in names)
        + "video_processor=None, **kwargs)\n"
    )
    namespace: dict[str, Any] = {"_defaults": defaults, "_parent": cls}
    exec(src, namespace)  # a generated signature; the inputs are parameter names of a transformers class
    attrs = {"__init__": namespace["__init__"], "__module__": cls.__module__, "video_processor": _NoVideo()}
    return type(cls.__name__, (cls,), attrs)


class _NoVideo:
    """Stands in for the missing video processor where processors read its defaults (SmolVLM)."""

    num_frames = None
    fps = None
    merge_size = 2

    def __repr__(self) -> str:
        return "NoVideoProcessor()"


def _processor_class_name(path: Path, model_type: str) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json"):
        file = path / name
        if file.is_file():
            value = json.loads(file.read_text()).get("processor_class")
            if isinstance(value, str):
                return value
    return None


def _expose_pil_image_processor(model_type: str) -> None:
    """Let the auto classes find a family's PIL image processor when torchvision is missing.

    transformers 5.17 (the locked release, the accelerator machine's) declares some PIL image
    processors (Idefics3's, SmolVLM's) as needing torchvision, so its lazy module hands the auto
    classes a placeholder and ``AutoProcessor`` refuses the checkpoint, although the PIL module itself
    imports and runs without torchvision. The real class is put on the family's module, where the
    auto classes look it up. Nothing happens when torchvision is installed or the family has no PIL
    processor.
    """
    import importlib

    from transformers.utils import is_torchvision_available

    if is_torchvision_available():
        return
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    pil_name = (IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {}).get("pil")
    if not isinstance(pil_name, str):
        return
    module_name = model_type_to_module_name(model_type)
    try:
        family = importlib.import_module(f"transformers.models.{module_name}")
        pil_module = importlib.import_module(
            f"transformers.models.{module_name}.image_processing_pil_{module_name}"
        )
        real = getattr(pil_module, pil_name)
    except (ImportError, AttributeError):
        return
    if isinstance(real, type) and not getattr(real, "is_dummy", False):
        setattr(family, pil_name, real)


def load_processor(path: Path, model_type: str) -> Any:
    """Load the checkpoint's processor; without a video processor when that cannot load.

    ``model_type`` is the upstream (aliased) type: it picks the processor class when the checkpoint
    names one upstream transformers does not have (the original server's fork).
    """
    import transformers
    from transformers import AutoProcessor

    _expose_pil_image_processor(model_type)
    name = _processor_class_name(path, model_type)
    aliased = name is not None and not hasattr(transformers, name)
    if aliased:
        name = _ALIAS_PROCESSORS.get(model_type)
    first_error: Exception | None = None
    if not aliased:
        try:
            return AutoProcessor.from_pretrained(path)
        except Exception as exc:  # video processor / torchvision trouble: retry without video below
            first_error = exc
    if name is None:
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

        name = PROCESSOR_MAPPING_NAMES.get(model_type)
    if name is None or not hasattr(transformers, name):
        raise RuntimeError(f"no processor for model_type {model_type!r} in {path}") from first_error
    cls = processor_class_without_video(getattr(transformers, name))
    try:
        return cls.from_pretrained(path)  # type: ignore[attr-defined]
    except Exception as exc:
        if first_error is not None:
            raise exc from first_error
        raise


# --------------------------------------------------------------------------- dtype / device


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else is taken as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU that supports it (float16 otherwise), float32 on CPU."""
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(sorted(set(DTYPES)))}") from None


def model_devices(model: Any) -> list[str]:
    """The devices the model's parameters live on, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"]``."""
    seen: list[str] = []
    for param in model.parameters():
        dev = str(param.device)
        if dev not in seen:
            seen.append(dev)
    return seen or ["cpu"]


def device_names(devices: list[str]) -> list[str]:
    """Human names of the devices (``NVIDIA H100 80GB HBM3``; ``cpu`` for the CPU)."""
    names = []
    for dev in devices:
        if dev.startswith("cuda"):
            index = torch.device(dev).index or 0
            names.append(torch.cuda.get_device_name(index))
        else:
            names.append(dev)
    return names


# --------------------------------------------------------------------------- the model


def load_model(
    path: Path,
    *,
    attn_implementation: str,
    dtype: torch.dtype,
    device: str,
    config: Any | None = None,
) -> Any:
    """Load the model through ``AutoModelForImageTextToText`` with the given attention backend.

    On CUDA with more than one visible GPU, GPU 0 is filled first and the next GPUs take only what does
    not fit (``device_map="sequential"``), so a model that fits one GPU stays on one.
    Raises what transformers raises (ImportError/ValueError for an unavailable backend).
    """
    from transformers import AutoModelForImageTextToText

    if config is None:
        config, _, _ = load_config(path)
    kwargs: dict[str, Any] = {"config": config, "dtype": dtype, "attn_implementation": attn_implementation}
    if device == "cuda" and torch.cuda.device_count() > 1:
        kwargs["device_map"] = "sequential"
    elif device != "cpu":
        kwargs["device_map"] = device if device != "cuda" else "cuda:0"
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    model.eval()
    return model


def load(path: Path, *, attn_implementation: str, dtype: str = "auto", device: str = "auto") -> LoadedModel:
    """Load model + processor from a resolved checkpoint directory (no attention fallback here)."""
    config, declared, target = load_config(path)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    processor = load_processor(path, target)
    model = load_model(
        path, attn_implementation=attn_implementation, dtype=torch_dtype, device=dev, config=config
    )
    return LoadedModel(
        model=model,
        processor=processor,
        path=path,
        model_type=declared,
        resolved_model_type=target,
        dtype=torch_dtype,
        devices=model_devices(model),
    )
