"""The Pod Security Standards' "restricted" profile (which includes "baseline"), as published by
Kubernetes (https://kubernetes.io/docs/concepts/security/pod-security-standards/, v1.30 rules), checked
field by field against a pod spec. A test oracle: devcluster's 1.20 API server has no PodSecurity
admission, so the tests check what the operator and the chart build against the rules themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: baseline: capabilities a container may add.
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
#: baseline: the only sysctls a pod may set.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
#: restricted: the only volume types.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(kind) or []:
            yield f"{kind}[{c.get('name')}]", c


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every rule of the restricted profile that ``pod`` (a PodSpec) breaks, as 'field: why'."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    # --- baseline
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"spec.{key}: must be unset or false")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess: must be false")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls: {sysctl.get('name')} is not a safe sysctl")
    for vol in pod.get("volumes") or []:
        kinds = set(vol) - {"name"}
        if "hostPath" in kinds:
            out.append(f"spec.volumes[{vol.get('name')}]: hostPath is forbidden")
        # --- restricted: volume types
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(
                f"spec.volumes[{vol.get('name')}]: type {sorted(kinds - RESTRICTED_VOLUMES)} not allowed"
            )
    _check_seccomp(out, "spec.securityContext", psc, allow_unset=True)
    _check_selinux(out, "spec.securityContext", psc)
    if psc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser: must not be 0")
    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{where}.securityContext.privileged: must be false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{where}.securityContext.windowsOptions.hostProcess: must be false")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                out.append(f"{where}.ports: hostPort is forbidden")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{where}.securityContext.procMount: must be Default")
        _check_selinux(out, f"{where}.securityContext", sc)
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if added - BASELINE_CAPABILITIES:
            out.append(f"{where}.securityContext.capabilities.add: {sorted(added - BASELINE_CAPABILITIES)}")
        # --- restricted
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{where}.securityContext.allowPrivilegeEscalation: must be false")
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{where}.securityContext.capabilities.drop: must include ALL")
        if added - {"NET_BIND_SERVICE"}:
            out.append(f"{where}.securityContext.capabilities.add: only NET_BIND_SERVICE")
        if sc.get("runAsNonRoot") is False or (
            sc.get("runAsNonRoot") is None and psc.get("runAsNonRoot") is not True
        ):
            out.append(f"{where}.securityContext.runAsNonRoot: must be true (here or on the pod)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}.securityContext.runAsUser: must not be 0")
        if "seccompProfile" in sc:
            _check_seccomp(out, f"{where}.securityContext", sc, allow_unset=False)
        elif "seccompProfile" not in psc:
            out.append(f"{where}.securityContext.seccompProfile: must be set (here or on the pod)")
    return out


def _check_seccomp(out: list[str], where: str, sc: dict[str, Any], *, allow_unset: bool) -> None:
    profile = (sc.get("seccompProfile") or {}).get("type")
    if profile is None and allow_unset:
        return
    if profile not in ("RuntimeDefault", "Localhost"):
        out.append(f"{where}.seccompProfile.type: must be RuntimeDefault or Localhost, not {profile}")


def _check_selinux(out: list[str], where: str, sc: dict[str, Any]) -> None:
    se = sc.get("seLinuxOptions") or {}
    if se.get("type", "") not in SELINUX_TYPES:
        out.append(f"{where}.seLinuxOptions.type: {se.get('type')} not allowed")
    if se.get("user") or se.get("role"):
        out.append(f"{where}.seLinuxOptions: user and role must be unset")
