"""The text of one sequence as its tokens arrive: incremental detokenization, stop strings, finish.

``IncrementalText.add(token)`` returns the text to send now and the finish reason, if any. Text is
decoded over a short window of tokens (prefix/read offsets), so the cost per token does not grow
with the output; bytes of a character split over tokens wait for the rest (a trailing U+FFFD means
the character is incomplete). An EOS token or one of the request's ``stop_token_ids`` ends the
sequence and is not part of the text. While stop strings are set, the last ``longest stop - 1`` characters
are held back, so that no part of a stop string is ever sent; a stop string cuts the text before it.

Pure: it needs only a tokenizer's ``decode(ids, skip_special_tokens=True)``.
"""

from __future__ import annotations

from typing import Any

from omega_server.engine.types import SamplingParams


class IncrementalText:
    """One sequence's generated tokens and text, and how much of the text has been sent."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.stop_ids = frozenset(params.stop_token_ids)  # end the sequence even with ignore_eos
        self.stop = params.stop
        self.ignore_eos = params.ignore_eos
        self.max_tokens = params.max_tokens
        self.hold = max((len(s) for s in params.stop), default=1) - 1
        self.token_ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.text = ""
        self.emitted = 0
        # the text the last token completed (what its log-probability entry is named): the pieces of
        # all tokens join to the text (a character split over tokens belongs to its last token)
        self.piece = ""

    def add(self, token: int) -> tuple[str, str | None]:
        """Take the next token: the text to send now, and "stop" | "length" when the sequence ends."""
        self.token_ids.append(token)
        before = len(self.text)
        finish: str | None = None
        eos = (token in self.eos_ids and not self.ignore_eos) or token in self.stop_ids
        if eos:
            finish = "stop"
        else:
            self._decode()
            if self.stop:
                finish = self._check_stop()
        if finish is None and len(self.token_ids) >= self.max_tokens:
            finish = "length"
        if finish is not None:
            if eos or finish == "length":  # a stop-string finish has already cut the text
                self._flush()
                if self.stop and self._check_stop():
                    finish = "stop"
            delta = self.text[self.emitted :]
            self.emitted = len(self.text)
        else:
            upto = max(self.emitted, len(self.text) - self.hold)
            delta = self.text[self.emitted : upto]
            self.emitted = upto
        self.piece = self.text[before:]
        return delta, finish

    def _decode(self) -> None:
        tok = self.tokenizer
        ids = self.token_ids
        prefix = tok.decode(ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        full = tok.decode(ids[self.prefix_offset :], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(ids)

    def _flush(self) -> None:
        """At the end, add text still held back waiting for more bytes of a character."""
        ids = self.token_ids[self.read_offset :]
        if ids and (ids[-1] in self.eos_ids or ids[-1] in self.stop_ids):
            ids = ids[:-1]
        if not ids:
            return
        tok = self.tokenizer
        done = self.token_ids[self.prefix_offset : self.read_offset]
        prefix = tok.decode(done, skip_special_tokens=True)
        full = tok.decode(done + ids, skip_special_tokens=True)
        self.text += full[len(prefix) :]
        self.read_offset = len(self.token_ids)

    def _check_stop(self) -> str | None:
        longest = max(len(s) for s in self.stop)
        start = max(0, self.emitted - longest)
        found = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if not found:
            return None
        self.text = self.text[: min(found)]
        return "stop"
