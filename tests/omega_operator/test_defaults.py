"""The defaults of optional spec fields: written once (omega_operator.api.defaults), documented truthfully
in the committed CRD, applied by the builders; the copies that must remain elsewhere (the examples,
the chart's example values, the server's own defaults) fail here when they drift.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from omega_operator import builders as b
from omega_operator.api import defaults, parse_spec
from omega_operator.fallback import fallback_spec

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "omegavlms.vlm.omega.io.yaml"
MINIMAL = {
    "model": {"name": "tiny", "uri": "file:///models/tiny"},
    "image": {"repository": "reg.example/omega-vlm-server", "tag": "v1"},
}
_DEFAULT_RE = re.compile(r"Default: (.+?)\.(?: |$)")


def documented_defaults() -> dict[str, str]:
    """spec field path -> the default its description in the committed CRD names."""
    crd = yaml.safe_load(CRD.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    out: dict[str, str] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        m = _DEFAULT_RE.search(node.get("description") or "")
        if m:
            out[path] = m.group(1)
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")

    walk(root, "spec")
    return out


def applied_defaults() -> dict[str, Any]:
    """What the operator does with a spec that sets none of the optional fields."""
    spec = parse_spec(MINIMAL)
    deployment, service, _ = b.children(spec, b.Owner("x", "ml", "uid"), "flash", "policy/v1")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    startup = container["startupProbe"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    gpu_term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    family = gpu_term["nodeSelectorTerms"][0]["matchExpressions"][-1]
    view = fallback_spec(spec)
    return {
        "spec.replicas": deployment["spec"]["replicas"],
        "spec.attention": view.attention,
        "spec.image.pullPolicy": container["imagePullPolicy"],
        "spec.fallback.enabled": view.enabled,
        "spec.fallback.crashLoopRestarts": view.crash_loop_restarts,
        "spec.fallback.crashLoopWindowSeconds": view.crash_loop_window_seconds,
        "spec.runtime.maxBatchSize": env["MAX_BATCH_SIZE"],
        "spec.runtime.maxModelLength": env["MAX_MODEL_LENGTH"],
        "spec.runtime.dtype": env["DTYPE"],
        "spec.runtime.shmSize": shm["emptyDir"]["sizeLimit"],
        "spec.runtime.startupTimeoutSeconds": startup["failureThreshold"] * startup["periodSeconds"],
        "spec.gpu.count": container["resources"]["limits"]["nvidia.com/gpu"],
        # the featureDiscovery selector: the Hopper family's GPU Feature Discovery label
        "spec.gpu.selector": "featureDiscovery"
        if family == {"key": "nvidia.com/gpu.family", "operator": "In", "values": ["hopper"]}
        else family,
        "spec.terminationGracePeriodSeconds": pod["terminationGracePeriodSeconds"],
        "spec.service.type": service["spec"]["type"],
        "spec.service.port": service["spec"]["ports"][0]["port"],
    }


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)


def test_every_documented_default_is_the_one_the_operator_applies() -> None:
    documented, applied = documented_defaults(), applied_defaults()
    assert set(documented) == set(applied), set(documented) ^ set(applied)
    for path, value in applied.items():
        assert documented[path] == shown(value), (path, documented[path], value)


def test_the_builders_apply_the_models_defaults() -> None:
    applied = applied_defaults()
    assert applied["spec.runtime.maxBatchSize"] == str(defaults.DEFAULT_MAX_BATCH_SIZE)
    assert applied["spec.runtime.maxModelLength"] == str(defaults.DEFAULT_MAX_MODEL_LENGTH)
    assert applied["spec.replicas"] == defaults.DEFAULT_REPLICAS == b.replicas(parse_spec(MINIMAL))


def _runtime_knobs(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "runtime": {k: spec["runtime"][k] for k in ("maxBatchSize", "maxModelLength", "dtype")},
        "fallback": spec["fallback"],
    }


def test_the_examples_that_spell_out_the_knobs_spell_out_the_defaults() -> None:
    """examples/omegavlm.yaml and the chart's example values write the runtime and fallback knobs out
    (documentation by example): change a default and they must change with it."""
    expected = {
        "runtime": {
            "maxBatchSize": defaults.DEFAULT_MAX_BATCH_SIZE,
            "maxModelLength": defaults.DEFAULT_MAX_MODEL_LENGTH,
            "dtype": defaults.DEFAULT_DTYPE,
        },
        "fallback": {
            "enabled": defaults.DEFAULT_FALLBACK_ENABLED,
            "crashLoopRestarts": defaults.DEFAULT_CRASH_LOOP_RESTARTS,
            "crashLoopWindowSeconds": defaults.DEFAULT_CRASH_LOOP_WINDOW_SECONDS,
        },
    }
    example = yaml.safe_load((REPO / "examples" / "omegavlm.yaml").read_text())["spec"]
    chart = yaml.safe_load((REPO / "charts" / "omega-vlm" / "values.yaml").read_text())["example"]["spec"]
    assert _runtime_knobs(example) == expected
    assert _runtime_knobs(chart) == expected


def test_the_servers_own_defaults_match_the_operators() -> None:
    """The server (another distribution) has its own MAX_BATCH_SIZE / MAX_MODEL_LENGTH defaults for
    when it runs without the operator; they must say what the operator sets."""
    from omega_server.settings import Settings

    fields = Settings.model_fields
    assert fields["max_batch_size"].default == defaults.DEFAULT_MAX_BATCH_SIZE
    assert fields["max_model_length"].default == defaults.DEFAULT_MAX_MODEL_LENGTH
