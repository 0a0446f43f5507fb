"""A small client of Prometheus's HTTP API (v1): the queries, alerts, rules, targets and metadata
that the demo and the tests read from devcluster's Prometheus."""

from __future__ import annotations

import time
from typing import Any

import httpx


class PromError(RuntimeError):
    """Prometheus answered with an error (a bad query names its fault here)."""


class PromApi:
    """The few calls of Prometheus's HTTP API (v1) that the demo and the tests use."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PromApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: list[tuple[str, str]] | None = None) -> Any:
        r = self._http.get(f"/api/v1/{path}", params=tuple(params or ()))
        try:
            body = r.json()
        except ValueError as e:
            raise PromError(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}") from e
        if body.get("status") != "success":
            raise PromError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result's series (``metric`` labels and ``value``)."""
        params = [("query", expr)]
        if at is not None:
            params.append(("time", str(at)))
        data = self._get("query", params)
        return list(data["result"]) if data["resultType"] in ("vector", "matrix") else [data]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query (what a Grafana time series panel asks); the result's series."""
        data = self._get(
            "query_range", [("query", expr), ("start", str(start)), ("end", str(end)), ("step", str(step))]
        )
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now."""
        return list(self._get("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        """The loaded rule groups, each rule with its health and last error."""
        return list(self._get("rules")["groups"])

    def targets(self) -> list[dict[str, Any]]:
        """Active scrape targets (labels, health, last error)."""
        return list(self._get("targets", [("state", "active")])["activeTargets"])

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """Metric name -> its TYPE/HELP as scraped."""
        return dict(self._get("metadata"))

    def label_names(self, match: str, start: float | None = None) -> list[str]:
        """Label names of the series that ``match`` selects."""
        params: list[tuple[str, str]] = [("match[]", match)]
        if start is not None:
            params.append(("start", str(start)))
        return list(self._get("labels", params))

    def wait_for(self, expr: str, timeout: float, what: str = "") -> list[dict[str, Any]]:
        """Poll an instant query until it returns a series; its result (TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.query(expr)
            if got:
                return got
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or expr}: no series after {timeout:.0f} s")
            time.sleep(0.5)
