"""`helm test` check of an omega-vlm release (runs in the operator image, as the operator's SA).

1. The OmegaVLM API (vlm.omega.io/v1alpha1, omegavlms) is served, and OmegaVLMs can be listed in
   the release namespace with the operator's permissions.
2. The operator's liveness endpoint answers 200 (retried for up to OMEGA_TEST_WAIT_SECONDS).

Environment: OMEGA_TEST_NAMESPACE, OMEGA_TEST_LIVENESS_URL, OMEGA_TEST_WAIT_SECONDS (default 60).
In a pod it uses the in-cluster config; elsewhere KUBECONFIG. Exits 0 when all checks pass.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from kubernetes import client, config

GROUP, VERSION, PLURAL = "vlm.omega.io", "v1alpha1", "omegavlms"


def load_config() -> None:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        config.load_kube_config()


def check_api(namespace: str) -> str:
    resources = client.CustomObjectsApi().get_api_resources(GROUP, VERSION)
    names = {r.name for r in resources.resources}
    if PLURAL not in names:
        raise RuntimeError(f"{GROUP}/{VERSION} is served but has no {PLURAL} (has {sorted(names)})")
    listed: Any = client.CustomObjectsApi().list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return f"{GROUP}/{VERSION} {PLURAL} served; {len(listed.get('items', []))} in namespace {namespace}"


def check_liveness(url: str, wait_seconds: float) -> str:
    deadline = time.monotonic() + wait_seconds
    last = "no attempt"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return f"operator liveness {url} answered 200"
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"operator liveness {url} did not answer 200 in {wait_seconds:.0f}s: {last}")
        time.sleep(2)


def main() -> int:
    namespace = os.environ.get("OMEGA_TEST_NAMESPACE", "default")
    url = os.environ["OMEGA_TEST_LIVENESS_URL"]
    wait = float(os.environ.get("OMEGA_TEST_WAIT_SECONDS", "60"))
    try:
        load_config()
        print("ok:", check_api(namespace), flush=True)
        print("ok:", check_liveness(url, wait), flush=True)
    except Exception as exc:
        print(f"FAIL: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
