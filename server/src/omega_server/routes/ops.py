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
async def live(request: Request) -> JSONResponse:
    """Liveness: 200 while the process can still serve (loading included); 503 once the engine is dead
    or failed to load, or its worker has made no progress for ``WORKER_STALL_SECONDS`` while requests
    wait or run (a stuck step): nothing in-process repairs these, so the kubelet restarts the container."""
    state = _state(request)
    phase = state.phase
    if phase in ("dead", "failed"):
        return JSONResponse({"status": phase}, status_code=503)
    stalled = state.stalled_seconds()
    if stalled > state.config.worker_stall_seconds:
        return JSONResponse({"status": "stalled", "stalled_seconds": round(stalled, 1)}, status_code=503)
    return JSONResponse({"status": "alive"})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)
