"""Model inputs: a chat's shape checked, the chat template and processor applied, prompts batched.

``check_request`` is the engine API's contract for callers that build ``GenerationRequest``s
themselves (the HTTP layer refuses all of it earlier, with its own messages). ``prepare_inputs``
applies the chat template and the processor and refuses a prompt that does not fit. ``collate`` and
``prefill_groups`` put several prepared requests into one prefill forward pass. ``ProcessorPool``
holds the copies of the processor that requests are prepared with, several at a time.
"""

from __future__ import annotations

import contextlib
import copy
import math
import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from omega_server.engine.errors import InvalidRequestError, PromptTooLongError, describe_error
from omega_server.engine.sampler import MAX_TOP_LOGPROBS
from omega_server.engine.types import GenerationRequest, PreparedRequest, SamplingParams

if TYPE_CHECKING:
    from omega_server.engine.sequence import Seq

ROLES = ("system", "user", "assistant")

# per-token inputs (batch, length): right-padded when prompts are batched; every other tensor is
# concatenated along dim 0 (image patches, grids, pixel batches), in request order
TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def check_request(req: GenerationRequest, max_images: int) -> list[Any]:
    """Check the chat shape and sampling parameters; return the images in order."""
    from PIL import Image

    p = req.params
    if not isinstance(p.max_tokens, int) or p.max_tokens < 1:
        raise InvalidRequestError(
            f"max_tokens must be a positive integer, got {p.max_tokens!r}", param="max_tokens"
        )
    if not (isinstance(p.temperature, (int, float)) and math.isfinite(p.temperature) and p.temperature >= 0):
        raise InvalidRequestError(f"temperature must be >= 0, got {p.temperature!r}", param="temperature")
    if not (isinstance(p.top_p, (int, float)) and 0 < p.top_p <= 1):
        raise InvalidRequestError(f"top_p must be in (0, 1], got {p.top_p!r}", param="top_p")
    if not (isinstance(p.top_k, int) and p.top_k >= -1):
        raise InvalidRequestError(f"top_k must be -1, 0 or positive, got {p.top_k!r}", param="top_k")
    if not (isinstance(p.min_p, (int, float)) and 0 <= p.min_p <= 1):
        raise InvalidRequestError(f"min_p must be in [0, 1], got {p.min_p!r}", param="min_p")
    if not (isinstance(p.repetition_penalty, (int, float)) and 0 < p.repetition_penalty < math.inf):
        raise InvalidRequestError(
            f"repetition_penalty must be > 0, got {p.repetition_penalty!r}", param="repetition_penalty"
        )
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(p, name)
        if not (isinstance(value, (int, float)) and -2 <= value <= 2):
            raise InvalidRequestError(f"{name} must be in [-2, 2], got {value!r}", param=name)
    if not (isinstance(p.top_logprobs, int) and 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS):
        raise InvalidRequestError(
            f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {p.top_logprobs!r}", param="top_logprobs"
        )
    if any(not isinstance(s, str) or not s for s in p.stop):
        raise InvalidRequestError("stop strings must be non-empty strings", param="stop")
    # torch.Generator.manual_seed takes [-2**63, 2**64); outside it would raise on the worker thread.
    if p.seed is not None and not (isinstance(p.seed, int) and -(2**63) <= p.seed < 2**64):
        raise InvalidRequestError(f"seed must be a 64-bit integer, got {p.seed!r}", param="seed")
    if not isinstance(req.messages, list) or not req.messages:
        raise InvalidRequestError("messages must be a non-empty list", param="messages")
    images: list[Any] = []
    has_content = False
    for i, msg in enumerate(req.messages):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES:
            role = msg.get("role") if isinstance(msg, dict) else None
            raise InvalidRequestError(
                f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                param=f"messages.{i}.role",
            )
        content = msg.get("content")
        if isinstance(content, str):
            has_content = has_content or bool(content)
            continue
        if not isinstance(content, list):
            raise InvalidRequestError(
                f"messages[{i}].content must be a list of parts", param=f"messages.{i}.content"
            )
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                has_content = has_content or bool(part["text"])
            elif kind == "image" and isinstance(part.get("image"), Image.Image):
                images.append(part["image"])
                has_content = True
            else:
                raise InvalidRequestError(
                    f"messages[{i}].content[{j}]: unsupported part type {kind!r}",
                    param=f"messages.{i}.content.{j}.type",
                )
    if not has_content:
        raise InvalidRequestError("messages have no content", param="messages")
    if len(images) > max_images:
        raise InvalidRequestError(f"too many images: {len(images)} (at most {max_images})", param="messages")
    return images


class ProcessorPool:
    """Copies of the processor, each used by one preprocessing call at a time (a tokenizer is not
    safe to share across threads): up to ``size`` requests are prepared at once, not one under a lock.
    The original stays with the engine's worker (detokenization)."""

    def __init__(self, processor: Any, size: int) -> None:
        if size < 1:
            raise ValueError("the processor pool needs at least one processor")
        self.size = size
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(size):
            self._free.put(copy.deepcopy(processor))

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        """A processor for the calling thread alone (waits while all are in use)."""
        processor = self._free.get()
        try:
            yield processor
        finally:
            self._free.put(processor)


def check_token_ids(params: SamplingParams, vocab: int) -> None:
    """Refuse token ids outside the vocabulary (``stop_token_ids``, ``logit_bias``): on the device an
    index out of range is an assert that would end the engine."""
    for name, ids in (
        ("stop_token_ids", params.stop_token_ids),
        ("logit_bias", [t for t, _ in params.logit_bias]),
    ):
        bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < vocab)]
        if bad:
            raise InvalidRequestError(
                f"{name}: token id {bad[0]!r} is not in the vocabulary (0 to {vocab - 1}).", param=name
            )


def prepare_inputs(
    processor: Any,
    req: GenerationRequest,
    images: list[Any],
    *,
    max_model_length: int,
    lock: threading.Lock | None = None,
) -> PreparedRequest:
    """Chat template + processor for one checked request (all processor outputs are kept)."""
    messages = [_normalize_message(m) for m in req.messages]
    try:
        with lock or contextlib.nullcontext():
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
            if images:
                kwargs["images"] = [_rgb(im) for im in images]
            batch = processor(**kwargs)
    except Exception as exc:
        raise InvalidRequestError(
            f"could not process the request: {describe_error(exc)}", param="messages"
        ) from exc
    inputs = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    prompt_tokens = int(inputs["input_ids"].shape[1])
    max_tokens = req.params.max_tokens
    if prompt_tokens + max_tokens > max_model_length:
        raise PromptTooLongError(
            f"the prompt has {prompt_tokens} tokens and max_tokens is {max_tokens}: {prompt_tokens + max_tokens} "
            f"is more than this model's maximum length (MAX_MODEL_LENGTH={max_model_length})",
            param="max_tokens" if prompt_tokens < max_model_length else "messages",
        )
    return PreparedRequest(inputs=inputs, prompt_tokens=prompt_tokens, params=req.params)


def _rgb(image: Any) -> Any:
    return image if image.mode == "RGB" else image.convert("RGB")


def _normalize_message(msg: dict[str, Any]) -> dict[str, Any]:
    content = msg["content"]
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    return {"role": msg["role"], "content": content}


def collate_key(inputs: dict[str, torch.Tensor]) -> tuple[Any, ...]:
    """Requests with equal keys can share a prefill: same input names and same trailing shapes."""
    return tuple(
        sorted((k, () if k in TOKEN_KEYS else tuple(v.shape[1:]), str(v.dtype)) for k, v in inputs.items())
    )


def collate(items: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of model inputs from several requests' inputs (each of batch 1), right-padded."""
    longest = max(int(x["input_ids"].shape[1]) for x in items)
    out: dict[str, torch.Tensor] = {}
    for key in items[0]:
        parts = [x[key] for x in items]
        if key in TOKEN_KEYS:
            fill = pad_id if key == "input_ids" else 0
            parts = [
                torch.cat([p, p.new_full((p.shape[0], longest - p.shape[1]), fill)], dim=1) for p in parts
            ]
        out[key] = torch.cat(parts, dim=0)
    mask = torch.cat(
        [torch.arange(longest)[None] < int(x["input_ids"].shape[1]) for x in items], dim=0
    ).long()
    out["attention_mask"] = mask
    return out


def without_full_mask(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` without an ``attention_mask`` that opens every column (a host tensor of ones).

    For flash_attention_2: transformers unpads the prompts at every layer when a 2D mask is passed
    (an index copy of the query/key/value and a host sync per layer), even when nothing is padded;
    without the mask the prefill runs the dense flash kernel, with the same result.
    """
    mask = inputs.get("attention_mask")
    if mask is None or mask.device.type != "cpu" or not bool(mask.all()):
        return inputs
    return {k: v for k, v in inputs.items() if k != "attention_mask"}


def prefill_groups(seqs: list[Seq], max_tokens: int) -> list[list[Seq]]:
    """Split admitted sequences into prefill batches: equal ``collate_key``, padded size <= max_tokens."""
    groups: list[list[Seq]] = []
    open_groups: dict[tuple[Any, ...], list[Seq]] = {}
    for seq in seqs:
        key = collate_key(seq.prepared.inputs)
        group = open_groups.get(key)
        n = int(seq.prepared.inputs["input_ids"].shape[1])
        if group is not None:
            longest = max(n, *(int(s.prepared.inputs["input_ids"].shape[1]) for s in group))
            if longest * (len(group) + 1) <= max_tokens:
                group.append(seq)
                continue
        group = [seq]
        open_groups[key] = group
        groups.append(group)
    return groups
