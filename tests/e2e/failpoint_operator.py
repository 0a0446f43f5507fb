"""Test-only entry point with a crash point: ``python -m tests.e2e.failpoint_operator`` runs the operator
exactly as ``python -m omega_operator`` does, except that the process ends (exit code ``EXIT_CODE``)
right after the first fallback record is written into a status, before the Deployment moves to sdpa.

tests/e2e/test_fallback_restart.py uses it to kill the operator between detection and rollback. The
crash point lives here, in the test harness, wrapped around ``omega_operator.rollback.persist_fallback``:
the operator itself has no crash point, and no setting or variable reaches one.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omega_operator import __main__ as operator_main
from omega_operator import rollback

EXIT_CODE = 86


def install() -> None:
    """Wrap the status write of a rollback record: once it is written, end the process at once."""
    persist = rollback.persist_fallback

    async def persist_then_exit(*args: Any, **kwargs: Any) -> dict[str, Any] | None:
        written = await persist(*args, **kwargs)
        if written is not None:
            logging.getLogger(__name__).error(
                "failpoint: fallback recorded, exiting before the Deployment write"
            )
            logging.shutdown()
            os._exit(EXIT_CODE)
        return written

    rollback.persist_fallback = persist_then_exit


if __name__ == "__main__":
    install()
    operator_main.main()
