"""How the operator reaches and authenticates to the API server: loaded here, and only here.

The API client (:mod:`omega_operator.kube`) and the pod-proxy /health prober
(:mod:`omega_operator.prober`) share one :class:`Credentials`. A bearer token read from a file (the
in-cluster ServiceAccount token, or a kubeconfig user's ``tokenFile``) is re-read when the file
changes: the kubelet rewrites the projected ServiceAccount token long before it expires (about an
hour), so a token read once at start turns into 401s forever. The file is checked (``stat``) at
most every ``recheck_s`` seconds, and a 401 forces a re-read (the caller retries once when the
token changed). A token given directly (a kubeconfig's ``token:``) is used as it is.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config import incluster_config
from kubernetes.config.kube_config import KUBE_CONFIG_DEFAULT_LOCATION, KubeConfigMerger

log = logging.getLogger(__name__)

SA_TOKEN_FILE = incluster_config.SERVICE_TOKEN_FILENAME
SA_CA_FILE = incluster_config.SERVICE_CERT_FILENAME
RECHECK_S = 5.0


class Credentials:
    """The API server's address, TLS settings and ``Authorization`` header.

    ``authorization`` is a fixed header value (``"Bearer <token>"``); with ``token_file`` the header
    comes from that file instead and follows its rewrites.
    """

    def __init__(
        self,
        host: str,
        authorization: str | None = None,
        ssl_context: ssl.SSLContext | bool = True,
        *,
        token_file: str | os.PathLike[str] | None = None,
        recheck_s: float = RECHECK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host.rstrip("/")
        self.ssl_context = ssl_context
        self.token_file = str(token_file) if token_file is not None else None
        self.recheck_s = recheck_s
        self._clock = clock
        self._static = authorization
        self._token: str | None = None
        self._stat: tuple[int, int, int] | None = None
        self._checked = float("-inf")
        self.reads = 0  # how many times the token file was read (for tests and debugging)
        if self.token_file is not None:
            self._read()

    @property
    def rotating(self) -> bool:
        """True when the token comes from a file (and may change)."""
        return self.token_file is not None

    def authorization(self) -> str | None:
        """The ``Authorization`` header value for the next request."""
        if self.token_file is None:
            return self._static
        now = self._clock()
        if now - self._checked >= self.recheck_s:
            self._checked = now
            if self._file_stat() != self._stat:
                self._read()
        return f"Bearer {self._token}" if self._token else None

    def reload(self) -> bool:
        """Re-read the token file now (after a 401). True when the token changed: worth a retry."""
        if self.token_file is None:
            return False
        before = self._token
        self._checked = self._clock()
        self._read()
        return self._token != before

    def _file_stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.token_file) if self.token_file else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino) if st else None

    def _read(self) -> None:
        assert self.token_file is not None
        stat = self._file_stat()
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:  # keep the last good token; the next check tries again
            log.warning("could not read the token file %s: %s", self.token_file, exc)
            return
        self.reads += 1
        if not token:
            log.warning("token file %s is empty; keeping the last token", self.token_file)
            return
        if self._token is not None and token != self._token:
            log.info("bearer token re-read from %s", self.token_file)
        self._token, self._stat = token, stat

    def __repr__(self) -> str:
        source = (
            f"token_file={self.token_file!r}" if self.token_file else f"static={self._static is not None}"
        )
        return f"Credentials(host={self.host!r}, {source})"


def from_configuration(cfg: Any, token_file: str | None = None) -> Credentials:
    """Credentials from a ``kubernetes.client.Configuration`` (its token fixed unless ``token_file``)."""
    api_key = getattr(cfg, "api_key", None) or {}
    auth = api_key.get("authorization") or api_key.get("BearerToken")
    if auth and not auth.lower().startswith("bearer "):
        auth = f"Bearer {auth}"
    ctx: ssl.SSLContext | bool
    if not getattr(cfg, "verify_ssl", True):
        ctx = False
    else:
        ca = getattr(cfg, "ssl_ca_cert", None)
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        if getattr(cfg, "cert_file", None):
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    return Credentials(str(cfg.host), None if token_file else auth, ctx, token_file=token_file)


def load_credentials(
    kubeconfig: str | None = None,
    *,
    sa_token_file: str = SA_TOKEN_FILE,
    sa_ca_file: str = SA_CA_FILE,
) -> Credentials:
    """KUBECONFIG (or the given file) when present, else the in-cluster ServiceAccount."""
    cfg = k8s_client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_kube_config(config_file=path, client_configuration=cfg)
        return from_configuration(cfg, token_file=_kubeconfig_token_file(path))
    incluster_config.InClusterConfigLoader(
        token_filename=sa_token_file, cert_filename=sa_ca_file, try_refresh_token=False
    ).load_and_set(cfg)
    return from_configuration(cfg, token_file=sa_token_file)


def _kubeconfig_token_file(path: str | None) -> str | None:
    """The current user's ``tokenFile`` (absolute), when the kubeconfig gives one instead of a token."""
    try:
        merged = KubeConfigMerger(path or os.path.expanduser(KUBE_CONFIG_DEFAULT_LOCATION)).config
        context = merged["contexts"].get_with_name(merged["current-context"])["context"]
        user = merged["users"].get_with_name(context["user"])["user"]
        if "tokenFile" not in user:
            return None
        base = os.path.dirname(os.path.abspath(user.path)) if user.path else ""
        return os.path.join(base, os.path.expanduser(str(user["tokenFile"])))
    except Exception as exc:  # an unusual kubeconfig: its token was loaded once, as kubectl would
        log.debug("no tokenFile in the kubeconfig: %s", exc)
        return None
