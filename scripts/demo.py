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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_and_ask(question: str = "What is the capital of France?") -> None:
    import os
    import subprocess
    import time

    import httpx
    from openai import OpenAI

    from autoglm_runtime.devmodels import packaged_smollm2

    step("3. Serve a real small model (SmolLM2-135M-Instruct, nf4 on CPU) and ask it a question")
    model = packaged_smollm2()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "autoglm_runtime.cli", "serve", "--model", str(model), "--quantization", "nf4",
        "--host", "127.0.0.1", "--port", str(port), "--log-format", "text", "--log-level", "WARNING",
    ]  # fmt: skip
    print("  $ autoglm-runtime serve --model", model.name, "--quantization nf4 --port", port)
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the runtime exited with code {proc.returncode} before it was ready")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > 300:
                raise SystemExit("the runtime was not ready after 300 s")
            time.sleep(0.5)
        print(f"  ready after {time.monotonic() - started:.1f} s (/healthz answered while it loaded)")
        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        t0 = time.monotonic()
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=[{"role": "user", "content": question}],
            max_tokens=24,
            temperature=0,
        )
        latency = time.monotonic() - t0
        print(f"  Q: {question}")
        print(f"  A: {reply.choices[0].message.content.strip()}")
        usage = reply.usage
        print(
            f"  latency {latency:.2f} s, {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens"
            if usage
            else f"  latency {latency:.2f} s"
        )
        wanted = ("autoglm_model_memory_bytes", "autoglm_model_load_seconds", "autoglm_generated_tokens_total",
                  "autoglm_time_to_first_token_seconds_sum")  # fmt: skip
        for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
            if line.startswith(wanted):
                print("  metric", line)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        print(f"  runtime stopped (exit code {proc.returncode})")


def main() -> int:
    validate_examples()
    render_example()
    serve_and_ask()
    return 0


if __name__ == "__main__":
    sys.exit(main())
