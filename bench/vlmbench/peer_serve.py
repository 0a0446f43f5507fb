"""``transformers serve`` (transformers' OpenAI-compatible server) as a peer over HTTP, on the standard
workload (the same image, prompt tokens and request bodies as ours), through the same client.

``transformers serve MODEL`` loads its model with ``from_pretrained`` from a hub id or a local path: it
cannot serve random weights without a checkpoint on disk, and writing one is out of reach here (62 GB
for the Omega shape on a 64 GiB disk). So the bench runs the same server in this process: the CLI's own
``Serve`` class (the app, its handlers, uvicorn; ``--continuous-batching`` on) with the random-weight
model put in its model manager's cache under the served name, which is what its loader would have put
there. Everything after loading (request parsing, chat template, image loading, generation, SSE) is
transformers' own code.

What transformers 5.17 does with a VLM: ``GenerationState.use_continuous_batching`` allows continuous
batching for text-only models only, so a VLM is served by ``model.generate()`` one request at a time
(the row's ``decode_path`` says ``sequential generate()``); concurrent requests queue. A cell therefore
caps each request at ``peer_serve_tokens`` output tokens and has the cell's time limit.
Needs fastapi, uvicorn, pydantic and openai (``transformers.utils.is_serve_available``; openai 3.x also
imports httpx2); without them the cell is a row that says why.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from bench.vlmbench import roofline, shapes
from bench.vlmbench.context import RunContext, reset_peak
from bench.vlmbench.standard import error_row, log_row, standard_scenario
from bench.vlmbench.workload import engine_messages, filler_text, fit_text_chars, noise_image


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TransformersServe:
    """The ``transformers serve`` app serving ``model`` as ``name`` on 127.0.0.1, in a thread."""

    def __init__(
        self, model: Any, processor: Any, name: str, cb_config: dict[str, Any] | None = None
    ) -> None:
        from transformers.cli.serve import Serve
        from transformers.cli.serving.model_manager import TimedModel

        self.port = _free_port()
        cb = {
            f"cb_{k}": v
            for k, v in (cb_config or {}).items()
            if k in ("num_blocks", "max_batch_tokens", "block_size")
        }
        self.serve = Serve(
            continuous_batching=True,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            non_blocking=True,
            **cb,
        )
        manager = self.serve._model_manager
        manager.loaded_models[manager.process_model_name(name)] = TimedModel(
            model, timeout_seconds=-1, processor=processor
        )

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until ``GET /health`` answers 200."""
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"transformers serve at {self.url} did not become ready in {timeout_s} s")

    def stop(self) -> None:
        """Stop the server (its model manager drops its reference to the model)."""
        self.serve.kill_server()
        thread = getattr(self.serve, "_thread", None)
        if thread is not None:
            thread.join(timeout=30)


def serve_unavailable() -> str | None:
    """Why transformers serve cannot run here, or None."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        return "skipped: transformers serve needs fastapi, uvicorn, pydantic and openai (is_serve_available() is False)"
    return None


def fit_chars(processor: Any, image_size: int, prompt_tokens: int) -> int:
    """Filler characters that make the standard prompt exactly ``prompt_tokens`` by the processor's count."""
    image = noise_image(image_size, 0)

    def count(chars: int) -> int:
        chat = engine_messages(image, filler_text(chars))
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return int(processor(text=[text], images=[image], return_tensors="pt")["input_ids"].shape[1])

    return fit_text_chars(count, prompt_tokens)


def run_serve(ctx: RunContext, shape: shapes.ModelShape, model: Any, weights: roofline.ParamBytes) -> None:
    """The transformers-serve cells: a warm request, then one cell per ``peer_serve_concurrency``."""
    from bench.vlmbench.http_driver import http_cell
    from bench.vlmbench.peer import peer_row

    cfg = ctx.cfg
    tag = f"[{shape.name}/serve]"
    tokens = min(cfg.peer_serve_tokens, cfg.workload.output_tokens)
    base = {
        "peer": "transformers serve",
        "peer_tokens": tokens,
        "decode_path": "serve: sequential generate()",
    }
    reason = serve_unavailable()
    if reason is not None:
        cfg.log(f"{tag} {reason}")
        for conc in cfg.peer_serve_concurrency:
            ctx.add(
                error_row(
                    ctx, shape.name, "default", "peer_http", conc, {"scenario": "standard", **base}, reason
                )
            )
        return
    processor = shapes.build_processor(shape, shapes.build_tokenizer(shape.vocab_size))
    scenario = standard_scenario(
        cfg.workload, fit_chars(processor, cfg.workload.image_size, cfg.workload.prompt_tokens)
    )
    server: TransformersServe | None = None
    try:
        server = TransformersServe(model, processor, shape.name, cfg.peer_cb_config)
        server.wait_ready()
        http_cell(
            server.url,
            model=shape.name,
            scenario=scenario,
            concurrency=1,
            time_limit_s=120,
            seed=ctx.seeds(1),
            max_tokens=4,
            warm_up_path="/health",
        )
        for conc in cfg.peer_serve_concurrency:
            remaining = ctx.clock.remaining()
            if remaining < 20:
                cfg.log(f"{tag} c={conc}: skipped, out of time")
                continue
            limit = min(cfg.cell_time_limit_s, remaining - 10)
            reset_peak()
            timings, _ = http_cell(
                server.url,
                model=shape.name,
                scenario=scenario,
                concurrency=conc,
                time_limit_s=limit,
                seed=ctx.seeds(conc),
                max_tokens=tokens,
                warm_up_path="/health",
            )
            fields = {**base, "attn": str(model.config._attn_implementation), "time_limit_s": round(limit, 1)}
            log_row(cfg.log, tag, ctx.add(peer_row(ctx, shape, "peer_http", conc, timings, weights, fields)))
    except Exception as exc:
        cfg.log(f"{tag} failed: {type(exc).__name__}: {exc}")
        ctx.add(error_row(ctx, shape.name, "default", "peer_http", 1, {"scenario": "standard", **base}, exc))
    finally:
        if server is not None:
            server.stop()
