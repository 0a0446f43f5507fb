"""The API key is compared in constant time, on every `/v1/*` route (behaviour, not timing).

A spy replaces ``compare_digest`` (``secrets`` and ``hmac``, the same function) while a request runs:
each key check must be one ``compare_digest`` call on the key sent and the configured ``API_KEY``.
A check written as ``==`` makes no such call, and ``test_an_equality_check_fails_this_test`` shows
that the spy catches it. Timing is not measured (flaky on a shared machine).
"""

from __future__ import annotations

import dataclasses
import hmac
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import Request
from omega_server.errors import APIError
from omega_server.routes import openai as openai_routes
from pydantic import SecretStr

from tests.omega_server.live import API_KEY, ThreadServer

Calls = list[tuple[Any, Any]]

#: (name, Authorization header bytes, accepted?)
KEYS: list[tuple[str, bytes, bool]] = [
    ("right", f"Bearer {API_KEY}".encode(), True),
    ("wrong, same length", b"Bearer " + b"x" * len(API_KEY), False),
    ("prefix", f"Bearer {API_KEY[:-1]}".encode(), False),
    ("longer", f"Bearer {API_KEY}0".encode(), False),
    ("non-ASCII", "Bearer ключ-🔑-\u200b".encode(), False),
]


@pytest.fixture
def digest_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Every compare_digest call (secrets, hmac, or a name the routes imported) while the test runs."""
    calls: Calls = []
    real: Callable[[Any, Any], bool] = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    for module in (secrets, hmac, openai_routes):
        if hasattr(module, "compare_digest"):
            monkeypatch.setattr(module, "compare_digest", spy)
    yield calls


def _v1_requests(server: ThreadServer) -> list[tuple[str, str]]:
    """(method, path) of every `/v1/*` route the app serves."""
    paths = server.app.openapi()["paths"]
    out = [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1/") for m in ops]
    assert ("GET", "/v1/models") in out and ("POST", "/v1/chat/completions") in out
    return out


def _body(path: str) -> dict[str, Any] | None:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1} if "chat" in path else None


def _assert_401(r: httpx.Response) -> None:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["type"], err["code"], err["param"]) == ("authentication_error", "invalid_api_key", None)
    assert API_KEY not in r.text


def check_keys(server: ThreadServer, calls: Calls) -> None:
    """Each key of KEYS on each /v1 route: accepted or 401, and one compare_digest call with the key."""
    for method, path in _v1_requests(server):
        for name, header, accepted in KEYS:
            calls.clear()
            r = httpx.request(
                method, f"{server.url}{path}", json=_body(path), headers={"Authorization": header}, timeout=60
            )
            if accepted:
                assert r.status_code == 200, (name, path, r.text)
            else:
                _assert_401(r)
            sent = header.removeprefix(b"Bearer ")
            assert len(calls) == 1, f"{path} {name}: the key check made {len(calls)} compare_digest calls"
            got = {x.encode("latin-1") if isinstance(x, str) else bytes(x) for x in calls[0]}
            assert got == {sent, API_KEY.encode()}, (name, calls[0])


def test_every_v1_key_check_is_compare_digest(server: ThreadServer, digest_calls: Calls) -> None:
    check_keys(server, digest_calls)


def test_missing_or_empty_key_is_401_without_a_comparison(server: ThreadServer, digest_calls: Calls) -> None:
    """Nothing sent, nothing to compare: 401 before any comparison (it tells nothing of the key)."""
    for method, path in _v1_requests(server):
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": f"Basic {API_KEY}"}):
            r = httpx.request(method, f"{server.url}{path}", json=_body(path), headers=headers, timeout=60)
            _assert_401(r)
            assert "Missing API key" in r.json()["error"]["message"]
    assert digest_calls == []


def test_a_non_ascii_key_matches_its_utf8_bytes(
    server: ThreadServer, digest_calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API_KEY beyond ASCII is accepted when sent UTF-8 encoded (compared as bytes, in constant time)."""
    key = "clé-ключ-🔑"
    config = dataclasses.replace(server.state.config, api_key=SecretStr(key))
    monkeypatch.setattr(server.state, "config", config)
    url = f"{server.url}/v1/models"
    assert httpx.get(url, headers={"Authorization": b"Bearer " + key.encode()}, timeout=30).status_code == 200
    assert digest_calls == [(key.encode(), key.encode())]
    _assert_401(httpx.get(url, headers={"Authorization": b"Bearer " + key[:-1].encode()}, timeout=30))


def test_open_endpoints_need_no_key(server: ThreadServer, digest_calls: Calls) -> None:
    assert server.state.config.api_key is not None
    for path in ("/health", "/live", "/metrics"):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200, path
    assert digest_calls == []


def test_an_equality_check_fails_this_test(server: ThreadServer, digest_calls: Calls) -> None:
    """The spy is what catches a non-constant-time check: the same checks fail on an ``==`` version."""

    async def naive(request: Request) -> None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token != API_KEY:  # the check this file exists to forbid
            raise APIError(
                401,
                "Incorrect API key provided.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    server.app.dependency_overrides[openai_routes.require_api_key] = naive
    try:
        with pytest.raises(AssertionError, match="0 compare_digest calls"):
            check_keys(server, digest_calls)
    finally:
        server.app.dependency_overrides.pop(openai_routes.require_api_key)
