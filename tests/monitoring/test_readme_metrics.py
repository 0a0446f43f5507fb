"""The README's monitoring section lists every metric the operator and the server export."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text()
    start = text.index("### Monitoring")
    return text[start : text.index("\n### ", start + 1)]


def _names(registry: CollectorRegistry) -> set[str]:
    """Exposed names of the registry's omega_* families (a counter with its `_total`)."""
    out = set()
    for family in registry.collect():
        if family.name.startswith("omega_"):
            out.add(family.name + ("_total" if family.type == "counter" else ""))
    return out


def test_every_exported_metric_is_in_the_readme() -> None:
    from omega_operator import metrics as operator_metrics
    from omega_server.metrics import Metrics

    exported = _names(operator_metrics.REGISTRY) | _names(Metrics().registry)
    assert len(exported) >= 15, exported
    listed = set(re.findall(r"`(omega_[a-z0-9_]+)`", _section()))
    assert exported <= listed, f"not in README.md's Monitoring section: {sorted(exported - listed)}"
