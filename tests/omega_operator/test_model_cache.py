"""spec.model.cache: the cache volume, the download init container, the created claim, validation."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from omega_operator import builders as b
from omega_operator import model_cache as mc
from omega_operator.api import InvalidSpec, parse_spec

OWNER = b.Owner(name="captioner", namespace="ml", uid="1234-uid")


def _spec(uri: str = "hf://org/tiny@v1", cache: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"name": "tiny", "uri": uri}
    if cache is not None:
        model["cache"] = cache
    return {"model": model, "image": {"repository": "reg/omega-vlm-server", "tag": "1"}, **extra}


def _pod(raw: dict[str, Any], variant: str = "flash") -> dict[str, Any]:
    return b.deployment(parse_spec(raw), OWNER, variant)["spec"]["template"]["spec"]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize("variant", ["flash", "sdpa"])
def test_existing_claim_download_init_container_and_offline_server(variant: str) -> None:
    pod = _pod(
        _spec(cache={"claimName": "weights"}, env=[{"name": "HF_ENDPOINT", "value": "http://hub"}]), variant
    )
    (init,) = pod["initContainers"]
    server = pod["containers"][0]
    # the same image as the server (either variant reads and fills the same cache)
    assert init["name"] == mc.INIT_CONTAINER and init["image"] == server["image"]
    assert server["image"].endswith(f"-{variant}")
    assert init["args"] == ["download"] and "command" not in init  # the image's entrypoint
    assert {"name": mc.VOLUME, "persistentVolumeClaim": {"claimName": "weights"}} in pod["volumes"]
    for c in (init, server):
        assert {"name": mc.VOLUME, "mountPath": mc.HF_HOME} in c["volumeMounts"]
        assert _env(c)["HF_HOME"] == mc.HF_HOME and _env(c)["MODEL_PATH"] == "hf://org/tiny@v1"
        assert _env(c)["HF_ENDPOINT"] == "http://hub"  # the user's env reaches the download
    assert _env(server)["HF_HUB_OFFLINE"] == "1" and _env(init)["HF_HUB_OFFLINE"] == "0"
    assert "startupProbe" not in init and "lifecycle" not in init and "ports" not in init
    assert init["securityContext"] == server["securityContext"]
    assert (
        pod["securityContext"]["fsGroup"] == b.SERVER_IMAGE_GID
    )  # the volume is writable by the image's user
    kubernetes_validate.validate(
        b.deployment(parse_spec(_spec(cache={"claimName": "w"})), OWNER, "sdpa"), "1.25", strict=True
    )


def test_created_claim_is_owned_and_sized() -> None:
    spec = parse_spec(_spec(cache={"size": "70Gi", "storageClass": "fast"}))
    pvc = mc.claim(spec, OWNER)
    assert pvc is not None
    assert pvc["metadata"]["name"] == "captioner-model-cache"
    assert pvc["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "70Gi"}},
        "storageClassName": "fast",
    }
    kubernetes_validate.validate(pvc, "1.25", strict=True)
    pod = b.deployment(spec, OWNER, "flash")["spec"]["template"]["spec"]
    assert {"name": mc.VOLUME, "persistentVolumeClaim": {"claimName": "captioner-model-cache"}} in pod[
        "volumes"
    ]
    rwo = parse_spec(_spec(cache={"size": 10**9, "accessMode": "ReadWriteOnce"}))
    assert (mc.claim(rwo, OWNER) or {})["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in (mc.claim(rwo, OWNER) or {})["spec"]  # the cluster's default class
    assert mc.claim(parse_spec(_spec(cache={"claimName": "mine"})), OWNER) is None


def test_no_cache_is_an_empty_dir_per_pod_with_a_warning() -> None:
    spec = parse_spec(_spec())
    pod = b.deployment(spec, OWNER, "flash")["spec"]["template"]["spec"]
    assert {"name": mc.VOLUME, "emptyDir": {}} in pod["volumes"]
    assert pod["initContainers"][0]["name"] == mc.INIT_CONTAINER  # still not inside the startup probe
    warning = mc.no_cache_warning(spec)
    assert warning and "spec.model.cache" in warning and "every pod start" in warning
    assert mc.no_cache_warning(parse_spec(_spec(cache={"claimName": "w"}))) is None


@pytest.mark.parametrize("uri", ["pvc://weights/m", "file:///models/m"])
def test_non_hub_models_have_no_download(uri: str) -> None:
    spec = parse_spec(_spec(uri=uri))
    pod = b.deployment(spec, OWNER, "flash")["spec"]["template"]["spec"]
    assert "initContainers" not in pod and all(v["name"] != mc.VOLUME for v in pod["volumes"])
    assert "HF_HOME" not in _env(pod["containers"][0]) and mc.no_cache_warning(spec) is None


@pytest.mark.parametrize(
    ("uri", "cache", "words"),
    [
        ("file:///models/m", {"claimName": "w"}, "pvc:// or file://"),
        ("pvc://weights/m", {"size": "1Gi"}, "pvc:// or file://"),
        ("hf://org/m", {"claimName": "w", "size": "1Gi"}, "not both"),
        ("hf://org/m", {"claimName": "w", "accessMode": "ReadWriteOnce"}, "not both"),
        ("hf://org/m", {"storageClass": "fast"}, "not both"),
        ("hf://org/m", {}, "not both"),
    ],
)
def test_bad_cache_combinations_name_the_field(uri: str, cache: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(_spec(uri=uri, cache=cache))
    assert err.value.fields == ["spec.model.cache"] and words in str(err.value)


@pytest.mark.parametrize("name", ["HF_HOME", "HF_HUB_OFFLINE"])
def test_cache_env_is_the_operators(name: str) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_spec(_spec(env=[{"name": name, "value": "x"}]))
    assert err.value.fields == ["spec.env[0].name"]


def test_the_hf_cache_example_is_valid() -> None:
    from pathlib import Path

    import yaml

    example = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "examples" / "omegavlm-hf-cache.yaml").read_text()
    )
    spec = parse_spec(example["spec"])
    owner = b.Owner(example["metadata"]["name"], example["metadata"]["namespace"], "uid")
    pvc = mc.claim(spec, owner)
    assert pvc is not None and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    kubernetes_validate.validate(pvc, "1.25", strict=True)
    kubernetes_validate.validate(b.deployment(spec, owner, "flash"), "1.25", strict=True)
