"""Incremental text of one sequence (omega_server.engine.detok), on the tiny checkpoints' real byte-level
tokenizer: characters split over tokens, stop strings (cut, never sent in part), EOS, the token budget."""

from __future__ import annotations

from typing import Any

import pytest
from omega_server.engine.detok import IncrementalText
from omega_server.engine.types import SamplingParams
from omega_server.tiny_text import build_tokenizer

EOS = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tokenizer([EOS], bos=None, eos=EOS, pad=EOS)


def ids(text: str) -> list[int]:
    return list(text.encode())  # one token per byte, ids 0..255


def run(text: IncrementalText, tokens: list[int]) -> list[tuple[str, str | None]]:
    out = []
    for t in tokens:
        delta, finish = text.add(t)
        out.append((delta, finish))
        if finish is not None:
            break
    return out


def test_a_character_split_over_tokens_waits_for_its_last_byte(tokenizer: Any) -> None:
    text = IncrementalText(tokenizer, set(), SamplingParams(max_tokens=100))
    steps = run(text, ids("aé€b"))  # é: 2 bytes, €: 3 bytes
    assert [d for d, _ in steps] == ["a", "", "é", "", "", "€", "b"]
    assert all(f is None for _, f in steps)
    assert text.token_ids == ids("aé€b")


def test_a_stop_string_cuts_the_text_and_is_never_sent_in_part(tokenizer: Any) -> None:
    text = IncrementalText(tokenizer, set(), SamplingParams(max_tokens=100, stop=("o w", "zz")))
    steps = run(text, ids("hello world"))
    sent = [d for d, _ in steps]
    assert "".join(sent) == "hell"
    assert steps[-1][1] == "stop" and len(steps) == len("hello w")  # ends at the stop's last token
    assert all("o" not in d for d in sent)  # the held-back "o" of the stop never went out


def test_held_back_text_goes_out_when_the_budget_ends(tokenizer: Any) -> None:
    text = IncrementalText(tokenizer, set(), SamplingParams(max_tokens=5, stop=("never",)))
    steps = run(text, ids("abcdefgh"))
    # "never" holds the last 4 characters back; the budget's end sends them
    assert [d for d, _ in steps] == ["", "", "", "", "abcde"]
    assert steps[-1][1] == "length"


def test_eos_finishes_with_stop_and_flushes(tokenizer: Any) -> None:
    eos = int(tokenizer.convert_tokens_to_ids(EOS))
    text = IncrementalText(tokenizer, {eos}, SamplingParams(max_tokens=100, stop=("xyz",)))
    steps = run(text, [*ids("hi there"), eos, *ids("more")])
    assert "".join(d for d, _ in steps) == "hi there"
    assert steps[-1] == ("re", "stop")  # the two held-back characters, with the finish


def test_ignore_eos_keeps_going_and_drops_the_special_token(tokenizer: Any) -> None:
    eos = int(tokenizer.convert_tokens_to_ids(EOS))
    text = IncrementalText(tokenizer, {eos}, SamplingParams(max_tokens=6, ignore_eos=True))
    steps = run(text, [*ids("ab"), eos, *ids("cdef")])
    assert "".join(d for d, _ in steps) == "abcde"  # six tokens, one of them the EOS
    assert steps[-1][1] == "length" and len(steps) == 6


def test_a_stop_token_id_ends_the_sequence_like_eos_even_with_ignore_eos(tokenizer: Any) -> None:
    params = SamplingParams(max_tokens=100, stop_token_ids=(ord("!"),), ignore_eos=True)
    text = IncrementalText(tokenizer, {ord("x")}, params)
    steps = run(text, ids("ax b!cd"))  # "x" is EOS but ignored; "!" is a stop token
    assert "".join(d for d, _ in steps) == "ax b"
    assert steps[-1][1] == "stop" and len(steps) == len("ax b!")
