"""Typed operator settings, from the environment (prefix OMEGA_OPERATOR_)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Settings of omega-vlm-operator. Every field is read from OMEGA_OPERATOR_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="OMEGA_OPERATOR_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Namespaces to watch, comma-separated names or kopf globs (e.g. ml-*); "
            "empty = all namespaces (cluster-wide)."
        ),
    )
    probe_interval: float = Field(
        default=10.0, gt=0, description="Seconds between refreshes of observed state and pod /health probes."
    )
    probe_timeout: float = Field(default=3.0, gt=0, description="Timeout of one pod /health probe (s).")
    probe_concurrency: int = Field(default=32, ge=1, description="Pod /health probes in flight at once.")
    health_probe_mode: Literal["auto", "direct", "proxy"] = Field(
        default="auto",
        description=(
            "Probe pods at podIP:port (direct), through the API server's pod proxy (proxy), or directly "
            "and through the proxy when the direct connection fails (auto)."
        ),
    )
    watch_server_timeout: int = Field(
        default=300, ge=10, description="kopf: server-side timeout of one watch (s)."
    )
    watch_client_timeout: int = Field(
        default=330, ge=10, description="kopf: client-side timeout of one watch (s)."
    )
    request_timeout: float = Field(
        default=30.0, gt=0, description="Timeout of one API request (s), kopf's and ours."
    )
    liveness_port: int = Field(default=8080, ge=0, le=65535, description="Port of /healthz (0 = off).")
    metrics_port: int = Field(
        default=9090, ge=0, le=65535, description="Port of Prometheus /metrics (0 = off)."
    )
    peering: str | None = Field(
        default=None,
        description="kopf peering object name for several operator replicas; unset = standalone (default).",
    )
    peering_priority: int | None = Field(
        default=None,
        description=(
            "kopf peering priority of this process (the highest live one is active); unset = random per "
            "process, so that two replicas never tie (kopf pauses every replica on a tie)."
        ),
    )
    max_workers: int = Field(default=16, ge=1, description="kopf's thread pool for sync handlers.")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        """Accept a comma-separated string (the environment's form)."""
        if isinstance(value, str):
            return [n.strip() for n in value.split(",") if n.strip()]
        return value
