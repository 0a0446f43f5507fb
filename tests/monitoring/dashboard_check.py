"""The shipped Grafana dashboard against a live Prometheus: each query of each panel with Grafana's
template variables substituted, asked the way Grafana asks it (a range query for a time series
panel, an instant one for an instant table), and checks that a name check cannot make:

- the query parses and returns at least one series;
- every label it groups or filters by exists on the series of the metrics it reads;
- every ``{{label}}`` of its legend is on every series it returns;
- rate()/irate()/increase() read counters (or a histogram's _bucket/_sum/_count), never a gauge;
- histogram_quantile() reads a histogram's _bucket series.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster.promapi import PromApi, PromError

DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "omega-vlm" / "dashboards" / "omega-vlm.json"
COUNTER_FUNCS = ("rate", "irate", "increase", "resets")
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Query:
    """One target of one panel."""

    panel: str
    ref: str
    expr: str
    legend: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref}]"


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every target of every panel (panels inside collapsed rows included)."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels") or [])

    return [
        Query(p["title"], t.get("refId", "?"), t["expr"], t.get("legendFormat", ""), bool(t.get("instant")))
        for p in panels(dashboard["panels"])
        if p.get("type") != "row"
        for t in p.get("targets") or []
    ]


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's template variables (``$name``, ``${name}``, ``[[name]]``) replaced by their values."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in variables:
            raise KeyError(f"template variable ${name} has no value for the check")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def metric_names(expr: str) -> set[str]:
    """The omega_* metric names an expression reads."""
    return set(re.findall(r"\b(omega_[a-z0-9_]+)\b", expr))


def used_labels(expr: str) -> set[str]:
    """Labels named in ``by``/``without``/``on``/``ignoring`` clauses and in selectors' matchers."""
    used: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        used |= {x.strip() for x in group.split(",") if x.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        used |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return used


def legend_labels(legend: str) -> set[str]:
    return set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend))


def _calls(expr: str, func: str) -> list[str]:
    """The argument text of every ``func(...)`` call in ``expr`` (parentheses balanced)."""
    out = []
    for m in re.finditer(rf"\b{func}\s*\(", expr):
        depth, i = 1, m.end()
        while i < len(expr) and depth:
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        out.append(expr[m.end() : i - 1])
    return out


def metric_type(name: str, metadata: dict[str, list[dict[str, Any]]]) -> tuple[str, str]:
    """(type of the family, the part) of a sample name by the TYPE lines Prometheus scraped:
    ``("counter", "")``, ``("histogram", "_bucket")``, ``("gauge", "")`` or ``("unknown", "")``.
    A counter's family is named with or without ``_total`` (text format vs OpenMetrics)."""
    if name in metadata:
        return str(metadata[name][0]["type"]), ""
    if name.endswith("_total") and name[: -len("_total")] in metadata:
        return str(metadata[name[: -len("_total")]][0]["type"]), ""
    for part in HISTOGRAM_PARTS:
        if name.endswith(part) and name[: -len(part)] in metadata:
            return str(metadata[name[: -len(part)]][0]["type"]), part
    return "unknown", ""


def type_problems(expr: str, metadata: dict[str, list[dict[str, Any]]]) -> list[str]:
    """rate() & co. on something that is not a counter; histogram_quantile() on something that is
    not a histogram's buckets."""
    problems = []
    for func in COUNTER_FUNCS:
        for arg in _calls(expr, func):
            for name in metric_names(arg):
                kind, part = metric_type(name, metadata)
                if not (kind == "counter" or (kind in ("histogram", "summary") and part)):
                    problems.append(f"{func}() on {name}, a {kind}: it needs a counter")
    for arg in _calls(expr, "histogram_quantile"):
        for name in metric_names(arg):
            kind, part = metric_type(name, metadata)
            if (kind, part) != ("histogram", "_bucket"):
                problems.append(
                    f"histogram_quantile() over {name} ({kind}{part}): it needs a histogram's _bucket"
                )
    return problems


@dataclass(frozen=True)
class Window:
    """The dashboard's time range and Grafana's intervals for it."""

    start: float
    end: float
    step: float  # $__interval
    rate_interval: str  # $__rate_interval: max($__interval + scrape interval, 4 x scrape interval)


def check(prom: PromApi, q: Query, variables: dict[str, str], w: Window) -> list[str]:
    """What is wrong with one query against this Prometheus (empty: it answers as the panel needs)."""
    expr = substitute(q.expr, {**variables, "__rate_interval": w.rate_interval, "__interval": f"{w.step:g}s"})
    try:
        result = prom.query(expr, at=w.end) if q.instant else prom.query_range(expr, w.start, w.end, w.step)
    except PromError as e:
        return [f"{expr}: {e}"]
    problems = []
    if not result:
        problems.append(f"{expr}: no series")
    for label in sorted(legend_labels(q.legend)):
        missing = [s["metric"] for s in result if label not in s["metric"]]
        if missing:
            problems.append(
                f"legend {{{{{label}}}}}: not on {len(missing)} series of {expr}, e.g. {missing[0]}"
            )
    known: set[str] = {"le"}
    for name in metric_names(expr):
        known |= set(prom.label_names(name, start=w.start))
    for label in sorted(used_labels(expr) - known):
        problems.append(f"{expr}: label {label!r} is on none of {sorted(metric_names(expr))}")
    return problems + [f"{expr}: {p}" for p in type_problems(expr, prom.metadata())]
