"""The generation engine: one model, one worker thread, continuous batching.

Requests wait in a bounded queue. A single worker thread owns the model and runs a loop of steps:
it drops cancelled/expired rows, admits waiting requests into free batch slots (prefilling them
together, left-padded, and merging their KV cache into the running batch), then decodes one token
for every running row. Rows leave the batch as soon as they finish, so requests with different
``max_tokens`` each stop at their own limit and short requests do not wait for long ones.

The event loop is never blocked: the worker hands token deltas to each request's asyncio queue with
``loop.call_soon_threadsafe``. This module never imports FastAPI; the HTTP layer maps the typed
errors below to status codes.

Failures: a model step that raises (CUDA out of memory above all) fails only its own rows, and not
at once: the engine frees cached memory and re-runs those rows in halves (prefilling each row's
prompt plus the tokens it already has, so streams continue where they were); only a row that fails
alone gets :class:`GenerationFailedError`, and counts towards :attr:`Engine.breaker`; when that
opens, new requests get :class:`ModelUnavailableError` at once and queued ones are not fed to the
model until a probe request succeeds. After a failure the batch cap halves, then regrows by one row
per ``BATCH_CAP_RECOVERY_STEPS`` good steps.

Extension points:
- ``ModelRunner`` is the only code that touches the model; pass another ``runner`` (e.g. one that
  raises on the n-th step) to inject failures.
- ``Engine.admission_hooks`` run in :meth:`Engine.submit` before a request is queued.
- ``Engine.batch_observers`` get the batch size of every decode step, ``Engine.failure_observers``
  every failed model step (metrics).
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoglm_runtime.breaker import CircuitBreaker, CircuitOpenError

log = logging.getLogger(__name__)


# --- errors -------------------------------------------------------------------------------------
class EngineError(Exception):
    """Base of the engine's typed errors; the HTTP layer maps each subclass to a status code."""


class QueueFullError(EngineError):
    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineOverloadedError(QueueFullError):
    """Load is being shed (e.g. by a circuit breaker); also a 429/503 with Retry-After."""


class PromptTooLongError(EngineError):
    pass


class InvalidRequestError(EngineError):
    pass


class EngineNotReadyError(EngineError):
    pass


class GenerationFailedError(EngineError):
    """The model failed on this request even in a batch of its own (e.g. out of memory)."""


class ModelUnavailableError(EngineError):
    """The circuit breaker is open: the model keeps failing; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTimeoutError(EngineError):
    pass


# --- requests -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_tokens: int = 0  # EOS is suppressed until this many tokens (useful with random test models)
    # OpenAI's penalties: logits of already generated tokens lose count x frequency_penalty
    # + (count > 0) x presence_penalty (not a multiplicative repetition penalty).
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0


@dataclass(frozen=True)
class Delta:
    """One event of a request's stream: new text, and on the last one a finish reason."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | None while streaming
    error: EngineError | None = None


@dataclass
class EngineStats:
    queue_depth: int  # waiting for a batch slot
    running: int  # in the batch now
    inflight: int  # admitted and not finished (waiting + running)
    steps: int  # decode steps so far
    max_batch_seen: int


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = 8
    batch_window_ms: float = 5.0
    max_concurrent_requests: int = 64
    max_queue: int = 256
    max_input_tokens: int = 4096
    max_new_tokens: int = 512
    request_timeout_s: float = 300.0
    breaker_failure_threshold: int = 5
    breaker_window_s: float = 60.0
    breaker_cooldown_s: float = 10.0

    @classmethod
    def from_settings(cls, settings: Any) -> EngineConfig:
        return cls(**{name: getattr(settings, name) for name in cls.__dataclass_fields__})


_ids = itertools.count(1)


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Delta]
    deadline: float
    id: int = field(default_factory=lambda: next(_ids))
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0
    cancelled: bool = False
    done: bool = False
    generator: Any = None  # torch.Generator for sampling rows
    first_token_at: float | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    images: Any = None  # vision.MultiModalInputs of an image request
    rope_delta: int = 0  # multimodal rotary position offset after the images (set at prefill)

    def emit(self, delta: Delta) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)
        except RuntimeError:  # the client's event loop is gone
            self.cancelled = True


class RequestHandle:
    """What :meth:`Engine.submit` returns: iterate it for text deltas, or :meth:`collect` the result."""

    def __init__(self, engine: Engine, request: _Request) -> None:
        self._engine = engine
        self._request = request
        self.finish_reason: str | None = None
        self.text = ""

    @property
    def id(self) -> int:
        return self._request.id

    @property
    def prompt_tokens(self) -> int:
        return len(self._request.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self._request.generated)

    @property
    def time_to_first_token(self) -> float | None:
        r = self._request
        return None if r.first_token_at is None else r.first_token_at - r.submitted_at

    def cancel(self) -> None:
        """Leave the batch at the next step (a client disconnected)."""
        if not self._request.done:
            self._request.cancelled = True
            self._engine._wake()

    async def __aiter__(self) -> AsyncIterator[str]:
        """Text deltas; raises the engine's error if generation failed."""
        try:
            while True:
                delta = await self._request.queue.get()
                if delta.error is not None:
                    raise delta.error
                if delta.text:
                    self.text += delta.text
                    yield delta.text
                if delta.finish_reason is not None:
                    self.finish_reason = delta.finish_reason
                    return
        finally:
            if self.finish_reason is None:
                self.cancel()

    async def collect(self) -> str:
        """The whole completion text (cancels the request if the caller is cancelled)."""
        async for _ in self:
            pass
        return self.text


# --- model access -------------------------------------------------------------------------------
class ModelRunner:
    """The only code that runs the model: batched prefill, one decode step, KV-cache reshaping.

    The cache is a transformers ``DynamicCache`` whose layers hold ``[batch, heads, seq, dim]``
    tensors; rows are left-padded so every row's newest token is at the same position.
    """

    def __init__(self, model: Any, tokenizer: Any, device: str | None = None, vision: Any = None) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        # Image-text-to-text models with multimodal rotary positions (GLM-4V, Qwen2-VL style): each
        # row's positions come from ``get_rope_index``; after its images a row's text positions are
        # offset by a per-row delta, which every decode step applies (rows of a batch differ).
        self.vision = vision
        inner = getattr(model, "model", None)
        self.multimodal = vision is not None and hasattr(inner, "get_rope_index")
        self.device = device or str(model.get_input_embeddings().weight.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        eos: set[int] = set()
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(i) for i in source)
        self.eos_ids = eos
        # transformers 5 renamed the forward argument ``past_key_values`` to ``cache``; remote-code
        # models may still use the old name.
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def prefill(
        self,
        prompts: Sequence[list[int]],
        images: Sequence[Any] | None = None,
        deltas_out: list[int] | None = None,
    ) -> tuple[Any, Any, Any]:
        """Run the prompts together; returns (last-position logits [B, V], attention mask [B, T], cache).

        With a multimodal model, ``images`` holds each row's ``MultiModalInputs`` (or None) and
        ``deltas_out`` receives each row's rotary position delta for :meth:`decode`.
        """
        torch = self.torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        extra: dict[str, Any] = {}
        if self.multimodal:
            rows = [m for m in (images or []) if m is not None]
            grid = torch.cat([m.image_grid_thw for m in rows], dim=0).to(self.device) if rows else None
            if rows:
                extra["pixel_values"] = torch.cat([m.pixel_values for m in rows], dim=0).to(self.device)
                extra["image_grid_thw"] = grid
            kinds = (ids == self.vision.image_token_id).int()
            positions, deltas = self.model.model.get_rope_index(ids, kinds, grid, attention_mask=mask)
            if deltas_out is not None:
                deltas_out[:] = [int(d) for d in deltas.reshape(-1).tolist()]
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
        return out.logits[:, -1, :].float(), mask, _cache_of(out)

    def decode(
        self, tokens: list[int], mask: Any, cache: Any, deltas: Sequence[int] | None = None
    ) -> tuple[Any, Any, Any]:
        """Feed one token per row; returns (logits [B, V], the grown mask, the grown cache)."""
        torch = self.torch
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(-1)
        positions = mask.sum(-1, keepdim=True)
        if self.multimodal:
            offsets = torch.tensor(
                list(deltas or [0] * len(tokens)), dtype=torch.long, device=positions.device
            )
            positions = (positions + offsets.unsqueeze(-1)).unsqueeze(0).expand(3, -1, -1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self.cache_arg: cache},
        )
        return out.logits[:, -1, :].float(), mask, _cache_of(out)

    # Cache reshaping: rows join (merge) and leave (select) between steps.
    def _layers(self, cache: Any) -> list[tuple[Any, Any]]:
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _cache(self, layers: list[tuple[Any, Any]]) -> Any:
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=layers)

    def select(self, mask: Any, cache: Any, rows: list[int]) -> tuple[Any, Any]:
        """Keep ``rows``, then drop leading columns that are padding in every remaining row."""
        torch = self.torch
        index = torch.tensor(rows, dtype=torch.long, device=mask.device)
        mask = mask.index_select(0, index)
        real = mask.any(dim=0).nonzero()
        start = int(real[0]) if len(real) else 0
        layers = []
        for k, v in self._layers(cache):
            kidx = index.to(k.device)
            layers.append((k.index_select(0, kidx)[:, :, start:], v.index_select(0, kidx)[:, :, start:]))
        return mask[:, start:], self._cache(layers)

    def merge(self, a: tuple[Any, Any], b: tuple[Any, Any]) -> tuple[Any, Any]:
        """Concatenate two (mask, cache) batches, left-padding the shorter one."""
        torch = self.torch
        (mask_a, cache_a), (mask_b, cache_b) = a, b
        width = max(mask_a.shape[1], mask_b.shape[1])

        def pad(t: Any, n: int, dim: int) -> Any:
            if n == 0:
                return t
            shape = list(t.shape)
            shape[dim] = n
            return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)

        pa, pb = width - mask_a.shape[1], width - mask_b.shape[1]
        mask = torch.cat([pad(mask_a, pa, 1), pad(mask_b, pb, 1)], dim=0)
        layers = []
        for (ka, va), (kb, vb) in zip(self._layers(cache_a), self._layers(cache_b), strict=True):
            layers.append(
                (
                    torch.cat([pad(ka, pa, 2), pad(kb, pb, 2).to(ka.device)], dim=0),
                    torch.cat([pad(va, pa, 2), pad(vb, pb, 2).to(va.device)], dim=0),
                )
            )
        return mask, self._cache(layers)

    def sample(self, logits: Any, requests: Sequence[_Request]) -> list[int]:
        """One token per row with that row's own temperature/top_p/seed; EOS masked below min_tokens."""
        torch = self.torch
        for row, r in enumerate(requests):
            p = r.params
            if r.generated and (p.frequency_penalty or p.presence_penalty):
                counts = torch.bincount(
                    torch.tensor(r.generated, device=logits.device), minlength=logits.shape[-1]
                )[: logits.shape[-1]].to(logits.dtype)
                logits[row] -= (
                    counts * p.frequency_penalty + (counts > 0).to(logits.dtype) * p.presence_penalty
                )
        if self.eos_ids:
            eos = torch.tensor(sorted(self.eos_ids), device=logits.device)
            for row, r in enumerate(requests):
                if len(r.generated) < r.params.min_tokens:
                    logits[row, eos] = float("-inf")
        greedy = logits.argmax(dim=-1).tolist()
        tokens: list[int] = []
        for row, r in enumerate(requests):
            p = r.params
            if p.temperature <= 0:
                tokens.append(int(greedy[row]))
                continue
            probs = torch.softmax(logits[row] / p.temperature, dim=-1).cpu()
            if p.top_p < 1.0:
                sorted_probs, order = probs.sort(descending=True)
                keep = sorted_probs.cumsum(0) - sorted_probs < p.top_p  # always keeps the top token
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
            if r.generator is None:
                r.generator = torch.Generator()
                if p.seed is None:
                    r.generator.seed()
                else:
                    r.generator.manual_seed(p.seed)
            tokens.append(int(torch.multinomial(probs, 1, generator=r.generator)))
        return tokens

    def decode_text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


BATCH_CAP_RECOVERY_STEPS = 32


def _halves(rows: list[_Request]) -> list[list[_Request]]:
    half = (len(rows) + 1) // 2
    return [rows[:half], rows[half:]]


def _stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing chars might start a stop sequence (held back from the stream)."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:n]):
                hold = n
                break
    return hold


# --- the engine ---------------------------------------------------------------------------------
class Engine:
    """Batches concurrent requests onto one model on one worker thread.

    Create it before the model is loaded (the HTTP server answers /healthz meanwhile), then
    :meth:`start` it with a :class:`ModelRunner`; :attr:`ready` flips to True.
    """

    def __init__(self, config: EngineConfig, tokenizer: Any = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.runner: ModelRunner | None = None
        self.model_name: str | None = None
        self.admission_hooks: list[Callable[[], None]] = []
        self.batch_observers: list[Callable[[int], None]] = []
        self.failure_observers: list[Callable[[BaseException], None]] = []
        self.breaker = CircuitBreaker(
            config.breaker_failure_threshold, config.breaker_window_s, config.breaker_cooldown_s
        )
        self.failed_steps = 0  # model steps that raised
        self.retried_rows = 0  # rows re-run in a smaller batch after their batch failed
        self.batch_cap = config.max_batch_size  # lowered after a failed step, regrows with good steps
        self._steps_at_cap = 0
        self._lock = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._running: list[_Request] = []
        self._prefilling: list[_Request] = []  # taken from the queue, not yet in the batch
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._steps = 0
        self._max_batch_seen = 0
        self._last_fresh_batch = 2  # > 1: the first fresh batch waits the window (see _loop)
        self.load_error: str | None = None

    # lifecycle
    @property
    def ready(self) -> bool:
        return self.runner is not None and self._thread is not None and self._thread.is_alive()

    def start(self, runner: ModelRunner, model_name: str | None = None) -> None:
        """Run the worker on a new thread."""
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.model_name = model_name
        self._thread = threading.Thread(target=self._worker, name="autoglm-engine", daemon=True)
        self._thread.start()

    def run_here(self, runner: ModelRunner, model_name: str | None = None) -> None:
        """Run the worker on the calling thread until :meth:`stop` (blocks).

        ``serve`` uses it so the thread that loaded the model goes on to serve it (one thread less).
        """
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.model_name = model_name
        self._thread = threading.current_thread()
        self._worker()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the worker; requests still admitted fail with :class:`EngineNotReadyError`."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def stats(self) -> EngineStats:
        with self._lock:
            waiting = len(self._waiting)
            running = sum(not r.done for r in self._running) + len(self._prefilling)
        return EngineStats(waiting, running, waiting + running, self._steps, self._max_batch_seen)

    # admission (event-loop side)
    def tokenize_prompt(self, prompt: str | list[int]) -> list[int]:
        if self.tokenizer is None:
            raise EngineNotReadyError("the model is still loading")
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if not ids and self.tokenizer.bos_token_id is not None:
                ids = [self.tokenizer.bos_token_id]
        else:
            ids = list(prompt)
            vocab = len(self.tokenizer)
            if any(not 0 <= i < vocab for i in ids):
                raise InvalidRequestError(f"prompt token ids must be in [0, {vocab})")
        if not ids:
            raise InvalidRequestError("prompt is empty")
        return ids

    def chat_prompt(self, messages: list[dict[str, Any]], images: Any = None) -> list[int]:
        """Token ids of a chat (``content`` a string, or a list of ``text``/``image`` parts for a
        vision model); with ``images`` (their MultiModalInputs) each image placeholder the template
        writes is expanded to that image's tokens."""
        if self.tokenizer is None:
            raise EngineNotReadyError("the model is still loading")
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template already holds the BOS token where the model wants one.
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if images is not None:
            ids = self.vision.expand(ids, images)
        return ids

    @property
    def vision(self) -> Any:
        """The model's VisionProcessor, or None for a text-only model (or while loading)."""
        return getattr(self.runner, "vision", None)

    async def submit(
        self, prompt: str | list[int], params: SamplingParams, images: Any = None
    ) -> RequestHandle:
        """Queue a request (text, or token ids from :meth:`chat_prompt`); raises a typed error at once
        when it cannot be served (not ready, prompt too long, queue full)."""
        if not self.ready or self._stopping:
            raise EngineNotReadyError("the model is still loading" if not self._stopping else "shutting down")
        ids = (
            await asyncio.to_thread(self.tokenize_prompt, prompt)
            if isinstance(prompt, str)
            else self.tokenize_prompt(prompt)
        )
        if len(ids) > self.config.max_input_tokens:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens; this server accepts at most {self.config.max_input_tokens}"
            )
        if params.max_tokens > self.config.max_new_tokens:
            params = SamplingParams(**{**params.__dict__, "max_tokens": self.config.max_new_tokens})
        for hook in self.admission_hooks:
            hook()
        try:
            probe = self.breaker.allow()
        except CircuitOpenError as exc:
            raise ModelUnavailableError(f"{exc}; retry later", exc.retry_after_s) from None
        request = _Request(
            prompt_ids=ids,
            images=images,
            params=params,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            deadline=time.monotonic() + self.config.request_timeout_s,
        )
        with self._lock:
            pending = len(self._waiting) + len(self._running) + len(self._prefilling)
            waiting_after = pending + 1 - self.config.max_batch_size
            if pending >= self.config.max_concurrent_requests or waiting_after > self.config.max_queue:
                if probe:
                    self.breaker.cancel_probe()
                raise QueueFullError(
                    f"server busy: {pending} requests in flight, queue limit {self.config.max_queue}; retry later",
                    retry_after_s=1.0,
                )
            self._waiting.append(request)
            self._lock.notify_all()
        return RequestHandle(self, request)

    # the worker
    def _worker(self) -> None:
        import torch

        # Inference mode is per thread: the whole loop (model steps, sampling, cache reshaping) runs in it.
        with torch.inference_mode():
            while not self._stopping:
                try:
                    self._loop()
                except Exception as exc:  # noqa: BLE001 - a bug here must not leave clients hanging
                    with self._lock:
                        rows = list(self._running) + list(self._prefilling)
                        self._prefilling = []
                    self._fail_rows(rows, exc)

    def _loop(self) -> None:
        assert self.runner is not None
        runner = self.runner
        mask: Any = None
        cache: Any = None
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._running:
                    self._lock.wait()
                if self._stopping:
                    break
                fresh = not self._running
                if fresh and self.config.batch_window_ms > 0 and self._last_fresh_batch > 1:
                    # A fresh batch: give concurrent requests a moment to arrive together. Skipped
                    # while traffic comes one request at a time (the last fresh batch had one row):
                    # waiting would only add the window to every request's latency; a burst that
                    # then arrives joins the running batch at the next step anyway.
                    end = time.monotonic() + self.config.batch_window_ms / 1000
                    while len(self._waiting) < self.config.max_batch_size and not self._stopping:
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._lock.wait(left)
                now = time.monotonic()
                for r in list(self._waiting):
                    if r.cancelled or now > r.deadline:
                        self._waiting.remove(r)
                        self._finish(r, None if r.cancelled else RequestTimeoutError("request timed out"))
                free = self.batch_cap - len(self._running)
                new = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
                self._prefilling = new
                if fresh and new:
                    self._last_fresh_batch = len(new)
            mask, cache = self._drop_finished(mask, cache)
            if new:
                mask, cache = self._admit([new], mask, cache)
            if not self._running:
                mask = cache = None
                continue
            rows = list(self._running)
            self._steps += 1
            self._max_batch_seen = max(self._max_batch_seen, len(rows))
            for observer in self.batch_observers:
                observer(len(rows))
            try:
                last = [r.generated[-1] for r in rows]
                if getattr(runner, "multimodal", False):
                    logits, mask, cache = runner.decode(
                        last, mask, cache, deltas=[r.rope_delta for r in rows]
                    )
                else:
                    logits, mask, cache = runner.decode(last, mask, cache)
                tokens = runner.sample(logits, rows)
            except Exception as exc:  # noqa: BLE001 - any model failure fails these rows only
                mask = cache = logits = None
                self._step_failed(exc, rows)
                with self._lock:
                    self._running = []
                    self._prefilling = list(rows)
                if len(rows) > 1:
                    self.retried_rows += len(rows)
                    first, rest = _halves(rows)
                    with self._lock:  # the second half waits at the head of the queue for room
                        self._prefilling = list(first)
                        self._waiting.extendleft(reversed(rest))
                    mask, cache = self._admit([first], None, None)
                else:
                    with self._lock:
                        self._prefilling = []
                    self._give_up(rows, exc)
                continue
            self._step_succeeded()
            for r, t in zip(rows, tokens, strict=True):
                self._append(r, t)
            mask, cache = self._drop_finished(mask, cache)
        with self._lock:
            leftover = list(self._waiting) + list(self._running)
            self._waiting.clear()
            self._running.clear()
        for r in leftover:
            self._finish(r, EngineNotReadyError("the server is shutting down"))

    def _admit(self, groups: list[list[_Request]], mask: Any, cache: Any) -> tuple[Any, Any]:
        """Prefill each group (prompt + tokens generated so far) and merge it into the running batch.

        A group whose prefill fails is split in half and retried (after freeing memory), so a batch
        that was merely too big still completes; a row that fails alone gets a 503. Rows beyond
        :attr:`batch_cap` (halved by each failure) go back to the head of the queue. While the
        breaker is open no group reaches the model.
        """
        assert self.runner is not None
        runner = self.runner
        groups = [g for g in groups if g]
        while groups:
            group = groups.pop(0)
            room = max(0, self.batch_cap - len(self._running))
            if len(group) > room:  # the cap shrank after a failure: the rest waits at the queue's head
                with self._lock:
                    self._waiting.extendleft(reversed(group[room:]))
                    self._prefilling = [r for r in self._prefilling if r not in group[room:]]
                group = group[:room]
                if not group:
                    continue
            if self.breaker.is_open:
                self._drop_prefilling(group)
                retry = max(1.0, self.breaker.retry_after_s())
                for r in group:
                    self._finish(r, ModelUnavailableError("the model keeps failing; retry later", retry))
                continue
            try:
                prompts = [r.prompt_ids + r.generated for r in group]
                if getattr(runner, "multimodal", False):
                    deltas: list[int] = []
                    logits, new_mask, new_cache = runner.prefill(
                        prompts, images=[r.images for r in group], deltas_out=deltas
                    )
                    for r, delta in zip(group, deltas, strict=True):
                        r.rope_delta = delta
                else:
                    logits, new_mask, new_cache = runner.prefill(prompts)
                tokens = runner.sample(logits, group)
            except Exception as exc:  # noqa: BLE001 - any model failure fails these rows only
                self._step_failed(exc, group)
                if len(group) > 1:
                    self.retried_rows += len(group)
                    groups[:0] = _halves(group)
                else:
                    self._drop_prefilling(group)
                    self._give_up(group, exc)
                continue
            self._step_succeeded()
            with self._lock:
                self._running.extend(group)
                self._prefilling = [r for r in self._prefilling if r not in group]
            if cache is None:
                mask, cache = new_mask, new_cache
            else:
                mask, cache = runner.merge((mask, cache), (new_mask, new_cache))
            for r, t in zip(group, tokens, strict=True):
                self._append(r, t)
            mask, cache = self._drop_finished(mask, cache)
        return mask, cache

    def _drop_prefilling(self, rows: list[_Request]) -> None:
        with self._lock:
            self._prefilling = [r for r in self._prefilling if r not in rows]

    def _give_up(self, rows: list[_Request], exc: Exception) -> None:
        """A row failed in a batch of its own: fail it (503) and count it towards the circuit breaker.

        Only such final failures count, not every failed step of the halving: one poisonous request
        fails log2(batch) steps in a row on its way down, which must not take the pod out of service.
        """
        self.breaker.record_failure(exc)
        self._fail_rows(rows, exc)

    def _step_succeeded(self) -> None:
        self.breaker.record_success()
        if self.batch_cap < self.config.max_batch_size:
            self._steps_at_cap += 1
            if self._steps_at_cap >= BATCH_CAP_RECOVERY_STEPS:
                self.batch_cap += 1
                self._steps_at_cap = 0

    def _step_failed(self, exc: BaseException, rows: list[_Request]) -> None:
        """Count a failed model step, tell the breaker and observers, and give memory back."""
        self.failed_steps += 1
        # Multiplicative decrease: the batch that failed was too big for now; grow back one row per
        # BATCH_CAP_RECOVERY_STEPS good steps (additive increase), as TCP does with its window.
        self.batch_cap = max(1, min(self.batch_cap, len(rows)) // 2) if len(rows) > 1 else self.batch_cap
        self._steps_at_cap = 0
        log.warning("Model step failed for a batch of %d: %s: %s", len(rows), type(exc).__name__, exc)
        for observer in self.failure_observers:
            observer(exc)
        # The traceback pins the failed step's frames, and with them its activations and cache.
        exc.__traceback__ = None
        gc.collect()
        assert self.runner is not None
        torch = getattr(self.runner, "torch", None)
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _drop_finished(self, mask: Any, cache: Any) -> tuple[Any, Any]:
        """Remove finished, cancelled and expired rows from the batch (and their cache rows)."""
        if cache is None:
            return mask, cache
        now = time.monotonic()
        for r in self._running:
            if not r.done and r.cancelled:
                self._finish(r, None)
            elif not r.done and now > r.deadline:
                self._finish(r, RequestTimeoutError("request timed out"))
        keep = [i for i, r in enumerate(self._running) if not r.done]
        if len(keep) == len(self._running):
            return mask, cache
        with self._lock:
            self._running = [self._running[i] for i in keep]
        if not keep:
            return None, None
        assert self.runner is not None
        return self.runner.select(mask, cache, keep)

    def _append(self, r: _Request, token: int) -> None:
        """Record a sampled token, stream the new text, finish the request if it is done."""
        assert self.runner is not None
        if r.first_token_at is None:
            r.first_token_at = time.perf_counter()
        r.generated.append(token)
        p = r.params
        finish: str | None = None
        if token in self.runner.eos_ids and len(r.generated) > p.min_tokens:
            finish = "stop"
            text = self.runner.decode_text(r.generated[:-1])
        else:
            text = self.runner.decode_text(r.generated)
            if len(r.generated) >= p.max_tokens:
                finish = "length"
        if p.stop:
            hits = [i for i in (text.find(s, max(0, r.sent_chars - len(s))) for s in p.stop) if i >= 0]
            if hits:
                text, finish = text[: min(hits)], "stop"
        if finish is None:
            # Hold back an incomplete UTF-8 character and a possible start of a stop sequence.
            end = len(text.rstrip("\ufffd"))
            end -= _stop_holdback(text[:end], p.stop)
        else:
            end = len(text)
        if finish is not None:
            r.done = True  # before the client can see the last delta, so stats agree with it
        if end > r.sent_chars or finish is not None:
            r.emit(Delta(text[r.sent_chars : end], finish))
            r.sent_chars = max(r.sent_chars, end)

    def _finish(self, r: _Request, error: EngineError | None) -> None:
        if r.done:
            return
        r.done = True
        if error is not None:
            r.emit(Delta("", None, error))
        else:
            r.emit(Delta("", "cancelled"))

    def _fail_rows(self, rows: list[_Request], exc: Exception) -> None:
        """A model step failed: fail its rows with a 503-class error, keep serving the others."""
        log.error("Generation step failed for %d requests: %s", len(rows), exc, exc_info=exc)
        with self._lock:
            self._running = [r for r in self._running if r not in rows]
        for r in rows:
            self._finish(r, GenerationFailedError(f"generation failed: {type(exc).__name__}"))
