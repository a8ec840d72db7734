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
:mod:`autoglm_operator.spec_errors`; this module owns the settings ConfigMap, the templates and
the order of the objects.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata as importlib_metadata
from typing import Any

import jinja2
import pydantic
import yaml

from autoglm_operator import api, autoscaling, labels, pod, routing
from autoglm_operator.api import AutoGLMDeploymentSpec
from autoglm_operator.memory.types import GIB, GpuInfo, MemoryPlan
from autoglm_operator.pod import gpu_product_label
from autoglm_operator.spec_errors import SpecError, check_metadata, parse_spec
from autoglm_runtime import serving_settings
from autoglm_runtime.settings import RuntimeSettings, to_env

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
    "settings_checksum",
]

SETTINGS_CHECKSUM_ANNOTATION = "autoglm.io/settings-checksum"


def _package_version() -> str:
    try:
        return importlib_metadata.version("autoglm")
    except importlib_metadata.PackageNotFoundError:
        return "0.0.0"


OPERATOR_VERSION = _package_version()


# ================================================================================================
# Runtime settings (the ConfigMap)
# ================================================================================================


@cache
def _settings_checker() -> type[pydantic.BaseModel]:
    """The runtime settings' fields and bounds as a plain model: ``RuntimeSettings`` itself would
    read the operator's own environment when validating, and render must stay pure."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in RuntimeSettings.model_fields.items()}
    return pydantic.create_model("RuntimeSettingsCheck", **fields)


# Spec field of each runtime setting the operator derives (not a serving setting of the same name),
# to name the right field when the runtime would refuse it; the serving settings name their own.
_DERIVED_SOURCE = {
    "served_model_name": "spec.model.servedModelName",
    "quantization": "spec.quantization",
    "double_quant": "spec.quantizationOptions.doubleQuant",
    "compute_dtype": "spec.quantizationOptions.computeDtype",
}


def setting_source(name: str) -> str:
    """The spec field a runtime setting comes from (``spec`` when none does)."""
    if name in serving_settings.spec_settings():
        return serving_settings.spec_path(name)
    return _DERIVED_SOURCE.get(name, "spec")


def runtime_settings(spec: AutoGLMDeploymentSpec, plan: MemoryPlan, loc: pod.ModelLocation) -> dict[str, Any]:
    """Runtime settings values (field name → value) for one CR: every serving setting the CR sets
    (not set: left out, the runtime's default), then what the operator derives (paths, the plan)."""
    s = spec.serving
    tls = s.tls_secret is not None
    values: dict[str, Any] = serving_settings.spec_values({"serving": s, "memory": spec.memory})
    values |= {
        "model": loc.model_path,
        "served_model_name": spec.model.served_model_name or loc.served_name,
        "trust_remote_code": spec.model.trust_remote_code,
        "quantization": plan.quantization,
        "api_keys_file": f"{pod.API_KEYS_DIR}/{pod.API_KEYS_FILE}" if s.api_key_secret else None,
        "tls_cert_file": f"{pod.TLS_DIR}/tls.crt" if tls else None,
        "tls_key_file": f"{pod.TLS_DIR}/tls.key" if tls else None,
        "tls_client_ca_file": f"{pod.CLIENT_CA_DIR}/{pod.CLIENT_CA_FILE}" if s.client_ca_secret else None,
        "shutdown_grace_s": pod.SHUTDOWN_GRACE_SECONDS,
        "log_format": "json",
    }
    if plan.quantization in ("nf4", "fp4"):
        opts = spec.quantization_options or api.QuantizationOptions()
        values["double_quant"] = opts.double_quant
        values["compute_dtype"] = opts.compute_dtype
    try:
        _settings_checker().model_validate(values)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0])
        raise SpecError(
            setting_source(field), f"the runtime would refuse {field}={err.get('input')!r}: {err['msg']}"
        ) from None
    return values


def settings_checksum(data: Mapping[str, str]) -> str:
    """sha256 of the ConfigMap data; on the pod template it rolls the pods when a setting changes."""
    return hashlib.sha256(json.dumps(dict(data), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ================================================================================================
# Templates
# ================================================================================================


# A character outside the BMP comes out of json.dumps as a UTF-16 surrogate pair, which YAML does not
# accept; YAML's own escape for it is \UXXXXXXXX. (Only at an even run of backslashes: an escape.)
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _yaml_escape_pair(m: re.Match[str]) -> str:
    high, low = int(m.group(2), 16), int(m.group(3), 16)
    return f"{m.group(1)}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"


def _to_json(value: Any) -> str:
    # JSON is YAML flow syntax: user strings can never break the document structure. ASCII only,
    # so no character YAML forbids (C1 controls, BOM) can slip in raw.
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return _SURROGATE_PAIR.sub(_yaml_escape_pair, text) if "\\ud" in text else text


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("autoglm_operator", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # YAML, not HTML; values go through the json filter
        keep_trailing_newline=True,
    )
    env.filters["j"] = _to_json
    return env


@cache
def _template(name: str) -> jinja2.Template:
    return _environment().get_template(name)


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _fill(name: str, context: Mapping[str, Any]) -> dict[str, Any]:
    obj = yaml.load(_template(name).render(context), Loader=_Loader)  # noqa: S506 - safe loader
    if not isinstance(obj, dict):
        raise TypeError(f"template {name} did not produce an object")
    return obj


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


def dump_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys sorted: the same objects always give the same bytes."""
    return "".join(
        "---\n" + yaml.dump(o, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=120)
        for o in objects
    )


def dump_json(objects: list[dict[str, Any]]) -> str:
    """A ``v1/List`` of the objects, keys sorted."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, sort_keys=True, indent=2) + "\n"


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
) -> Rendered:
    """The objects for one AutoGLMDeployment (a dict as read from YAML or received by kopf).

    ``node_gpu`` is the GPU seen on candidate nodes (from GPU feature discovery labels), used by the
    memory planner; ``plan`` skips planning when the caller already has one; ``prometheus_address``
    is where a KEDA ScaledObject's Prometheus trigger queries, unless the spec names one. Raises
    :class:`SpecError` for a CR that cannot be rendered.
    """
    name, namespace = check_metadata(cr)
    spec = parse_spec(cr)
    if plan is None:
        plan = _plan(spec, node_gpu)
    loc = pod.model_location(spec, name)
    settings_env = to_env(runtime_settings(spec, plan, loc))
    checksum = settings_checksum(settings_env)

    image = pod.image_ref(spec, operator_version)
    version = spec.image.tag or operator_version
    common = labels.common_labels(name, version)
    owner = labels.owner_reference(cr)

    def metadata(obj_name: str, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": obj_name, "labels": {**(extra_labels or {}), **common}}
        if namespace:
            meta["namespace"] = namespace
        if owner:
            meta["ownerReferences"] = [owner]
        return meta

    tls = spec.serving.tls_secret is not None
    ctx: dict[str, Any] = {
        "metadata": metadata,
        "name": labels.workload_name(name),
        "namespace": namespace,
        "settings_name": labels.settings_name(name),
        "settings_env": settings_env,
        "selector": labels.selector_labels(name),
        "port": spec.serving.port,
        "scheme": "HTTPS" if tls else "HTTP",
    }

    objects = [_fill("configmap.yaml.j2", ctx)]
    cache = spec.model.cache
    if cache is not None and cache.size and loc.fetch_source is not None:  # pvc:// sources need no cache
        ctx["cache"] = {
            "name": labels.cache_claim_name(name),
            "size": cache.size,
            "access_mode": cache.access_mode,
            "storage_class_name": cache.storage_class_name,
        }
        objects.append(_fill("pvc.yaml.j2", ctx))
    objects.append(_fill("service.yaml.j2", ctx))

    skipped = _skip_reason(spec, plan)
    if skipped is None:
        objects.extend(
            _workload(
                spec,
                plan,
                loc,
                ctx,
                image=image,
                checksum=checksum,
                common=common,
                prometheus_address=prometheus_address,
            )
        )

    if spec.routing.pool_enabled:  # pool and picker even when no pod fits: they follow the CR
        ctx["routing"] = routing.context(spec, name, namespace, version=version, owner=owner)
        objects.extend(routing.objects(spec, ctx, _fill))

    if spec.monitoring.service_monitor:
        ctx["monitor"] = {
            "interval": spec.monitoring.interval,
            "labels": dict(sorted(spec.monitoring.labels.items())),
            # cert-manager puts the issuing CA next to the pair; a plain kubernetes.io/tls Secret may not
            "tls_config": (
                {
                    "ca": {"secret": {"name": spec.serving.tls_secret, "key": "ca.crt"}},
                    "serverName": f"{name}.{namespace}.svc" if namespace else name,
                }
                if tls
                else None
            ),
        }
        objects.append(_fill("servicemonitor.yaml.j2", ctx))

    return Rendered(
        objects=objects, spec=spec, plan=plan, settings_checksum=checksum, deployment_skipped_reason=skipped
    )


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
    out = [_fill("deployment.yaml.j2", ctx)]
    if autoscaled and spec.autoscaling is not None:
        ctx["hpa"] = autoscaling.context(
            spec, plan, name=ctx["name"], namespace=ctx["namespace"], prometheus_address=prometheus_address
        )
        out.append(_fill(autoscaling.template(spec), ctx))
    if (pdb := pod.disruption_budget(spec, replicas)) is not None:
        ctx["pdb"] = pdb
        out.append(_fill("pdb.yaml.j2", ctx))
    return out
