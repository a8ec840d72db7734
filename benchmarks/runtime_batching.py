"""Throughput with batching on and off: the same model and the same concurrent requests.

Starts ``autoglm-runtime serve`` twice (``--max-batch-size 8`` and ``1``), sends 8 and 16 concurrent
chat requests of a fixed length (``min_tokens`` = ``max_tokens``, so every run generates the same
number of tokens), and prints generated tokens per second for each and the ratio.

    .venv/bin/python benchmarks/runtime_batching.py                 # SmolLM2-135M (packaged)
    .venv/bin/python benchmarks/runtime_batching.py --model random  # a random ~150M GLM
    .venv/bin/python benchmarks/runtime_batching.py --model /path/to/model --quantization nf4

On a GPU machine the same command runs unchanged; the device name is printed with the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def start_server(model: str, batch: int, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "autoglm_runtime.cli",
        "serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-batch-size",
        str(batch),
        "--batch-window-ms",
        str(args.window_ms),
        "--quantization",
        args.quantization,
        "--log-level",
        "WARNING",
    ]
    if args.torch_threads:
        cmd += ["--torch-threads", str(args.torch_threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"server exited with {proc.returncode} (run it by hand to see why): {' '.join(cmd)}"
            )
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not become ready in 600 s")


async def burst(base: str, model: str, n: int, tokens: int) -> tuple[float, int]:
    """n concurrent requests; returns (seconds, generated tokens)."""
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:

        async def one(i: int) -> int:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"Write a short story about robot number {i}."}],
                "max_tokens": tokens,
                "min_tokens": tokens,
                "temperature": 0,
            }
            r = await client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])

        started = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - started, sum(counts)


def resolve_model(spec: str) -> str:
    from autoglm_runtime.devmodels import build_random_glm, packaged_smollm2

    if spec == "smollm2":
        return str(packaged_smollm2())
    if spec == "random":
        folder = Path(tempfile.gettempdir()) / "autoglm-bench-random-glm"
        if not (folder / "config.json").exists():
            build_random_glm(folder)
        return str(folder)
    return spec


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2", help="smollm2 (default), random, or a model folder")
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--window-ms", type=float, default=20.0)
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    model = resolve_model(args.model)
    name = Path(model).name
    results: dict[int, dict[int, dict[str, float]]] = {}
    for batch in (8, 1):
        proc, base = start_server(model, batch, args)
        try:
            asyncio.run(burst(base, name, 2, 4))  # warm the HTTP path
            for n in args.concurrency:
                seconds, tokens = asyncio.run(burst(base, name, n, args.tokens))
                results.setdefault(n, {})[batch] = {
                    "seconds": seconds,
                    "tokens": tokens,
                    "tok_per_s": tokens / seconds,
                }
        finally:
            proc.terminate()
            proc.wait(timeout=60)

    print(f"model {name} ({args.quantization}) on {device_name()}, {args.tokens} tokens per request")
    print(f"{'concurrent':>10} {'batch 8 tok/s':>14} {'batch 1 tok/s':>14} {'ratio':>7}")
    for n, by_batch in results.items():
        ratio = by_batch[8]["tok_per_s"] / by_batch[1]["tok_per_s"]
        by_batch[0] = {"ratio": ratio}
        print(f"{n:>10} {by_batch[8]['tok_per_s']:>14.1f} {by_batch[1]['tok_per_s']:>14.1f} {ratio:>6.2f}x")
    if args.json:
        args.json.write_text(
            json.dumps({"model": name, "device": device_name(), "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
