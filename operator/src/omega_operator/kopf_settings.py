"""Our typed settings applied to kopf's own (posting, watching, persistence, server-side filters)."""

from __future__ import annotations

import logging

import kopf

from omega_operator import builders as b
from omega_operator.indexes import SELECTOR
from omega_operator.settings import OperatorSettings

#: Prefix of kopf's annotations on OmegaVLMs (handler progress and the last handled spec).
STORAGE_PREFIX = "vlm.omega.io"


def configure(settings: kopf.OperatorSettings, ours: OperatorSettings) -> None:
    """Apply our typed settings to kopf's."""
    # kopf's own per-handler Events ("Handler succeeded") would be API writes on every reconcile.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = b.FIELD_MANAGER
    settings.watching.server_timeout = ours.watch_server_timeout
    settings.watching.client_timeout = ours.watch_client_timeout
    settings.networking.request_timeout = ours.request_timeout
    settings.execution.max_workers = ours.max_workers
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    for plural in ("deployments", "services", "poddisruptionbudgets", "pods"):
        settings.watching.label_selectors[plural] = SELECTOR
