"""Sampling fields through the real server (the shared tiny server): top_k, min_p, the penalties,
logit_bias and stop_token_ids are honoured, not dropped."""

from __future__ import annotations

from typing import Any

import httpx

from tests.omega_server.live import ThreadServer

A = "a"


def token_id(server: ThreadServer, text: str) -> int:
    ids = server.engine._processor.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1
    return int(ids[0])


def chat(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 6, **fields}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def content(answer: dict[str, Any]) -> str:
    text: str = answer["choices"][0]["message"]["content"]
    return text


def test_logit_bias_forces_a_token(client: httpx.Client, server: ThreadServer) -> None:
    a = token_id(server, A)
    out = chat(client, temperature=1.0, seed=3, logit_bias={str(a): 100})
    assert content(out) == A * 6


def test_stop_token_ids_end_the_answer(client: httpx.Client, server: ThreadServer) -> None:
    a = token_id(server, A)
    out = chat(client, temperature=0, logit_bias={str(a): 100}, stop_token_ids=[a])
    assert content(out) == "" and out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 1


def test_top_k_one_is_greedy_at_any_temperature(client: httpx.Client) -> None:
    greedy = content(chat(client, temperature=0))
    assert {content(chat(client, temperature=1.5, top_k=1, seed=s)) for s in range(4)} == {greedy}
    # a min_p of 1 keeps only the most likely token too
    assert content(chat(client, temperature=1.5, min_p=1.0, seed=9)) == greedy


def test_penalties_change_a_greedy_answer(client: httpx.Client, server: ThreadServer) -> None:
    a = token_id(server, A)
    # a bias of 5 makes "a" the greedy choice; a frequency penalty of 2 takes it back after a few
    biased = content(chat(client, temperature=0, logit_bias={str(a): 5}, max_tokens=12))
    penalized = content(
        chat(client, temperature=0, logit_bias={str(a): 5}, frequency_penalty=2.0, max_tokens=12)
    )
    assert biased.count(A) > penalized.count(A) >= 1
    # (the repetition penalty acts before the bias: its effect is checked in test_sampler)
    assert chat(client, temperature=0, repetition_penalty=1.3, presence_penalty=0.5)["choices"]
