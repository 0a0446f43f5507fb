"""`python -m omega_operator` / `omega-vlm-operator`: run the operator.

Talks to the cluster of KUBECONFIG when set (else ~/.kube/config, or the service account inside
a pod). Settings come from OMEGA_OPERATOR_* environment variables (see omega_operator.settings).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any, cast

import kopf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="omega-vlm-operator", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kopf logs every handler run at INFO (pod events included); keep its warnings and errors.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Import registers the handlers.
    from omega_operator import handlers

    s = handlers.SETTINGS
    asyncio.run(_wait_for_api())
    liveness = f"http://0.0.0.0:{s.liveness_port}/healthz" if s.liveness_port else None
    kopf.run(
        standalone=s.peering is None,
        peering_name=s.peering,
        clusterwide=not s.namespaces,
        namespaces=s.namespaces,
        liveness_endpoint=liveness,
        # kopf's Identity is a NewType of str it does not export; the refresh loop's gate knows it too.
        identity=cast(Any, handlers.PEER.identity),
        priority=handlers.PEER.priority,
    )


async def _wait_for_api() -> None:
    """Until the API server serves what the operator watches (``api_ready``): kopf lists it once."""
    from omega_operator import api_ready
    from omega_operator.credentials import load_credentials
    from omega_operator.kube import Kube

    kube = Kube(load_credentials())
    try:
        await api_ready.wait_until_served(kube)
    finally:
        await kube.close()


if __name__ == "__main__":
    main()
