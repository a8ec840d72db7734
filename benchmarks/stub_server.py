"""Servers whose model costs nothing, to measure the time a request spends outside the model.

``--mode autoglm``: the real runtime app and engine (HTTP, validation, tokenization, scheduling,
detokenization, SSE) over a :class:`StubRunner` that returns a fixed token at once.
``--mode floor``: a bare FastAPI route on the same uvicorn that returns a canned completion —
the least any Python HTTP server on this stack costs. Overhead is reported both ways.

``python -m benchmarks.stub_server --tokenizer DIR --port P --mode autoglm [--batch-window-ms 5]``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

# Module level: FastAPI resolves the route's (string) annotations in this module's globals.
from fastapi import Request


class StubRunner:
    """Duck-types :class:`autoglm_runtime.engine.ModelRunner` with no model: every step "computes"
    nothing and samples the same token; it keeps no KV cache (``kv_bytes_per_token() == 0``), so the
    engine's pool is as large as its admission limits can use."""

    device = "cpu"
    vision = None

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos_ids: set[int] = set()  # never finishes early: every request runs to max_tokens
        ids = tokenizer(" the", add_special_tokens=False)["input_ids"]
        self.token = int(ids[-1]) if ids else 0

    def kv_bytes_per_token(self) -> int:
        return 0

    def model_dims(self) -> tuple[int, int, int, int]:
        return 1, 1, 1, 1

    def configure(self, num_blocks: int, block_size: int) -> None:
        pass

    def prepare(self, request: object) -> None:
        pass

    def image_keys(self, ids: Sequence[int], images: object) -> list[tuple[int, int, bytes]]:
        return []

    def step(self, chunks: Sequence[object]) -> None:
        return None

    def sample(self, logits: object, requests: Sequence[object]) -> list[int]:
        return [self.token] * len(requests)

    def decode_text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def autoglm_app(tokenizer_dir: str, batch_window_ms: float | None, max_batch_size: int) -> Any:
    from transformers import AutoTokenizer

    from autoglm_runtime.app import create_app
    from autoglm_runtime.engine import Engine, EngineConfig
    from autoglm_runtime.loader import served_name
    from autoglm_runtime.settings import RuntimeSettings

    overrides: dict[str, Any] = {"max_batch_size": max_batch_size}
    if batch_window_ms is not None:
        overrides["batch_window_ms"] = batch_window_ms
    settings = RuntimeSettings(model=tokenizer_dir, **overrides)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    engine = Engine(EngineConfig.from_settings(settings), tokenizer)
    engine.start(StubRunner(tokenizer), served_name(settings))  # type: ignore[arg-type]
    return create_app(settings, engine)


def floor_app() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI()

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> JSONResponse | StreamingResponse:
        body = await request.json()
        n = int(body.get("max_tokens") or 1)
        usage = {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}
        if not body.get("stream"):
            return JSONResponse(
                {"object": "text_completion", "choices": [{"text": " the" * n}], "usage": usage}
            )

        async def events() -> AsyncIterator[str]:
            for _ in range(n):
                yield "data: " + json.dumps({"choices": [{"text": " the"}]}) + "\n\n"
            yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="stub-model servers for the overhead benchmark")
    p.add_argument("--mode", choices=["autoglm", "floor"], required=True)
    p.add_argument("--tokenizer", help="model folder whose tokenizer the autoglm stub uses")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batch-window-ms", type=float, default=None, help="default: the runtime's default")
    p.add_argument("--max-batch-size", type=int, default=16)
    args = p.parse_args(argv)
    import uvicorn

    if args.mode == "autoglm":
        if not args.tokenizer:
            p.error("--mode autoglm needs --tokenizer")
        app = autoglm_app(args.tokenizer, args.batch_window_ms, args.max_batch_size)
    else:
        app = floor_app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
