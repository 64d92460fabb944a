"""The Pod Security Standards' "baseline" and "restricted" levels as checks on a pod spec, field by
field, so rendered pods can be tested without an API server's Pod Security admission.

Source: https://kubernetes.io/docs/concepts/security/pod-security-standards/ (the controls below
are named as there). Restricted's volume list also admits `image` volumes: Pod Security admission
allows them at "restricted" since image volumes exist (Kubernetes 1.31+); they are read-only
content from a registry, like a configMap. Controls about fields radixserve never sets (AppArmor,
SELinux options, /proc mount type, sysctls, Windows host process) are checked as "absent".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

BASELINE_CAPABILITIES = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})
RESTRICTED_VOLUMES = frozenset({
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
    "image",
})


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(key) or []:
            yield f"{key}[{c.get('name')}]", c


def baseline_violations(pod: dict[str, Any]) -> list[str]:
    out = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):  # Host Namespaces
        if pod.get(field):
            out.append(f"spec.{field}")
    if (pod.get("securityContext") or {}).get("windowsOptions", {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess")  # HostProcess
    for v in pod.get("volumes") or []:  # HostPath Volumes
        if "hostPath" in v:
            out.append(f"spec.volumes[{v['name']}].hostPath")
    if (pod.get("securityContext") or {}).get("sysctls"):
        out.append("spec.securityContext.sysctls")  # Sysctls (none set: radixserve needs none)
    for where, c in _containers(pod):
        out += _baseline_container(where, c)
    return out


def _baseline_container(where: str, c: dict[str, Any]) -> list[str]:
    out = []
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):  # Privileged Containers
        out.append(f"{where}.securityContext.privileged")
    added = set((sc.get("capabilities") or {}).get("add") or [])
    if added - BASELINE_CAPABILITIES:  # Capabilities
        out.append(f"{where}.securityContext.capabilities.add {sorted(added - BASELINE_CAPABILITIES)}")
    if any(p.get("hostPort") for p in c.get("ports") or []):  # Host Ports
        out.append(f"{where}.ports[].hostPort")
    if sc.get("procMount", "Default") != "Default":  # /proc Mount Type
        out.append(f"{where}.securityContext.procMount")
    if sc.get("appArmorProfile", {}).get("type") == "Unconfined":  # AppArmor
        out.append(f"{where}.securityContext.appArmorProfile")
    if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":  # Seccomp (baseline: not Unconfined)
        out.append(f"{where}.securityContext.seccompProfile")
    return out


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    out = baseline_violations(pod)
    pod_sc = pod.get("securityContext") or {}
    for v in pod.get("volumes") or []:  # Volume Types
        kinds = set(v) - {"name"}
        if kinds - RESTRICTED_VOLUMES:
            out.append(f"spec.volumes[{v['name']}] type {sorted(kinds - RESTRICTED_VOLUMES)}")
    if pod_sc.get("runAsUser") == 0:  # Running as Non-root user
        out.append("spec.securityContext.runAsUser=0")
    for where, c in _containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:  # Privilege Escalation
            out.append(f"{where}.securityContext.allowPrivilegeEscalation must be false")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):  # Running as Non-root
            out.append(f"{where}: runAsNonRoot must be true (container or pod)")
        if sc.get("runAsUser") == 0:
            out.append(f"{where}.securityContext.runAsUser=0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):  # Seccomp (restricted: must be set)
            out.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost (container or pod)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):  # Capabilities (restricted)
            out.append(f"{where}.securityContext.capabilities.drop must include ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{where}.securityContext.capabilities.add may hold only NET_BIND_SERVICE")
    return out
