"""Operational routes: `/health` (DESIGN.md 3.2), `/live` and `/metrics`. Always open (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from omega_server.metrics import CONTENT_TYPE
from omega_server.state import ServerState

router = APIRouter()


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.omega
    return state


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 with the engine's report when ready; 503 with the same body shape while loading or dead."""
    body = _state(request).health()
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/live")
async def live() -> dict[str, str]:
    """Liveness only: the process answers HTTP."""
    return {"status": "alive"}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)
