"""`make demo`: the main job on an embedded default, with no cluster and no GPU.

1. validate every example CR offline (the CRD's schema + CEL rules + the operator's model);
2. show what the operator would create for one of them, and its memory decision;
3. serve the packaged small real model with the runtime (nf4 on CPU), ask it a question through
   the OpenAI-compatible API, print the answer, the latency and a few metrics, and stop it;
4. send one phone-agent step (a 1080x2400 PNG screenshot, streamed) to a tiny random GLM-4V.
"""

from __future__ import annotations

import subprocess
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
            keys = (
                "AUTOGLM_QUANTIZATION",
                "AUTOGLM_GPU_MEMORY_PERCENT",
                "AUTOGLM_HOST_MEMORY_PERCENT",
                "AUTOGLM_MODEL",
            )
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


def _serve(model: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str, float]:
    """Start ``autoglm-runtime serve`` on a free port and wait for /readyz; (process, base URL, seconds)."""
    import os
    import time

    import httpx

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "autoglm_runtime.cli", "serve", "--model", str(model), *flags,
        "--host", "127.0.0.1", "--port", str(port), "--log-format", "text", "--log-level", "WARNING",
    ]  # fmt: skip
    print("  $ autoglm-runtime serve --model", model.name, *flags, "--port", port)
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    started = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the runtime exited with code {proc.returncode} before it was ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return proc, base, time.monotonic() - started
        except httpx.TransportError:
            pass
        if time.monotonic() - started > 300:
            proc.terminate()
            raise SystemExit("the runtime was not ready after 300 s")
        time.sleep(0.5)


def serve_and_ask(question: str = "What is the capital of France?") -> None:
    import time

    import httpx
    from openai import OpenAI

    from autoglm_runtime.devmodels import packaged_smollm2

    step("3. Serve a real small model (SmolLM2-135M-Instruct, nf4 on CPU) and ask it a question")
    proc, base, ready_after = _serve(packaged_smollm2(), "--quantization", "nf4")
    try:
        print(f"  ready after {ready_after:.1f} s (/healthz answered while it loaded)")
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


def send_screenshot() -> None:
    """One Open-AutoGLM-style step (a 1080x2400 PNG screenshot, streamed) to a tiny random GLM-4V."""
    import base64
    import io
    import tempfile
    import time

    from openai import OpenAI
    from PIL import Image, ImageDraw

    from autoglm_runtime.devmodels import build_tiny_glm4v

    step("4. A phone-agent step: one screenshot through the chat API to a vision model")
    print("  (a tiny GLM-4V, the AutoGLM-Phone-9B architecture, with RANDOM weights: its answer is")
    print("   noise; this shows the path a screenshot takes, not what the real model answers)")
    folder = build_tiny_glm4v(Path(tempfile.mkdtemp(prefix="autoglm-demo-vlm-")))
    proc, base, _ = _serve(folder, "--served-model-name", "autoglm-phone-9b", "--max-new-tokens", "16",
                           "--max-input-tokens", "8192")  # fmt: skip
    try:
        screen = Image.new("RGB", (1080, 2400), (245, 245, 245))
        ImageDraw.Draw(screen).rectangle((90, 300, 990, 420), fill=(30, 120, 200))
        buf = io.BytesIO()
        screen.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        client = OpenAI(base_url=f"{base}/v1", api_key="unused")
        t0 = time.monotonic()
        stream = client.chat.completions.create(
            model="autoglm-phone-9b",
            messages=[
                {"role": "system", "content": "You are a phone agent. Reply with do(action=...) or finish(...)."},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "** Screen Info **"}]},
            ],  # fmt: skip
            temperature=0.0, top_p=0.85, frequency_penalty=0.2, max_tokens=3000,
            stream=True, stream_options={"include_usage": True},
        )  # fmt: skip
        usage = None
        for chunk in stream:
            usage = chunk.usage or usage
        print(
            f"  1080x2400 PNG ({len(url) / 1e3:.0f} kB as a data URL) streamed in {time.monotonic() - t0:.2f} s"
        )
        if usage:
            print(
                f"  {usage.prompt_tokens} prompt tokens (3354 of them the screenshot), {usage.completion_tokens} generated"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    validate_examples()
    render_example()
    serve_and_ask()
    send_screenshot()
    return 0


if __name__ == "__main__":
    sys.exit(main())
