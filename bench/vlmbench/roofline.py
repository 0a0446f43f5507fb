"""The decode roofline: bytes one decode step must read from GPU memory, over the memory bandwidth.

One decode step for B running sequences reads every language-model weight it touches once (the
vision tower not at all, the embedding table only B rows, a mixture-of-experts layer only the
experts its B tokens route to) plus each sequence's KV cache. ``B * bandwidth / bytes`` is the most
output tokens/s any engine can reach at batch B; compute is ignored (it is far from binding at these
batch sizes for the bytes counted here). Pure functions; the parameter split reads only names and sizes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: H100 SXM5 80GB HBM3 datasheet memory bandwidth (issue 7 uses it for the roofline).
H100_BANDWIDTH_BYTES_PER_S = 3.35e12


@dataclass(frozen=True)
class ParamBytes:
    """Model weights split by how a decode step reads them (bytes)."""

    dense: int  # read in full every step: attention, norms, routers, dense MLPs, lm_head
    experts: int  # all routed-expert weights together (read: only the experts hit)
    embedding: int  # input embedding table (read: one row per token)
    vision: int  # vision tower (not read while decoding)

    @property
    def total(self) -> int:
        """All weight bytes."""
        return self.dense + self.experts + self.embedding + self.vision


def classify(name: str) -> str:
    """Which part of ``ParamBytes`` a parameter (by its module path) belongs to."""
    parts = name.split(".")
    if "visual" in parts or "vision_tower" in parts or "vision_model" in parts:
        return "vision"
    if "embed_tokens" in parts:
        return "embedding"
    if "experts" in parts and "shared_expert" not in parts:
        return "experts"
    return "dense"


def split_params(params: Iterable[tuple[str, int]]) -> ParamBytes:
    """Sum ``(name, bytes)`` pairs (e.g. from ``named_parameters``) into a ``ParamBytes``."""
    sums = {"dense": 0, "experts": 0, "embedding": 0, "vision": 0}
    for name, nbytes in params:
        sums[classify(name)] += int(nbytes)
    return ParamBytes(**sums)


def model_param_bytes(model: object) -> ParamBytes:
    """``split_params`` over a torch module's parameters (shared/tied tensors counted once)."""
    named = model.named_parameters()  # type: ignore[attr-defined]
    return split_params((n, p.numel() * p.element_size()) for n, p in named)


def expected_experts_hit(num_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts one layer reads for ``tokens`` tokens, routing uniform at random."""
    if num_experts <= 0 or top_k <= 0 or tokens <= 0:
        return 0.0
    miss = (num_experts - min(top_k, num_experts)) / num_experts
    return num_experts * (1.0 - miss**tokens)


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    """K and V of one token over all layers."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def decode_step_bytes(
    weights: ParamBytes,
    *,
    batch: int,
    context_tokens: float,
    kv_per_token: int,
    hidden_size: int,
    num_experts: int = 0,
    top_k: int = 0,
    dtype_bytes: int = 2,
) -> float:
    """Bytes one decode step reads for ``batch`` sequences of ``context_tokens`` cached tokens each."""
    experts = 0.0
    if weights.experts and num_experts:
        experts = weights.experts * expected_experts_hit(num_experts, top_k, batch) / num_experts
    embedding_rows = batch * hidden_size * dtype_bytes
    kv = batch * context_tokens * kv_per_token
    return weights.dense + experts + embedding_rows + kv


def roofline_tokens_per_s(
    weights: ParamBytes,
    *,
    batch: int,
    context_tokens: float,
    kv_per_token: int,
    hidden_size: int,
    num_experts: int = 0,
    top_k: int = 0,
    bandwidth: float = H100_BANDWIDTH_BYTES_PER_S,
) -> float:
    """Output tokens/s at batch ``batch`` if every step only had to read its bytes at ``bandwidth``."""
    step = decode_step_bytes(
        weights,
        batch=batch,
        context_tokens=context_tokens,
        kv_per_token=kv_per_token,
        hidden_size=hidden_size,
        num_experts=num_experts,
        top_k=top_k,
    )
    return batch * bandwidth / step


def mean_decode_context(prompt_tokens: int, output_tokens: int) -> float:
    """Average cached tokens per sequence over a decode of ``output_tokens`` after ``prompt_tokens``."""
    return prompt_tokens + output_tokens / 2.0
