"""OpenAI-compatible routes: `GET /v1/models`, `POST /v1/chat/completions` (bearer auth when API_KEY is set)."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from omega_server.chat_request import parse_request
from omega_server.errors import APIError
from omega_server.protocol import ModelCard, ModelList
from omega_server.serving import ARRIVAL, StageClock
from omega_server.state import ServerState


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.omega
    return state


async def require_api_key(request: Request) -> None:
    """Check `Authorization: Bearer <API_KEY>` when an API key is configured."""
    key = _state(request).config.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise APIError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # The header's own bytes (Starlette decoded them as latin-1) against the key's UTF-8 bytes, in
    # constant time: a non-ASCII key matches when the client sends it UTF-8 encoded.
    sent = token.strip(" \t").encode("latin-1")
    if not secrets.compare_digest(sent, key.get_secret_value().encode("utf-8")):
        raise APIError(
            401, "Incorrect API key provided.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
        )


router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)])


@router.get("/models")
async def list_models(request: Request) -> ModelList:
    """The one served model."""
    state = _state(request)
    card = ModelCard(
        id=state.config.model_name, created=state.started, max_model_len=state.config.max_model_length
    )
    return ModelList(data=[card])


@router.post(
    "/chat/completions",
    response_model=None,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}
    },
)
async def chat_completions(request: Request) -> Response:
    """Chat completion, JSON or SSE (`stream: true`); the body is a `ChatCompletionRequest`.

    The answer's `Server-Timing` header says where the time before the first token went.
    """
    clock = StageClock(request.scope.get(ARRIVAL))
    chat = _state(request).chat()
    raw = await request.body()
    clock.mark("body")
    body = parse_request(raw)
    clock.mark("parse")
    return await chat.create(body, request, clock)
