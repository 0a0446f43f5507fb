"""The chart without a cluster: lint, schema, rendering validated against Kubernetes' schemas, RBAC
shape, the operator Deployment, hooks, and the CRD copy."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart.helm import CHART, CI_VALUES, REPO, by_kind, crd_documents, one, render, run_helm

VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["defaults", *[p.name for p in CI_VALUES]]
K8S_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
# Kinds that Kubernetes' own schemas do not cover: prometheus-operator's and kopf's (checked for
# shape only), and ours (checked against the CRD's openAPIV3Schema instead).
MONITORING = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),  # its rules: tests/monitoring/test_alert_rules.py
}
KOPF = {("kopf.dev/v1", "KopfPeering"), ("kopf.dev/v1", "ClusterKopfPeering")}


def test_ci_values_exist() -> None:
    assert len(CI_VALUES) >= 3, CI_VALUES


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    out = run_helm(*args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("bogus=1", "Additional property bogus is not allowed"),
        ("operator.bogus=1", "Additional property bogus is not allowed"),
        ("operator.image.bogus=x", "Additional property bogus is not allowed"),
        ("operator.probe.mode=sideways", "operator.probe.mode"),
        ("operator.watch.namespaces[0]=Not_A_Namespace", "operator.watch.namespaces.0"),
        ("operator.liveness.port=0", "operator.liveness.port"),
        ("operator.extraEnv[0].name=OMEGA_OPERATOR_NAMESPACES", "operator.extraEnv.0.name"),
    ],
)
def test_schema_rejects_bad_values(flag: str, message: str) -> None:
    proc = run_helm("template", "x", str(CHART), "--set", flag, check=False)
    assert proc.returncode != 0, f"--set {flag} was accepted"
    assert message in proc.stderr, proc.stderr


def _documented(lines: list[str]) -> list[str]:
    """Key paths in values.yaml that have no `# --` comment on themselves or an ancestor."""
    missing: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment = False
    for raw in lines:
        line = raw.rstrip()
        stripped = line.lstrip()
        if not stripped:
            continue
        if stripped.startswith("# --"):
            comment = True
            continue
        if stripped.startswith("#"):
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+):(.*)$", line)
        if not m:
            continue  # a list item or a continued value
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inherited = any(d for _, _, d in stack)
        documented = comment or inherited
        path = ".".join([k for _, k, _ in stack] + [key])
        is_leaf = rest != ""
        if is_leaf and not documented:
            missing.append(path)
        stack.append((indent, key, documented))
        comment = False
    return missing


def test_every_value_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    assert _documented(text.splitlines()) == []
    # A nested map without its own comment must have documented children: check one known leaf.
    assert _documented(["a:", "  b: 1"]) == ["a.b"]


def test_schema_is_strict_everywhere() -> None:
    """Every object in values.schema.json is closed, except the documented pass-through maps."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_maps: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '<root>'} is not strict"
            for key, sub in node["properties"].items():
                walk(sub, f"{path}.{key}" if path else key)
        elif node.get("type") == "object":
            open_maps.append(path)
        if "description" not in node and path:
            raise AssertionError(f"{path} has no description")

    walk(schema, "")
    # The open maps are Kubernetes objects or label/annotation maps passed through as they are.
    assert all(
        re.search(
            r"(Labels|labels|Annotations|annotations|Selector|affinity|SecurityContext|securityContext|"
            r"requests|limits|spec|global)$",
            p,
        )
        for p in open_maps
    ), open_maps


def _validate_k8s(doc: dict[str, Any], crds: dict[tuple[str, str], dict[str, Any]]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in MONITORING:
        assert doc["spec"], doc
        return
    if key in KOPF:
        assert set(doc) == {"apiVersion", "kind", "metadata"}, doc
        assert ("namespace" in doc["metadata"]) == (doc["kind"] == "KopfPeering"), doc
        return
    if key in crds:
        group_version = crds[key]
        jsonschema.validate(doc, group_version)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for crd in crd_documents():
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    return out


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_rendered_manifests_validate(values: Path | None) -> None:
    docs = render(values=values)
    assert docs
    crds = _crd_schemas()
    for doc in docs:
        try:
            _validate_k8s(doc, crds)
        except Exception as exc:  # name the document in the failure
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']}: {exc}") from exc
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "omega-vlm"


def test_operator_deployment() -> None:
    dep = one(render(), "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == one(render(), "ServiceAccount")["metadata"]["name"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("privileged") is False
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert ports == {"liveness": 8080, "metrics": 9090}
    assert "args" not in c
    assert c["resources"]["limits"]["memory"]


def _operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in c["env"]}


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_operator_env_matches_operator_settings(values: Path | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every OMEGA_OPERATOR_* the chart sets is a field of OperatorSettings and parses there."""
    from omega_operator.settings import OperatorSettings

    env = _operator_env(render(values=values))
    prefix = "OMEGA_OPERATOR_"
    fields = {f"{prefix}{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    vals = yaml.safe_load((values or CHART / "values.yaml").read_text()) if values else {}
    namespaces = ((vals.get("operator") or {}).get("watch") or {}).get("namespaces", [])
    assert settings.namespaces == namespaces
    peering = (vals.get("operator") or {}).get("peering") or {}
    assert settings.peering == (peering.get("name") if peering.get("enabled") else None)


def test_operator_env_follows_values() -> None:
    docs = render(
        "--set",
        "operator.watch.namespaces={a,b}",
        "--set",
        "operator.probe.mode=proxy",
        "--set",
        "operator.probe.intervalSeconds=7",
        "--set",
        "operator.liveness.port=18080",
        "--set",
        "operator.verbose=true",
    )
    env = _operator_env(docs)
    assert env["OMEGA_OPERATOR_NAMESPACES"] == "a,b"
    assert env["OMEGA_OPERATOR_HEALTH_PROBE_MODE"] == "proxy"
    assert env["OMEGA_OPERATOR_PROBE_INTERVAL"] == "7"
    assert env["OMEGA_OPERATOR_LIVENESS_PORT"] == "18080"
    (c,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["--verbose"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["liveness"] == 18080


def _rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def _assert_least_privilege(role: dict[str, Any]) -> None:
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], (
            rule
        )
        assert not {"secrets", "configmaps", "nodes", "clusterroles", "roles"} & set(rule["resources"]), rule
        assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule


def test_rbac_all_namespaces() -> None:
    docs = render()
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole")}
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []
    main = _rules(roles["omega-omega-vlm-operator"])
    cluster = _rules(roles["omega-omega-vlm-operator-cluster"])
    for role in roles.values():
        _assert_least_privilege(role)
    assert main[("vlm.omega.io", "omegavlms")] == {"list", "watch", "patch"}
    assert main[("vlm.omega.io", "omegavlms/status")] >= {"patch"}
    assert main[("apps", "deployments")] == {"list", "watch", "create", "patch"}
    assert main[("", "services")] == {"list", "watch", "create", "patch"}
    assert main[("policy", "poddisruptionbudgets")] >= {"create", "patch", "delete", "list", "watch"}
    assert main[("", "pods")] == {"list", "watch"}
    # auto probing by default: the pod proxy after a failed direct connection
    assert main[("", "pods/proxy")] == {"get"}
    assert main[("", "events")] == {"create"}  # Events are only ever posted (kube.py, kopf)
    assert ("events.k8s.io", "events") not in main
    assert cluster == {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
    sa = one(docs, "ServiceAccount")["metadata"]["name"]
    for binding in by_kind(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": "omega-system"}]
    assert {b["roleRef"]["name"] for b in by_kind(docs, "ClusterRoleBinding")} == set(roles)


def test_rbac_namespace_list() -> None:
    values = CHART / "ci" / "namespaced-values.yaml"
    docs = render(values=values)
    namespaces = yaml.safe_load(values.read_text())["operator"]["watch"]["namespaces"]
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(namespaces)
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == sorted(namespaces)
    for role in roles:
        _assert_least_privilege(role)
        rules = _rules(role)
        assert rules[("", "pods/proxy")] == {"get"}  # proxy-mode probes
        assert rules[("kopf.dev", "kopfpeerings")] >= {"list", "watch", "patch"}
    (cluster,) = by_kind(docs, "ClusterRole")  # only the framework's read-only cluster rules
    assert _rules(cluster) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
        ("", "namespaces"): {"list", "watch"},
    }


def test_every_rbac_rule_is_commented() -> None:
    """A comment above each rule names the code path that needs it."""
    text = (CHART / "templates" / "_rbac_rules.tpl").read_text() + (
        CHART / "templates" / "rbac.yaml"
    ).read_text()
    lines = text.splitlines()
    rule_lines = [i for i, line in enumerate(lines) if line.strip().startswith("- apiGroups:")]
    assert len(rule_lines) >= 10
    for i in rule_lines:
        prev = next(lines[j].strip() for j in range(i - 1, -1, -1) if not lines[j].strip().startswith("{{"))
        assert prev.startswith("#"), f"rule at line {i + 1} has no comment: {lines[i]}"
    assert 'resources: ["events"]' in text and "customresourcedefinitions" in text


def test_external_rbac_renders_no_rbac_and_uses_given_sa() -> None:
    docs = render(values=CHART / "ci" / "external-rbac-values.yaml")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Pod",
    }
    dep = one(docs, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "omega-vlm-operator-managed"


def test_serviceaccount_name_required_when_not_created() -> None:
    proc = run_helm("template", "x", str(CHART), "--set", "serviceAccount.create=false", check=False)
    assert proc.returncode != 0 and "serviceAccount.name is required" in proc.stderr


def test_image_reference() -> None:
    dep = one(render(values=CHART / "ci" / "upgrade-job-values.yaml"), "Deployment")
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "omega-vlm/omega-vlm-operator:0.1.0@sha256:" + "0" * 64
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    dep = one(render(), "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":" + chart["appVersion"])


def test_crds_in_chart_are_a_byte_copy_of_the_top_level_crds() -> None:
    top = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert top, "crds/ is empty: run python -m omega_operator.crdgen"
    assert chart == top
    (crd,) = crd_documents()
    assert crd["metadata"]["name"] == "omegavlms.vlm.omega.io"


def test_crd_upgrade_hook_job() -> None:
    docs = render(values=CHART / "ci" / "upgrade-job-values.yaml")
    job = one(docs, "Job")
    hooks = job["metadata"]["annotations"]
    assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
    cm = one(docs, "ConfigMap", "omega-omega-vlm-crds")
    for path in (CHART / "crds").glob("*.yaml"):
        assert cm["data"][path.name] == path.read_text()
    # The hook's pieces exist before the Job runs (lower weight) and are cleaned up after.
    for doc in docs:
        if doc["metadata"].get("annotations", {}).get("helm.sh/hook") == "pre-install,pre-upgrade":
            weight = int(doc["metadata"]["annotations"]["helm.sh/hook-weight"])
            assert weight < int(hooks["helm.sh/hook-weight"]) or doc is job
            assert "hook-succeeded" in doc["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    role = one(docs, "ClusterRole", "omega-omega-vlm-crds")
    named = [r for r in role["rules"] if r.get("resourceNames")]
    assert named and named[0]["resourceNames"] == ["omegavlms.vlm.omega.io"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["kubectl"] and c["args"][:2] == ["apply", "--validate=false"]
    assert c["args"][-2:] == ["-f", "/crds/"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "omega-omega-vlm-crds"


def test_helm_test_hook_runs_the_check_script() -> None:
    pod = one(render(), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (c,) = pod["spec"]["containers"]
    assert c["command"][:2] == ["python", "-c"]
    assert c["command"][2] == (CHART / "files" / "check_release.py").read_text()
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["OMEGA_TEST_LIVENESS_URL"] == "http://omega-omega-vlm-operator.omega-system.svc:8080/healthz"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert "$(" not in c["command"][2]  # the kubelet would expand $(VAR) in it


def test_monitoring_objects() -> None:
    docs = render(values=CHART / "ci" / "monitoring-values.yaml")
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert (
        sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["honorLabels"] is True
    )
    pm = one(docs, "PodMonitor")
    from omega_operator import builders

    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": builders.APP_NAME}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == builders.PORT_NAME
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert sm["metadata"]["labels"]["release"] == pm["metadata"]["labels"]["release"] == "prometheus"
    example = one(docs, "OmegaVLM")
    assert example["metadata"]["name"] == "ci-example"
    assert one(docs, "ConfigMap")["metadata"]["namespace"] == "monitoring"


def test_example_matches_examples_folder() -> None:
    """The chart's example spec is a valid OmegaVLM by the same CRD the operator generates."""
    docs = render("--set", "example.enabled=true")
    example = one(docs, "OmegaVLM")
    jsonschema.validate(example, _crd_schemas()[("vlm.omega.io/v1alpha1", "OmegaVLM")])


def test_peering_objects() -> None:
    """Peering on: the peering object(s) kopf announces itself on, named as the operator's setting."""
    assert not [d for d in render() if d["apiVersion"].startswith("kopf.dev/")]
    docs = render("--set", "operator.peering.enabled=true", "--set", "operator.peering.name=ring")
    (peering,) = [d for d in docs if d["apiVersion"] == "kopf.dev/v1"]
    assert peering["kind"] == "ClusterKopfPeering" and peering["metadata"]["name"] == "ring"
    assert _operator_env(docs)["OMEGA_OPERATOR_PEERING"] == "ring"
    cluster = _rules(one(docs, "ClusterRole", "omega-omega-vlm-operator-cluster"))
    assert cluster[("kopf.dev", "clusterkopfpeerings")] >= {"list", "watch", "patch"}
    docs = render(values=CHART / "ci" / "namespaced-values.yaml")
    peerings = [d for d in docs if d["apiVersion"] == "kopf.dev/v1"]
    assert sorted((d["kind"], d["metadata"]["namespace"]) for d in peerings) == [
        ("KopfPeering", "team-a"),
        ("KopfPeering", "team-b"),
    ]
