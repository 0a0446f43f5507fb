"""Prometheus on devcluster: Debian's ``prometheus`` binary run by the supervisor, discovering the
server pods through the API server and scraping the operator through file_sd stand-ins.

``Cluster.start(prometheus=PrometheusConfig(...))`` (or ``python -m devcluster up --prometheus``)
makes the supervisor, once the nodes are Ready:

1. create the ServiceAccount ``monitoring/prometheus`` with a ClusterRole that may get, list and
   watch pods (what Kubernetes discovery, role pod, needs), and write a token of it (TokenRequest
   API, renewed daily) to ``prometheus/token``;
2. render the chart's PodMonitor, ServiceMonitor and PrometheusRule (:mod:`devcluster.monitors`)
   into ``prometheus/prometheus.yml`` and ``prometheus/rules/``;
3. discover the pods with that token into ``prometheus/sd/pods.json`` (:mod:`devcluster.podsd`);
4. start ``prometheus`` on a free loopback port and wait for ``/-/ready``.

Local processes that stand in for a Service (the operator) register with :func:`add_target`.
:class:`devcluster.promapi.PromApi` asks the running Prometheus.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from devcluster import monitors, podsd
from devcluster.apiclient import Api, ApiError
from devcluster.controlplane import free_ports

PACKAGE = "prometheus"  # Debian's package: /usr/bin/prometheus and /usr/bin/promtool
PROCESS = "prometheus"  # its name in the pid registry and the log file's
NAMESPACE = "monitoring"
SERVICE_ACCOUNT = "prometheus"
TOKEN_SECONDS = 7 * 86400
TOKEN_RENEW_S = 86400.0


@dataclass(frozen=True)
class PrometheusConfig:
    """How devcluster runs Prometheus.

    ``chart_values``: ``--set`` values for rendering the chart's monitoring objects (for example
    shorter ``for`` durations of the alerts, so that they fire within a test).
    """

    scrape_interval: str = "2s"
    evaluation_interval: str = "2s"
    retention: str = "1d"
    rules: bool = True
    chart_values: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (kept in the cluster's config.json)."""
        d = asdict(self)
        d["chart_values"] = list(self.chart_values)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrometheusConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**d, "chart_values": tuple(d.get("chart_values") or ())})


#: The demo's: a scrape and a rule evaluation every 2 s.
DEMO_PROMETHEUS = PrometheusConfig()
#: The tests': a scrape and a rule evaluation every second.
TEST_PROMETHEUS = PrometheusConfig(scrape_interval="1s", evaluation_interval="1s")


def binary(name: str = "prometheus") -> Path:
    """Path of ``prometheus`` or ``promtool`` (installed by ``python -m devcluster build``)."""
    found = shutil.which(name) or f"/usr/bin/{name}"
    if not os.access(found, os.X_OK):
        raise FileNotFoundError(
            f"{name} not found: `python -m devcluster build` installs Debian's {PACKAGE} package"
        )
    return Path(found)


@dataclass(frozen=True)
class Files:
    """Where Prometheus's files live in a cluster's state folder."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path) -> Files:
        return cls(Path(state_dir) / "prometheus")

    @property
    def config(self) -> Path:
        return self.root / "prometheus.yml"

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def rules(self) -> Path:
        return self.root / "rules"

    @property
    def targets(self) -> Path:
        """file_sd entries of local processes standing in for Services (:func:`add_target`)."""
        return self.root / "targets"

    @property
    def pods(self) -> Path:
        """file_sd of the discovered pods (:mod:`devcluster.podsd`)."""
        return self.root / "sd" / "pods.json"

    @property
    def data(self) -> Path:
        return self.root / "data"


# ---------------------------------------------------------------- pure parts


def rbac_objects() -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object): the namespace, ServiceAccount, ClusterRole and binding."""
    name = f"devcluster-{SERVICE_ACCOUNT}"
    return [
        ("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        (
            f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts",
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE},
            },
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name},
                # kubernetes_sd_configs role pod: list and watch pods in every namespace.
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
            },
        ),
        (
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
            },
        ),
    ]


def render_config(
    cfg: PrometheusConfig, files: Files, docs: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """prometheus.yml and the rule files (name -> content) from the chart's rendered objects."""
    jobs: list[dict[str, Any]] = []
    for pm in monitors.of_kind(docs, "PodMonitor"):
        jobs += monitors.podmonitor_jobs(pm, pods_file=files.pods, interval=cfg.scrape_interval)
    for sm in monitors.of_kind(docs, "ServiceMonitor"):
        jobs += monitors.servicemonitor_jobs(
            sm, targets_glob=str(files.targets / "*.json"), interval=cfg.scrape_interval
        )
    rules = (
        {
            f"{pr['metadata']['name']}.yml": monitors.rule_file(pr)
            for pr in monitors.of_kind(docs, "PrometheusRule")
        }
        if cfg.rules
        else {}
    )
    config = {
        "global": {
            "scrape_interval": cfg.scrape_interval,
            "scrape_timeout": cfg.scrape_interval,
            "evaluation_interval": cfg.evaluation_interval,
        },
        "rule_files": [str(files.rules / name) for name in sorted(rules)],
        "scrape_configs": jobs,
    }
    return config, rules


def argv(cfg: PrometheusConfig, files: Files, port: int) -> list[str]:
    """Prometheus's command line: loopback only, its own data folder, reload by HTTP."""
    return [
        str(binary()),
        f"--config.file={files.config}",
        f"--storage.tsdb.path={files.data}",
        f"--storage.tsdb.retention.time={cfg.retention}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",
        "--log.level=info",
    ]


# ---------------------------------------------------------------- side effects


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def ensure_identity(api: Api) -> None:
    """Create the namespace, ServiceAccount and RBAC of Prometheus (409 = already there)."""
    for path, obj in rbac_objects():
        try:
            api.post(path, obj)
        except ApiError as e:
            if e.status != 409:
                raise


def write_token(api: Api, files: Files) -> None:
    """A token of ``monitoring/prometheus`` (TokenRequest API) into the file Prometheus reads per request."""
    request = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": TOKEN_SECONDS},
    }
    answer = api.post(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{SERVICE_ACCOUNT}/token", request)
    _write(files.token, answer["status"]["token"])
    files.token.chmod(0o600)


def renew_token(api: Api, files: Files, stop: threading.Event) -> None:
    """Until ``stop``: write a fresh token every day (they last a week)."""
    while not stop.wait(TOKEN_RENEW_S):
        with contextlib.suppress(ApiError, httpx.HTTPError, OSError):
            write_token(api, files)


def prepare(cfg: PrometheusConfig, state_dir: Path, api: Api, helm: Path) -> Files:
    """Identity, token, prometheus.yml and rule files in ``<state>/prometheus``; returns the paths."""
    files = Files.of(state_dir)
    for d in (files.rules, files.targets, files.data, files.pods.parent):
        d.mkdir(parents=True, exist_ok=True)
    ensure_identity(api)
    write_token(api, files)
    if not files.pods.exists():
        _write(files.pods, "[]")
    docs = monitors.render(helm, cfg.chart_values)
    config, rules = render_config(cfg, files, docs)
    for name, content in rules.items():
        _write(files.rules / name, yaml.safe_dump(content, sort_keys=False))
    _write(files.config, yaml.safe_dump(config, sort_keys=False))
    return files


def ready(url: str) -> bool:
    """True when Prometheus at ``url`` answers ``/-/ready``."""
    try:
        return httpx.get(f"{url}/-/ready", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def add_target(state_dir: Path, name: str, entry: dict[str, Any]) -> bool:
    """Register a local process for scraping: ``entry`` (see :func:`monitors.operator_entry`) goes
    to ``prometheus/targets/<name>.json``, which the ServiceMonitor jobs read. False (nothing
    written) when the cluster runs no Prometheus."""
    files = Files.of(state_dir)
    if not files.targets.is_dir():
        return False
    _write(files.targets / f"{name}.json", json.dumps([entry], indent=1))
    return True


def remove_target(state_dir: Path, name: str) -> None:
    """Forget a target registered with :func:`add_target` (its series go stale)."""
    (Files.of(state_dir).targets / f"{name}.json").unlink(missing_ok=True)


def start(
    cfg: PrometheusConfig,
    state_dir: Path,
    api: Api,
    api_server: str,
    ca_file: Path,
    helm: Path,
    spawn: Callable[[str, list[str]], subprocess.Popen[bytes]],
    wait: Callable[[str, Callable[[], bool], float, subprocess.Popen[bytes]], None],
    stop: threading.Event,
) -> str:
    """The supervisor's part: prepare the files, start pod discovery, ``spawn(name, argv)``
    Prometheus, ``wait`` until it is ready, renew its token until ``stop``; returns its URL."""
    files = prepare(cfg, state_dir, api, helm)
    discovery = threading.Thread(
        target=podsd.run, args=(api_server, ca_file, files.token, files.pods, stop), daemon=True, name="podsd"
    )
    discovery.start()
    port = free_ports(1)[0]
    proc = spawn(PROCESS, argv(cfg, files, port))
    url = f"http://127.0.0.1:{port}"
    wait("prometheus /-/ready", lambda: ready(url), 60, proc)
    threading.Thread(
        target=renew_token, args=(api, files, stop), daemon=True, name="prometheus-token"
    ).start()
    return url
