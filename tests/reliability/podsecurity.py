"""The Pod Security "restricted" profile, plus the extras the operator promises, as a checker."""

from __future__ import annotations

from typing import Any

from autoglm_operator import labels


def talks_to_the_api(deployment: dict[str, Any]) -> bool:
    """The endpoint picker watches pods and its InferencePool with its own ServiceAccount's token
    (as the operator does); the model pods never need one."""
    pod_labels = (deployment["spec"]["template"].get("metadata") or {}).get("labels") or {}
    return pod_labels.get("app.kubernetes.io/component") == labels.PICKER_COMPONENT


def restricted_problems(deployment: dict[str, Any], *, api_client: bool | None = None) -> list[str]:
    """Why the Deployment's pods would not run restricted (empty = fine). ``api_client``: the pods
    may mount their ServiceAccount token (the operator); by default only the endpoint picker may."""
    pod = deployment["spec"]["template"]["spec"]
    psc = pod.get("securityContext") or {}
    out = []
    if api_client is None:
        api_client = talks_to_the_api(deployment)
    if pod.get("automountServiceAccountToken") is not False and not api_client:
        out.append("automountServiceAccountToken is not false")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            out.append(f"{flag} is set")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"hostPath volume {volume.get('name')}")
    for container in [*(pod.get("initContainers") or []), *pod["containers"]]:
        name = container.get("name")
        csc = container.get("securityContext") or {}

        def setting(key: str, csc: dict[str, Any] = csc) -> Any:
            return csc.get(key, psc.get(key))

        if setting("runAsNonRoot") is not True:
            out.append(f"{name}: runAsNonRoot is not true")
        if setting("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        if csc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem is not true")
        if csc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if csc.get("privileged"):
            out.append(f"{name}: privileged")
        caps = csc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities.drop lacks ALL")
        if caps.get("add"):
            out.append(f"{name}: adds capabilities {caps['add']}")
        if (setting("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile is not RuntimeDefault")
    return out
