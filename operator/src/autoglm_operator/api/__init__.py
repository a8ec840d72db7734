"""The AutoGLMDeployment API (autoglm.io/v1alpha1): the single source of truth for the CRD.

`make crds` turns these pydantic models into ``crds/autoglm.io_autoglmdeployments.yaml``
(see :mod:`autoglm_operator.crd`). Cross-field rules are declared once, as CEL, with
:func:`cel_rules`; the API server evaluates them from the CRD and the operator evaluates the same
expressions (with cel-python) when it parses a spec, so both say the same thing.

One module per part of the spec: :mod:`.base` (names, patterns, :class:`ApiModel`),
:mod:`.spec_model` (model, quantization), :mod:`.spec_resources`, :mod:`.spec_serving` (memory and
serving: built from the serving settings' declarations), :mod:`.spec_autoscaling`,
:mod:`.spec_pods` (scheduling, image, probes, PDB, monitoring), :mod:`.spec_routing`,
:mod:`.spec` (the whole spec and CR) and :mod:`.status_model`. Everything is importable from here.
"""

from autoglm_operator.api.base import (
    API_VERSION,
    CATEGORIES,
    CEL_CHECKS,
    DNS_LABEL_PATTERN,
    GROUP,
    KIND,
    LABEL_VALUE_MAX,
    NAME_MAX,
    PLURAL,
    QUALIFIED_NAME_MAX,
    QUANTITY_MAX,
    QUANTITY_PATTERN,
    REVISION_PATTERN,
    SHORT_NAMES,
    SINGULAR,
    SOURCE_PATTERN,
    VERSION,
    ApiModel,
    CelRule,
    LabelValue,
    ObjectName,
    cel_rules,
)
from autoglm_operator.api.spec import AutoGLMDeployment, AutoGLMDeploymentSpec
from autoglm_operator.api.spec_autoscaling import (
    AutoscalingEngine,
    AutoscalingMetric,
    AutoscalingSpec,
    ScalingBehavior,
)
from autoglm_operator.api.spec_model import (
    ModelCache,
    ModelShapeSpec,
    ModelSpec,
    QuantizationMode,
    QuantizationOptions,
)
from autoglm_operator.api.spec_pods import (
    ImageSpec,
    MonitoringSpec,
    PodDisruptionBudgetSpec,
    ProbesSpec,
    SchedulingSpec,
    Toleration,
)
from autoglm_operator.api.spec_resources import ComputeResources, GpuSpec, ResourcesSpec
from autoglm_operator.api.spec_routing import (
    ENDPOINT_PICKER_IMAGE,
    GATEWAY_GROUP_PATTERN,
    HOSTNAME_PATTERN,
    EndpointPickerSpec,
    HTTPRouteSpec,
    InferencePoolSpec,
    ParentReference,
    RoutingSpec,
)
from autoglm_operator.api.spec_serving import MemorySpec, SecretKeyRef, ServingSpec
from autoglm_operator.api.status_model import (
    AutoGLMDeploymentStatus,
    Condition,
    ConditionType,
    MemoryEstimateStatus,
)
from autoglm_runtime.settings import ComputeDtype

__all__ = [
    "API_VERSION",
    "CATEGORIES",
    "CEL_CHECKS",
    "DNS_LABEL_PATTERN",
    "ENDPOINT_PICKER_IMAGE",
    "GATEWAY_GROUP_PATTERN",
    "GROUP",
    "HOSTNAME_PATTERN",
    "KIND",
    "LABEL_VALUE_MAX",
    "NAME_MAX",
    "PLURAL",
    "QUALIFIED_NAME_MAX",
    "QUANTITY_MAX",
    "QUANTITY_PATTERN",
    "REVISION_PATTERN",
    "SHORT_NAMES",
    "SINGULAR",
    "SOURCE_PATTERN",
    "VERSION",
    "ApiModel",
    "AutoGLMDeployment",
    "AutoGLMDeploymentSpec",
    "AutoGLMDeploymentStatus",
    "AutoscalingEngine",
    "AutoscalingMetric",
    "AutoscalingSpec",
    "CelRule",
    "ComputeDtype",
    "ComputeResources",
    "Condition",
    "ConditionType",
    "EndpointPickerSpec",
    "GpuSpec",
    "HTTPRouteSpec",
    "ImageSpec",
    "InferencePoolSpec",
    "LabelValue",
    "MemoryEstimateStatus",
    "MemorySpec",
    "ModelCache",
    "ModelShapeSpec",
    "ModelSpec",
    "MonitoringSpec",
    "ObjectName",
    "ParentReference",
    "PodDisruptionBudgetSpec",
    "ProbesSpec",
    "QuantizationMode",
    "QuantizationOptions",
    "ResourcesSpec",
    "RoutingSpec",
    "ScalingBehavior",
    "SchedulingSpec",
    "SecretKeyRef",
    "ServingSpec",
    "Toleration",
    "cel_rules",
]
