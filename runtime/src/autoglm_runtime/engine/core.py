"""The engine: one model, one worker thread, continuous batching by a per-step token budget.

Requests wait in a bounded queue. A single worker thread owns the model and runs a loop of
steps; each step the :class:`~.scheduler.Scheduler` picks a decode token for every running row and
prompt chunks up to the token budget, admitting waiting requests when the paged KV pool
(:mod:`.blocks`) has blocks for them (reusing cached prefix blocks), and the
:class:`~.runner.ModelRunner` runs them in one forward pass. Rows leave as soon as they finish.

The event loop is never blocked: the worker hands token deltas to each request's asyncio queue with
``loop.call_soon_threadsafe``. This package never imports FastAPI; the HTTP layer maps the typed
errors of :mod:`.requests` to status codes.

Failures: a model step that raises (CUDA out of memory above all) fails only its own rows, and not
at once: the engine frees cached memory, halves the rows and tokens per step, and runs the rows
again (their KV up to the failed step is still in the cache, so streams continue where they
were); only a row that fails in a step of its own gets :class:`GenerationFailedError`, and counts
towards :attr:`Engine.breaker`; when that opens, new requests get :class:`ModelUnavailableError`
at once and queued ones are not fed to the model until a probe request succeeds. The caps regrow
by one row per ``BATCH_CAP_RECOVERY_STEPS`` good steps (:mod:`.backoff`).

The :class:`~.scheduler.Scheduler` owns the queues: the engine adds requests to it and ends them
through its ``finish`` (blocks back, status set, exactly once), then tells the client.

Extension points:
- ``ModelRunner`` is the only code that touches the model; pass another ``runner`` (e.g. one that
  raises on the n-th step) to inject failures.
- ``Engine.batch_observers`` get the number of rows of every step, ``Engine.failure_observers``
  every failed model step (metrics).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from autoglm_runtime.breaker import CircuitBreaker, CircuitOpenError
from autoglm_runtime.engine.backoff import StepCaps
from autoglm_runtime.engine.blocks import BlockPool
from autoglm_runtime.engine.request_state import FINISH_STATUS, EngineRequest, RequestStatus
from autoglm_runtime.engine.requests import (
    Delta,
    EngineConfig,
    EngineError,
    EngineNotReadyError,
    EngineStats,
    GenerationFailedError,
    InvalidRequestError,
    ModelUnavailableError,
    PromptTooLongError,
    QueueFullError,
    RequestHandle,
    RequestTimeoutError,
    SamplingParams,
)
from autoglm_runtime.engine.runner import ModelRunner
from autoglm_runtime.engine.sampling import next_delta
from autoglm_runtime.engine.scheduler import Chunk, Scheduler
from autoglm_runtime.engine.sizing import size_pool

log = logging.getLogger(__name__)


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
        self.batch_observers: list[Callable[[int], None]] = []
        self.failure_observers: list[Callable[[BaseException], None]] = []
        self.breaker = CircuitBreaker(
            config.breaker_failure_threshold, config.breaker_window_s, config.breaker_cooldown_s
        )
        self.failed_steps = 0  # model steps that raised
        self.retried_rows = 0  # rows re-run in a smaller batch after their batch failed
        self.caps = StepCaps(config.max_batch_size)
        self._lock = threading.Condition()  # the worker sleeps on it; the scheduler's queues use it
        self.scheduler: Scheduler | None = None
        self.pool_description = ""
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._steps = 0
        self._max_batch_seen = 0
        self._last_fresh_batch = 2  # > 1: the first fresh batch waits the window (see _loop)
        self._finishing: list[tuple[EngineRequest, Delta]] = []  # rows whose last token came this step
        self.load_error: str | None = None

    # lifecycle
    @property
    def ready(self) -> bool:
        return self.runner is not None and self._thread is not None and self._thread.is_alive()

    def start(self, runner: ModelRunner, model_name: str | None = None) -> None:
        """Run the worker on a new thread."""
        self._configure(runner, model_name)
        self._thread = threading.Thread(target=self._worker, name="autoglm-engine", daemon=True)
        self._thread.start()

    def run_here(self, runner: ModelRunner, model_name: str | None = None) -> None:
        """Run the worker on the calling thread until :meth:`stop` (blocks).

        ``serve`` uses it so the thread that loaded the model goes on to serve it (one thread less).
        """
        self._configure(runner, model_name)
        self._thread = threading.current_thread()
        self._worker()

    def _configure(self, runner: ModelRunner, model_name: str | None) -> None:
        """Size the KV pool from the memory left after loading and set up the scheduler."""
        sizing = size_pool(runner, self.config)
        runner.configure(sizing.blocks, sizing.block_size)
        pool = BlockPool(sizing.blocks, sizing.block_size, prefix_caching=self.config.prefix_caching)
        self.scheduler = Scheduler(pool, sizing.step_tokens, self._lock, prepare=runner.prepare)
        self.pool_description = sizing.describe()
        log.info("KV cache: %s", self.pool_description)
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.model_name = model_name

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
        scheduler = self.scheduler
        if scheduler is None:
            return EngineStats(0, 0, 0, self._steps, self._max_batch_seen)
        with self._lock:
            waiting, running = len(scheduler.waiting), len(scheduler.running)
        pool = scheduler.pool
        return EngineStats(
            *(waiting, running, waiting + running, self._steps, self._max_batch_seen),
            kv_blocks_total=pool.num_blocks,
            kv_block_size=pool.block_size,
            kv_blocks_used=pool.used,
            kv_blocks_cached=pool.cached,
            prefix_query_tokens=pool.query_tokens,
            prefix_hit_tokens=pool.hit_tokens,
            preemptions=scheduler.preemptions,
        )

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
        scheduler = self.scheduler
        if not self.ready or self._stopping or scheduler is None:
            raise EngineNotReadyError("the model is still loading" if not self._stopping else "shutting down")
        ids = (
            await asyncio.to_thread(self.tokenize_prompt, prompt)
            if isinstance(prompt, str)
            else self.tokenize_prompt(prompt)
        )
        params = self._check_lengths(scheduler, ids, params)
        image_keys = []
        if images is not None and self.runner is not None:
            image_keys = await asyncio.to_thread(self.runner.image_keys, ids, images)
        try:
            probe = self.breaker.allow()
        except CircuitOpenError as exc:
            raise ModelUnavailableError(f"{exc}; retry later", exc.retry_after_s) from None
        request = EngineRequest(
            prompt_ids=ids,
            images=images,
            image_keys=image_keys,
            params=params,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            deadline=time.monotonic() + self.config.request_timeout_seconds,
        )
        with self._lock:  # the check and the add at once: concurrent submits see each other
            pending = scheduler.pending
            waiting_after = pending + 1 - self.config.max_batch_size
            if pending >= self.config.max_concurrent_requests or waiting_after > self.config.max_queue:
                if probe:
                    self.breaker.cancel_probe()
                raise QueueFullError(
                    f"server busy: {pending} requests in flight, queue limit {self.config.max_queue}; retry later",
                    retry_after_s=1.0,
                )
            scheduler.add_request(request)
        return RequestHandle(self, request)

    def _check_lengths(self, scheduler: Scheduler, ids: list[int], params: SamplingParams) -> SamplingParams:
        """Refuse a prompt over the limits or beyond the KV cache; cap max_tokens at the server's."""
        if len(ids) > self.config.max_input_tokens:
            raise PromptTooLongError(
                f"prompt has {len(ids)} tokens; this server accepts at most {self.config.max_input_tokens}"
            )
        if params.max_tokens > self.config.max_new_tokens:
            params = SamplingParams(**{**params.__dict__, "max_tokens": self.config.max_new_tokens})
        if not scheduler.fits_ever(len(ids) + params.max_tokens):
            raise PromptTooLongError(
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) needs more KV cache than "
                f"this server has ({scheduler.capacity_tokens()} tokens); send a shorter prompt or fewer max_tokens"
            )
        return params

    # the worker
    def _worker(self) -> None:
        import torch

        # Inference mode is per thread: the whole loop (model steps, sampling) runs in it.
        with torch.inference_mode():
            while not self._stopping:
                try:
                    self._loop()
                except Exception as exc:  # noqa: BLE001 - a bug here must not leave clients hanging
                    assert self.scheduler is not None
                    self._finish_completed(self.scheduler)
                    self._fail_rows(list(self.scheduler.running), exc)

    def _loop(self) -> None:
        assert self.runner is not None
        assert self.scheduler is not None
        runner, scheduler = self.runner, self.scheduler
        while True:
            fresh = self._wait_for_work(scheduler)
            if self._stopping:
                break
            self._sweep(scheduler)
            before = len(scheduler.running)
            chunks = scheduler.schedule(max_rows=self.caps.rows, max_tokens=self.caps.tokens)
            if not chunks:
                if scheduler.running and len(scheduler.running) == before:
                    with self._lock:  # nothing can run now (e.g. every row beyond a lowered cap)
                        self._lock.wait(0.01)
                continue
            if fresh:
                self._last_fresh_batch = len(chunks)
            self._steps += 1
            self._max_batch_seen = max(self._max_batch_seen, len(chunks))
            for observer in self.batch_observers:
                observer(len(chunks))
            sampling = [c.request for c in chunks if c.sample]
            try:
                logits = runner.step(chunks)
                tokens = runner.sample(logits, sampling) if sampling else []
            except Exception as exc:  # noqa: BLE001 - any model failure fails these rows only
                logits = None
                self._step_failed(exc, chunks)
                continue
            self.breaker.record_success()
            self.caps.succeeded()
            scheduler.commit(chunks)
            for r, t in zip(sampling, tokens, strict=True):
                self._append(r, t)
            self._finish_completed(scheduler)
        for r in scheduler.requests():
            self._finish(r, RequestStatus.FINISHED_ERROR, EngineNotReadyError("the server is shutting down"))

    def _wait_for_work(self, scheduler: Scheduler) -> bool:
        """Sleep until there is work or the engine stops; True when the batch starts fresh."""
        with self._lock:
            while not self._stopping and not scheduler.waiting and not scheduler.running:
                self._lock.wait()
            fresh = not scheduler.running
            if fresh and self.config.batch_window_ms > 0 and self._last_fresh_batch > 1:
                # A fresh batch: give concurrent requests a moment to arrive together. Skipped
                # while traffic comes one request at a time (the last fresh batch had one row):
                # waiting would only add the window to every request's latency; a burst that
                # then arrives joins the running batch at the next step anyway.
                end = time.monotonic() + self.config.batch_window_ms / 1000
                while len(scheduler.waiting) < self.config.max_batch_size and not self._stopping:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
        return fresh

    def _sweep(self, scheduler: Scheduler) -> None:
        """Before a step: end cancelled and expired requests; shed the queue while the breaker is open."""
        now = time.monotonic()
        shed = self.breaker.is_open
        retry = max(1.0, self.breaker.retry_after_s()) if shed else 0.0
        max_wait = self.config.max_queue_wait_seconds
        for r in scheduler.requests():
            if r.cancelled:
                self._finish(r, RequestStatus.FINISHED_ABORTED)
            elif now > r.deadline:
                self._finish(r, RequestStatus.FINISHED_TIMEOUT, RequestTimeoutError("request timed out"))
            elif (
                max_wait is not None
                and r.status is not RequestStatus.RUNNING
                and r.first_token_at is None  # nothing streamed yet: the client can retry elsewhere
                and time.perf_counter() - r.submitted_at > max_wait
            ):
                waited = QueueFullError(f"waited over {max_wait:g} s in the queue; retry later")
                self._finish(r, RequestStatus.FINISHED_ERROR, waited)
            elif shed and r.status is not RequestStatus.RUNNING:
                # While the breaker is open no new request reaches the model.
                error = ModelUnavailableError("the model keeps failing; retry later", retry)
                self._finish(r, RequestStatus.FINISHED_ERROR, error)

    def _finish(self, r: EngineRequest, status: RequestStatus, error: EngineError | None = None) -> None:
        """End ``r`` (its blocks back, its status set: once) and tell the client: its error, or that
        it was cancelled."""
        assert self.scheduler is not None
        if self.scheduler.finish(r, status):
            r.emit(Delta("", None, error) if error is not None else Delta("", "cancelled"))

    def _finish_completed(self, scheduler: Scheduler) -> None:
        """End the rows that sampled their last token this step, then send that last delta (so the
        stats a client reads after it already count the row as finished)."""
        finishing, self._finishing = self._finishing, []
        for r, last in finishing:
            assert last.finish_reason is not None
            if scheduler.finish(r, FINISH_STATUS[last.finish_reason]):
                r.emit(last)

    def _step_failed(self, exc: Exception, chunks: list[Chunk]) -> None:
        """A model step raised: shrink the step and run its rows again, or fail a row that was alone.

        The rows keep their KV up to the failed step (the step's own writes are past ``computed``
        and get overwritten), so a retry continues where the stream was. Only a row failing alone
        counts towards the circuit breaker: one poisonous request fails log2(batch) steps on its way
        down, which must not take the pod out of service.
        """
        rows = [c.request for c in chunks]
        self.failed_steps += 1
        self.caps.failed(len(rows), sum(c.n for c in chunks))
        if len(rows) > 1:
            self.retried_rows += len(rows)
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
        if len(rows) == 1:
            self.breaker.record_failure(exc)
            self._fail_rows(rows, exc)

    def _append(self, r: EngineRequest, token: int) -> None:
        """Record a sampled token and stream the new text; a row that is done finishes after the step."""
        assert self.runner is not None
        if r.first_token_at is None:
            r.first_token_at = time.perf_counter()
        delta = next_delta(r, token, self.runner.eos_ids, self.runner.decode_text)
        if delta is not None and delta.finish_reason is not None:
            self._finishing.append((r, delta))
        elif delta is not None:
            r.emit(delta)

    def _fail_rows(self, rows: list[EngineRequest], exc: Exception) -> None:
        """Rows the model failed on: a 503-class error for each; the others keep being served."""
        log.error("Generation step failed for %d requests: %s", len(rows), exc, exc_info=exc)
        for r in rows:
            error = GenerationFailedError(f"generation failed: {type(exc).__name__}")
            self._finish(r, RequestStatus.FINISHED_ERROR, error)
