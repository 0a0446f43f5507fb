"""``ApiAccounting``: the ASGI middleware of /v1/*: the request-body limit (413), status and refusal counts, durations."""

from __future__ import annotations

import contextlib
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omega_server.errors import ERROR_CODE, APIError, error_body
from omega_server.metrics import Metrics
from omega_server.serving import ARRIVAL


def _too_large_message(limit: int) -> str:
    return f"Request body is larger than the limit of {limit} bytes (MAX_REQUEST_BYTES)."


class BodyTooLarge(APIError):
    """Raised into the app by the body read that passes the limit (the 413 has been sent already)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_message(limit), headers={"Connection": "close"})


class ApiAccounting:
    """ASGI middleware for /v1/*: refuses bodies over the limit (413), counts statuses, refusals (by
    the error code the handlers leave in the scope under ``ERROR_CODE``) and durations.

    The limit holds from the `Content-Length` header when there is one, and otherwise (a chunked
    body) on the bytes received: the message that passes the limit gets the 413 at once, with
    `Connection: close`, and the app's read fails with `BodyTooLarge` (its own answer is dropped),
    so the rest of the body is never read.

    Durations run to the last body byte, so streamed answers are timed in full. The arrival time
    (`time.perf_counter()`, once the request head is parsed) is left in the scope under `ARRIVAL`,
    where the chat route starts its Server-Timing clock.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL] = time.perf_counter()
        start = time.monotonic()
        status = [500]
        started = [False]  # the app's answer has begun
        refused = [False]  # the 413 went out, from the bytes received
        received = [0]

        async def counting_send(message: Message) -> None:
            if refused[0]:
                return  # the 413 went out already; the app's own answer to the failed read is dropped
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
            await send(message)

        async def limited_receive() -> Message:
            if refused[0]:
                raise BodyTooLarge(self.max_body)
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_body:
                    if not started[0]:
                        await self._too_large(counting_send)
                    refused[0] = True
                    raise BodyTooLarge(self.max_body)
            return message

        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        try:
            if length.isdigit() and int(length) > self.max_body:
                await self._too_large(counting_send)
            else:
                # `limited_receive` sends the 413 before it raises: nothing is left to answer.
                with contextlib.suppress(BodyTooLarge):
                    await self.app(scope, limited_receive, counting_send)
        finally:
            self.metrics.requests.labels(status=str(status[0])).inc()
            self.metrics.reject(status[0], scope.get(ERROR_CODE))
            self.metrics.request_duration.observe(time.monotonic() - start)

    async def _too_large(self, send: Send) -> None:
        body = json.dumps(error_body(413, _too_large_message(self.max_body))).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
