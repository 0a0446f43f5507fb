"""The server-sent-event frames of one streamed chat completion, written from ``protocol``'s chunk models.

Each frame is ``data: <compact JSON>`` and a blank line; a stream ends with ``data: [DONE]``. A
chunk carries exactly the fields given to it (``exclude_unset``): the first chunk's delta has the
role and empty content, later ones content only, the finish chunk an empty delta; every chunk has
``"usage": null`` when the client asked for usage (``stream_options.include_usage``), and then a last
chunk with no choices carries the token counts.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from omega_server.engine.types import TokenLogprob
from omega_server.errors import APIError, error_body
from omega_server.protocol import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    Usage,
    choice_logprobs,
    completion_id,
    now,
)

DONE = "data: [DONE]\n\n"


def error_frame(err: APIError) -> str:
    """The frame that ends a stream whose generation failed: the OpenAI error body."""
    body = error_body(err.status, err.message, err.param, err.code)
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n"


class ChunkFrames:
    """The frames of one streamed completion: one id, creation time and model name for all of them."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = completion_id()
        self.created = now()
        self.model = model
        self._usage: dict[str, Any] = {"usage": None} if include_usage else {}

    def _frame(self, choices: list[ChunkChoice], **usage: Any) -> str:
        body = ChatCompletionChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.model,
            choices=choices,
            **usage,
        )
        return f"data: {body.model_dump_json(exclude_unset=True)}\n\n"

    def _chunk(
        self,
        delta: Delta,
        finish: Literal["stop", "length"] | None = None,
        logprobs: list[TokenLogprob] | None = None,
        index: int = 0,
    ) -> str:
        lp = choice_logprobs(logprobs) if logprobs else None
        choice = ChunkChoice(index=index, delta=delta, logprobs=lp, finish_reason=finish)
        return self._frame([choice], **self._usage)

    def role(self, index: int = 0) -> str:
        """The first chunk of choice ``index``: the assistant role, no content yet."""
        return self._chunk(Delta(role="assistant", content=""), index=index)

    def content(self, text: str, logprobs: list[TokenLogprob] | None = None, index: int = 0) -> str:
        """A chunk of generated text, with its tokens' log-probabilities when they were asked for."""
        return self._chunk(Delta(content=text), logprobs=logprobs, index=index)

    def finish(self, reason: Literal["stop", "length"], index: int = 0) -> str:
        """The chunk that says why choice ``index`` ended."""
        return self._chunk(Delta(), reason, index=index)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        """The last chunk when usage was asked for: no choices, the token counts."""
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        return self._frame([], usage=usage)
