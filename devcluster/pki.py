"""Credentials of one cluster: a CA, the apiserver's serving cert, the service-account key, the admin token.

All made with the machine's ``openssl`` once per state folder and kept there.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

import yaml


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """Create ``ca.crt``, ``apiserver.crt/key`` (for 127.0.0.1/localhost) and ``sa.key/pub`` in ``pki``."""
    if (pki / "apiserver.crt").exists() and (pki / "sa.pub").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    # EC keys: generated in milliseconds (RSA-2048 costs ~0.1-1 s each on a busy 2-core machine).
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=pki)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=devcluster-ca", "-days", "3650",
        "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "apiserver.key", cwd=pki)
    (pki / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-new",
        "-key",
        "apiserver.key",
        "-subj",
        "/CN=kube-apiserver",
        "-out",
        "apiserver.csr",
        cwd=pki,
    )
    _openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-extfile", "san.ext", "-out", "apiserver.crt", cwd=pki,
    )  # fmt: skip
    # The service-account signing key (apiserver verifies and signs with it; RS256 wants RSA).
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def make_token_file(path: Path) -> str:
    """Write the apiserver's static token file with one admin (group system:masters); return the token."""
    if path.exists():
        return path.read_text().split(",", 1)[0]
    token = secrets.token_hex(24)
    path.write_text(f'{token},admin,admin,"system:masters"\n')
    path.chmod(0o600)
    return token


def kubeconfig_dict(
    server: str, token: str, ca_pem: bytes, name: str = "devcluster", namespace: str = "default"
) -> dict:
    """A kubeconfig for ``server`` with a bearer token, verifying the cluster's CA."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": "admin", "namespace": namespace}}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, server: str, token: str, ca_file: Path, namespace: str = "default") -> None:
    """Write a token kubeconfig (mode 0600)."""
    doc = kubeconfig_dict(server, token, ca_file.read_bytes(), namespace=namespace)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
