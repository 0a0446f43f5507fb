"""The Prometheus part of the omega-vlm demo: where to watch, the fallback as Prometheus's series and
alerts record it, and the queries printed at the end of ``make demo`` (``devcluster.demo.QUERIES``).

Nothing here runs without a Prometheus (``python -m devcluster up --prometheus``; ``make demo``
starts the cluster with one).
"""

from __future__ import annotations

import time

from devcluster import demo
from devcluster.cluster import Cluster
from devcluster.promapi import PromApi, PromError

ALERT = "OmegaVLMFlashAttentionDegraded"

demo.QUERIES += [
    (
        "max by (namespace, pod, backend, requested) (omega_server_attention_info)",
        "attention backend per server pod (the flash pod ran sdpa after its failed flash-attn load)",
    ),
    ("max by (namespace, name, attention) (omega_operator_omegavlm_info)", "each OmegaVLM's active backend"),
    ("sum by (reason) (omega_operator_fallbacks_total)", "rollbacks flash -> sdpa by reason"),
    (f'ALERTS{{alertname="{ALERT}"}}', "the chart's alert: the Graph tab shows when it fired"),
    (
        "histogram_quantile(0.95, sum by (le) (rate(omega_server_time_to_first_token_seconds_bucket[1m])))",
        "time to first token, p95",
    ),
    (
        "sum by (pod) (omega_server_requests_running)",
        "requests running per pod (what an autoscaler scales on)",
    ),
    ("sum by (pod) (omega_server_requests_waiting)", "requests queued per pod"),
    (
        "max by (pod) (omega_server_kv_token_usage_ratio)",
        "KV cache usage per pod (vLLM's gpu_cache_usage_perc)",
    ),
    ("max by (namespace, name) (omega_operator_omegavlm_ready_replicas)", "Ready replicas per OmegaVLM"),
]


def _say(text: str) -> None:
    print(text, flush=True)


def announce(c: Cluster) -> None:
    """Before the fallback: where to watch it happen."""
    if c.prometheus_url:
        _say(
            f"Watch it in Prometheus while it happens: {c.prometheus_url}/graph with\n"
            "  max by (pod, backend, requested) (omega_server_attention_info)\n"
        )


def _rows(prom: PromApi, expr: str, labels: tuple[str, ...]) -> list[str]:
    out = []
    for series in prom.query(expr):
        m = series.get("metric") or {}
        out.append("  " + " ".join(f"{k}={m.get(k, '')}" for k in labels) + f"  -> {series['value'][1]}")
    return out or ["  (no series)"]


def show_fallback(c: Cluster, namespace: str, name: str, timeout: float = 30.0) -> None:
    """After the fallback: both server pods' backends, the fallback counter and the alert, from Prometheus."""
    if not c.prometheus_url:
        return
    with PromApi(c.prometheus_url) as prom:
        sdpa_pod = (
            f'omega_server_attention_info{{namespace="{namespace}", omegavlm="{name}", requested="sdpa"}}'
        )
        deadline = time.monotonic() + timeout
        try:
            # Discovery and the first scrape of the new sdpa pod take a few seconds.
            while not prom.query(sdpa_pod) and time.monotonic() < deadline:
                time.sleep(1)
            window = "[15m]"
            shown = [
                (
                    "attention backend per server pod, over the last 15 minutes",
                    f'max by (pod, backend, requested) (max_over_time(omega_server_attention_info{{namespace="{namespace}"}}{window}))',
                    ("pod", "backend", "requested"),
                ),
                (
                    "fallbacks counted by the operator",
                    "sum by (reason) (omega_operator_fallbacks_total)",
                    ("reason",),
                ),
                (
                    f"{ALERT}, fired in the last 15 minutes",
                    f'max by (alertname, namespace, omegavlm, severity) (max_over_time(ALERTS{{alertname="{ALERT}", alertstate="firing", namespace="{namespace}"}}{window}))',
                    ("alertname", "namespace", "omegavlm", "severity"),
                ),
            ]
            _say(f"What Prometheus ({c.prometheus_url}) recorded:")
            for title, expr, labels in shown:
                _say(f"$ promql '{expr}'   # {title}")
                _say("\n".join(_rows(prom, expr, labels)) + "\n")
        except PromError as e:
            _say(f"(Prometheus query failed: {e})\n")
