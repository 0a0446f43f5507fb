"""A small JSON client for the apiserver, used by the supervisor (node agent and kubelet).

httpx with the cluster CA and the admin token; never picks up proxy settings from the environment.
"""

from __future__ import annotations

import json
from typing import Any

import httpx


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:500]}")
        self.status = status
        self.body = body


class Api:
    """GET/POST/PUT/PATCH/DELETE of JSON objects by API path."""

    def __init__(self, server: str, token: str, ca_file: str, timeout: float = 10.0) -> None:
        self._http = httpx.Client(
            base_url=server,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            verify=ca_file,
            timeout=timeout,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Content-Type": content_type} if body is not None else {}
        content = json.dumps(body) if body is not None else None
        r = self._http.request(method, path, content=content, headers=headers, params=params)
        if r.status_code >= 300:
            raise ApiError(r.status_code, r.text)
        return r.json() if r.content else {}

    def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return self.request("GET", path, params=params)

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path: str, body: Any) -> dict[str, Any]:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> dict[str, Any]:
        return self.request("PUT", path, body)

    def merge_patch(self, path: str, body: Any) -> dict[str, Any]:
        return self.request("PATCH", path, body, "application/merge-patch+json")

    def delete(self, path: str, body: Any = None) -> dict[str, Any]:
        return self.request("DELETE", path, body)

    def ok(self, path: str) -> bool:
        """True when GET ``path`` answers 200 (e.g. /readyz)."""
        try:
            return self._http.get(path).status_code == 200
        except httpx.HTTPError:
            return False
