"""AutoGLMDeployment → Kubernetes objects: a pure function (no I/O, no clock, no randomness).

``render(cr)`` parses the spec, plans memory (torch-free, offline), and fills the jinja2 templates
in ``templates/``. The same CR always gives byte-identical YAML (``Rendered.to_yaml``), which is what
GitOps users diff in CI and what server-side apply sends on every reconcile.

Decisions that shape the pods (the numbers are constants in :mod:`autoglm_operator.pod`):

* **Probes.** The runtime answers ``/healthz`` as soon as the process is up and ``/readyz`` once the
  model is loaded and warm. The startup probe polls ``/readyz`` for a budget sized to the weights
  (checkpoint bytes / 50 MB/s + 120 s, or ``spec.probes.startupTimeoutSeconds``); liveness
  (``/healthz``) only starts after it succeeds, so a pod loading a 9B model is never restarted
  for being slow. Readiness is ``/readyz``.
* **Shutdown.** ``preStop`` is the kubelet's own ``sleep`` action (Kubernetes >= 1.30; the runtime
  image needs no shell): the pod keeps serving while endpoints drop it, then SIGTERM makes the
  runtime stop admitting and drain in-flight requests for ``shutdown_grace_s``.
  ``terminationGracePeriodSeconds`` covers both plus a margin.
* **Replicas.** With autoscaling on, the Deployment has no ``spec.replicas``: the HPA owns it, and
  server-side apply then never resets it.
* **Memory fit.** When the plan does not fit and ``skipFitCheck`` is false, no Deployment, HPA or
  PDB is rendered (no pods that would OOM); the ConfigMap and Service still are.
* **mTLS** (``serving.clientCaSecret``): the kubelet has no client certificate, so the probes fall
  back to TCP checks (see :func:`autoglm_operator.pod.probes`).
* **Owner references** need the CR's uid: offline renders of a file without one carry none.

The pod's pieces are built in :mod:`autoglm_operator.pod`, parsing and errors live in
:mod:`autoglm_operator.spec_errors`, the settings ConfigMap's values in
:mod:`autoglm_operator.runtime_env`, the templates and YAML output in
:mod:`autoglm_operator.manifests`; this module decides which objects a CR becomes, in what order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from typing import Any

from autoglm_operator import autoscaling, labels, pod, routing
from autoglm_operator.api import AutoGLMDeploymentSpec
from autoglm_operator.manifests import dump_json, dump_yaml, fill
from autoglm_operator.memory.types import GIB, GpuInfo, MemoryPlan
from autoglm_operator.pod import gpu_product_label
from autoglm_operator.runtime_env import (
    SETTINGS_CHECKSUM_ANNOTATION,
    runtime_settings,
    setting_source,
    settings_checksum,
)
from autoglm_operator.spec_errors import SpecError, check_metadata, parse_spec
from autoglm_runtime.settings import to_env

__all__ = [
    "OPERATOR_VERSION",
    "SETTINGS_CHECKSUM_ANNOTATION",
    "Rendered",
    "SpecError",
    "dump_json",
    "dump_yaml",
    "gpu_product_label",
    "parse_spec",
    "render",
    "runtime_settings",
    "setting_source",
    "settings_checksum",
]


def _package_version() -> str:
    try:
        return importlib_metadata.version("autoglm")
    except importlib_metadata.PackageNotFoundError:
        return "0.0.0"


OPERATOR_VERSION = _package_version()


# ================================================================================================
# render
# ================================================================================================


@dataclass(frozen=True)
class Rendered:
    """Everything one CR becomes, in apply order."""

    objects: list[dict[str, Any]]
    spec: AutoGLMDeploymentSpec
    plan: MemoryPlan
    settings_checksum: str
    deployment_skipped_reason: str | None

    def to_yaml(self) -> str:
        return dump_yaml(self.objects)

    def to_json(self) -> str:
        return dump_json(self.objects)


def _plan(spec: AutoGLMDeploymentSpec, node_gpu: GpuInfo | None) -> MemoryPlan:
    from autoglm_operator.memory import plan_memory
    from autoglm_operator.memory.errors import MemoryFitError

    try:
        return plan_memory(spec, node_gpu, allow_network=False)
    except MemoryFitError as exc:  # e.g. a model outside the catalog without spec.model.shape
        raise SpecError(exc.field_path, exc.message) from None


def _skip_reason(spec: AutoGLMDeploymentSpec, plan: MemoryPlan) -> str | None:
    if plan.fits or not plan.gpu_known or spec.memory.skip_fit_check:
        return None  # an unknown GPU deploys (explicit mode) with MemoryFit=Unknown
    c = plan.chosen
    # The planner's reason carries the numbers and a suggestion; these are the chosen mode's totals.
    numbers = f"{c.quantization}: {c.total_bytes / GIB:.1f} GiB needed, {c.usable_bytes / GIB:.1f} GiB usable"
    return (
        f"{plan.reason or numbers} [{numbers}]. No pods are created, they would run out of GPU memory: "
        "change the spec, or set spec.memory.skipFitCheck: true to create them anyway"
    )


def render(
    cr: Mapping[str, Any],
    *,
    node_gpu: GpuInfo | None = None,
    plan: MemoryPlan | None = None,
    operator_version: str = OPERATOR_VERSION,
    prometheus_address: str = autoscaling.DEFAULT_PROMETHEUS_ADDRESS,
    spec: AutoGLMDeploymentSpec | None = None,
) -> Rendered:
    """The objects for one AutoGLMDeployment (a dict as read from YAML or received by kopf).

    ``node_gpu`` is the GPU seen on candidate nodes (from GPU feature discovery labels), used by the
    memory planner; ``plan`` skips planning when the caller already has one; ``prometheus_address``
    is where a KEDA ScaledObject's Prometheus trigger queries, unless the spec names one; ``spec``
    is the CR's spec when the caller parsed it already. Raises
    :class:`SpecError` for a CR that cannot be rendered.
    """
    name, namespace = check_metadata(cr)
    if spec is None:
        spec = parse_spec(cr)
    if plan is None:
        plan = _plan(spec, node_gpu)
    loc = pod.model_location(spec, name)
    settings_env = to_env(runtime_settings(spec, plan, loc))
    checksum = settings_checksum(settings_env)
    version = spec.image.tag or operator_version
    common = labels.common_labels(name, version)
    owner = labels.owner_reference(cr)
    ctx = _context(spec, name, namespace, settings_env, common, owner)

    objects = [fill("configmap.yaml.j2", ctx)]
    cache = spec.model.cache
    if cache is not None and cache.size and loc.fetch_source is not None:  # pvc:// sources need no cache
        ctx["cache"] = {
            "name": labels.cache_claim_name(name),
            "size": cache.size,
            "access_mode": cache.access_mode,
            "storage_class_name": cache.storage_class_name,
        }
        objects.append(fill("pvc.yaml.j2", ctx))
    objects.append(fill("service.yaml.j2", ctx))

    skipped = _skip_reason(spec, plan)
    if skipped is None:
        image = pod.image_ref(spec, operator_version)
        workload = _workload(
            spec,
            plan,
            loc,
            ctx,
            image=image,
            checksum=checksum,
            common=common,
            prometheus_address=prometheus_address,
        )
        objects.extend(workload)

    if spec.routing.pool_enabled:  # pool and picker even when no pod fits: they follow the CR
        ctx["routing"] = routing.context(spec, name, namespace, version=version, owner=owner)
        objects.extend(routing.objects(spec, ctx, fill))

    if spec.monitoring.service_monitor:
        ctx["monitor"] = _monitor(spec, name, namespace)
        objects.append(fill("servicemonitor.yaml.j2", ctx))

    return Rendered(
        objects=objects, spec=spec, plan=plan, settings_checksum=checksum, deployment_skipped_reason=skipped
    )


def _context(
    spec: AutoGLMDeploymentSpec,
    name: str,
    namespace: str | None,
    settings_env: Mapping[str, str],
    common: Mapping[str, str],
    owner: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What every template is filled with: names, labels, the settings, the port and scheme."""

    def metadata(obj_name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": obj_name, "labels": {**(extra_labels or {}), **common}}
        if namespace:
            meta["namespace"] = namespace
        if owner:
            meta["ownerReferences"] = [owner]
        return meta

    return {
        "metadata": metadata,
        "name": labels.workload_name(name),
        "namespace": namespace,
        "settings_name": labels.settings_name(name),
        "settings_env": settings_env,
        "selector": labels.selector_labels(name),
        "port": spec.serving.port,
        "scheme": "HTTPS" if spec.serving.tls_secret is not None else "HTTP",
    }


def _monitor(spec: AutoGLMDeploymentSpec, name: str, namespace: str | None) -> dict[str, Any]:
    """The ServiceMonitor's context: scrape interval, labels, TLS when the runtime serves HTTPS."""
    return {
        "interval": spec.monitoring.interval,
        "labels": dict(sorted(spec.monitoring.labels.items())),
        # cert-manager puts the issuing CA next to the pair; a plain kubernetes.io/tls Secret may not
        "tls_config": (
            {
                "ca": {"secret": {"name": spec.serving.tls_secret, "key": "ca.crt"}},
                "serverName": f"{name}.{namespace}.svc" if namespace else name,
            }
            if spec.serving.tls_secret is not None
            else None
        ),
    }


def _workload(
    spec: AutoGLMDeploymentSpec,
    plan: MemoryPlan,
    loc: pod.ModelLocation,
    ctx: dict[str, Any],
    *,
    image: str,
    checksum: str,
    common: Mapping[str, str],
    prometheus_address: str,
) -> list[dict[str, Any]]:
    """Deployment, then the autoscaler (HPA or ScaledObject) and PDB when they apply."""
    autoscaled = spec.autoscaling_enabled
    replicas = None if autoscaled else (spec.replicas if spec.replicas is not None else 1)
    node_selector, tolerations = pod.scheduling(spec)
    volumes, mounts = pod.volumes(spec, loc)
    fetch = pod.fetch_container(spec, loc)
    startup = pod.startup_budget_seconds(spec, plan)
    ctx.update(
        {
            "replicas": replicas,
            "progress_deadline_seconds": pod.progress_deadline_seconds(spec, plan, fetches=fetch is not None),
            "strategy": pod.strategy(spec),
            "pod_labels": {**common, **routing.pod_labels(spec)},
            "pod_annotations": {
                SETTINGS_CHECKSUM_ANNOTATION: checksum,
                "kubectl.kubernetes.io/default-container": "runtime",
            },
            "termination_grace_period_seconds": pod.PRESTOP_SLEEP_SECONDS
            + pod.SHUTDOWN_GRACE_SECONDS
            + pod.TERMINATION_MARGIN_SECONDS,
            "prestop_sleep_seconds": pod.PRESTOP_SLEEP_SECONDS,
            "pod_security_context": pod.pod_security_context(pod.RUN_AS),
            "container_security_context": pod.CONTAINER_SECURITY_CONTEXT,
            "priority_class_name": spec.scheduling.priority_class_name,
            "runtime_class_name": spec.scheduling.runtime_class_name,
            "image_pull_secrets": [{"name": n} for n in spec.image.pull_secrets],
            "node_selector": node_selector,
            "tolerations": tolerations,
            "affinity": spec.scheduling.affinity,
            "image": image,
            "image_pull_policy": spec.image.pull_policy,
            "fetch": fetch,
            # weights are local (fetched or on a volume): the runtime never calls the hub
            "runtime_env": [*pod.WRITABLE_HOME_ENV, {"name": "HF_HUB_OFFLINE", "value": "1"}],
            "resources": pod.resources(spec, gpu=True),
            "volume_mounts": mounts,
            "volumes": volumes,
            "probes": pod.probes(spec, startup, scheme=ctx["scheme"]),
        }
    )
    out = [fill("deployment.yaml.j2", ctx)]
    if autoscaled and spec.autoscaling is not None:
        ctx["hpa"] = autoscaling.context(
            spec, plan, name=ctx["name"], namespace=ctx["namespace"], prometheus_address=prometheus_address
        )
        out.append(fill(autoscaling.template(spec), ctx))
    if (pdb := pod.disruption_budget(spec, replicas)) is not None:
        ctx["pdb"] = pdb
        out.append(fill("pdb.yaml.j2", ctx))
    return out
