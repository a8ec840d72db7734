"""The phone-agent workload: N concurrent simulated Open-AutoGLM sessions on a tiny GLM-4V.

Each session runs ``--steps`` steps; every step sends what the Open-AutoGLM client sends: the long
system prompt, the history so far (earlier user messages with their image removed, answers as
strings), and one fresh 1080x2400 PNG screenshot as a data URL, with ``temperature=0,
top_p=0.85, frequency_penalty=0.2``, a fixed number of output tokens. Measured per step: latency
(send → whole answer; not streamed, see ``step_body``); per run: steps per second. Servers, one
after the other in one run on the same model (side by side they would share the CPU): our runtime
(continuous batching, prefix reuse on), the same without prefix reuse (``--no-prefix-caching``), our
runtime at batch size 1, and ``transformers serve`` (it accepts images
for image-text-to-text models; on this CPU build it needs torchvision from another venv:
``AUTOGLM_BENCH_PEER_BIN``). The model's weights are random: this measures the serving path (image
decode, vision tower, prefill, batching), not the quality of the answers.

    python -m benchmarks.agent_bench --sessions 4 --steps 3 --out bench-results/agent.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.loadgen import BACKENDS, Workload, percentile, send_request
from benchmarks.servers import autoglm_spec, hf_serve_spec, launched

REPO = Path(__file__).resolve().parent.parent
MODEL = "autoglm-phone-9b"
SYSTEM = (
    'You are a phone agent. Actions: do(action="Tap", element=[x,y]), do(action="Type", text="..."), '
    'finish(message="..."). Think in <think>...</think>, answer in <answer>...</answer>; coordinates '
    "are on a 0-999 grid. " * 12
)


def screenshot(session: int, step: int, size: tuple[int, int] = (1080, 2400)) -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (240, 240, 240))
    draw = ImageDraw.Draw(image)
    for row in range(12):  # some structure, different every step, so PNGs differ as screens do
        y = 150 + row * 180
        draw.rectangle((60, y, 1020, y + 120), fill=((session * 40 + row * 17) % 255, (step * 60) % 255, 180))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def step_body(
    session: int,
    step: int,
    history: list[dict[str, Any]],
    output_tokens: int,
    backend: str,
    size: tuple[int, int] = (1080, 2400),
) -> dict[str, Any]:
    url = screenshot(session, step, size)
    user = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": f'** Screen Info **\n{{"current_app": "Settings", "step": {step}}}'},
        ],
    }
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "system", "content": SYSTEM}, *history, user],
        # Not streamed: a step ends when the whole answer is there (the client parses the action
        # then), and transformers serve's stream of this random model's tokens can be all special
        # tokens (no text chunk to time) while its usage still counts them.
        "stream": False,
        "temperature": 0.0,
        "top_p": 0.85,
        "max_tokens": output_tokens,
    }
    if backend == "autoglm":
        body["frequency_penalty"] = 0.2  # transformers serve refuses the field (422)
    else:
        body.pop("model")  # transformers serve serves the folder it was given
    body.update(BACKENDS[backend].force_length(output_tokens))
    return body


async def run_sessions(
    base: str,
    backend: str,
    sessions: int,
    steps: int,
    output_tokens: int,
    size: tuple[int, int] = (1080, 2400),
) -> dict[str, Any]:
    workload = Workload(prompt="", endpoint="chat", backend=backend, timeout_s=900)
    latencies: list[float] = []
    errors: list[str] = []

    async def session(client: httpx.AsyncClient, n: int) -> None:
        history: list[dict[str, Any]] = []
        for s in range(steps):
            body = step_body(n, s, history, output_tokens, backend, size)
            result = await send_request(client, workload, body)
            if not result.ok:
                errors.append(result.error or "failed")
                return
            latencies.append(result.e2e_s)
            history += [
                {"role": "user", "content": [{"type": "text", "text": "** Screen Info **"}]},
                {"role": "assistant", "content": f'do(action="Tap", element=[{100 + s},{200 + s}])'},
            ]

    async with httpx.AsyncClient(base_url=base, timeout=900) as client:
        await send_request(client, workload, step_body(99, 0, [], 2, backend, size))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(session(client, n) for n in range(sessions)))
        duration = time.perf_counter() - started
    done = len(latencies)
    return {
        "steps_ok": done,
        "errors": errors[:5],
        "error_count": len(errors),
        "duration_s": round(duration, 2),
        "steps_per_s": round(done / duration, 3) if duration else 0.0,
        "step_latency_s": {
            "p50": round(percentile(latencies, 50), 3),
            "p95": round(percentile(latencies, 95), 3),
        }
        if latencies
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--output-tokens", type=int, default=16)
    p.add_argument("--out", type=Path, default=REPO / "bench-results" / "agent.json")
    p.add_argument("--skip-hf", action="store_true", help="leave out transformers serve")
    args = p.parse_args(argv)

    from autoglm_runtime.devmodels import build_tiny_glm4v

    model = build_tiny_glm4v(Path(tempfile.mkdtemp(prefix="agent-bench-vlm-")))
    common = ["--served-model-name", MODEL, "--max-input-tokens", "32768", "--max-new-tokens", "64"]
    specs = [
        autoglm_spec("autoglm", model, max_batch_size=args.sessions, extra=common),
        autoglm_spec(
            "autoglm-no-prefix", model, max_batch_size=args.sessions, extra=[*common, "--no-prefix-caching"]
        ),
        autoglm_spec("autoglm-batch1", model, max_batch_size=1, extra=common),
    ]
    if not args.skip_hf:
        specs.append(hf_serve_spec("transformers-serve", model, continuous_batching=False))
    results: dict[str, Any] = {
        "workload": {
            "sessions": args.sessions,
            "steps_per_session": args.steps,
            "output_tokens": args.output_tokens,
            "screenshot": "1080x2400 PNG data URL (3354 image tokens)",
            "model": "tiny random GLM-4V (build_tiny_glm4v), fp32 on CPU",
        },
        "servers": {},
    }
    log_dir = args.out.parent / "logs-agent"
    for spec in specs:  # one at a time: servers side by side would share the CPU
        try:
            with launched([spec], log_dir) as (server,):
                results["servers"][spec.name] = asyncio.run(
                    run_sessions(
                        server.spec.base_url, spec.backend, args.sessions, args.steps, args.output_tokens
                    )
                )
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is recorded, not fatal
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            results["servers"][spec.name] = {
                "error": f"{type(exc).__name__}: {lines[-1] if lines else ''}"[:300]
            }
        print(spec.name, json.dumps(results["servers"][spec.name]), flush=True)
    ours = results["servers"].get("autoglm", {})
    ratios = {}
    for other in ("autoglm-no-prefix", "autoglm-batch1", "transformers-serve"):
        theirs = results["servers"].get(other, {})
        if ours.get("steps_per_s") and theirs.get("steps_per_s"):
            ratios[f"steps_per_s vs {other}"] = round(ours["steps_per_s"] / theirs["steps_per_s"], 2)
        if ours.get("step_latency_s") and theirs.get("step_latency_s"):
            ratios[f"p50 step latency, {other} / ours"] = round(
                theirs["step_latency_s"]["p50"] / ours["step_latency_s"]["p50"], 2
            )
    results["ratios"] = ratios
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    return 0 if ours.get("steps_ok") else 1


if __name__ == "__main__":
    raise SystemExit(main())
