"""A request inside the engine: its one status, and the state each part of the engine keeps on it.

As in vLLM's ``v1/request.py``, the status says where the request is and, once finished, why;
anything after ``PREEMPTED`` is finished. Only the scheduler moves a request between statuses
(:meth:`~.scheduler.Scheduler.add_request`, admission, preemption,
:meth:`~.scheduler.Scheduler.finish`); the other parts write only their own fields, named below.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from autoglm_runtime.engine.requests import Delta, SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()  # queued, holds no blocks
    RUNNING = enum.auto()  # in the batch, holds blocks
    PREEMPTED = enum.auto()  # gave its blocks back; waits at the head of the queue to be recomputed
    FINISHED_STOPPED = enum.auto()  # EOS or a stop sequence
    FINISHED_LENGTH = enum.auto()  # max_tokens reached
    FINISHED_ABORTED = enum.auto()  # the client cancelled (disconnected)
    FINISHED_TIMEOUT = enum.auto()  # request_timeout_s passed
    FINISHED_ERROR = enum.auto()  # the model failed, the breaker shed it, or the server stopped

    @property
    def finished(self) -> bool:
        return self > RequestStatus.PREEMPTED


FINISH_STATUS = {"stop": RequestStatus.FINISHED_STOPPED, "length": RequestStatus.FINISHED_LENGTH}

_ids = itertools.count(1)


@dataclass(eq=False)
class EngineRequest:
    # What the client asked for (set at submit, then read-only).
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Delta]
    deadline: float
    id: int = field(default_factory=lambda: next(_ids))
    images: Any = None  # vision.MultiModalInputs of an image request
    image_keys: list[tuple[int, int, bytes]] = field(default_factory=list)  # (start, end, digest)
    submitted_at: float = field(default_factory=time.perf_counter)
    # Where it is: written by the scheduler only.
    status: RequestStatus = RequestStatus.WAITING
    # The client asked to stop (the handle, from the event loop); the worker finishes it next step.
    cancelled: bool = False
    # Paged KV state: the scheduler's.
    blocks: list[int] = field(default_factory=list)  # block table: the KV of token t is in blocks[t // size]
    computed: int = 0  # tokens whose KV is in the cache
    hashes: list[bytes] = field(default_factory=list)  # chained hashes of the full blocks so far
    admitted_at: int = 0  # admission order (the newest running row is preempted first)
    # Output: sampling's (the worker thread).
    generated: list[int] = field(default_factory=list)
    sent_chars: int = 0
    generator: Any = None  # torch.Generator for sampling rows
    first_token_at: float | None = None
    # Multimodal model inputs: the runner's.
    rope_delta: int = 0  # multimodal rotary position offset after the images (set at admission)
    mm_positions: Any = None  # [3, len(prompt)] rotary positions of a multimodal prompt
    mm_embeds: Any = None  # image embeddings while the prompt's image tokens are being prefilled

    @property
    def finished(self) -> bool:
        return self.status.finished

    @property
    def length(self) -> int:
        """Tokens of the sequence whose KV the row needs: prompt + generated (the last one not yet fed)."""
        return len(self.prompt_ids) + len(self.generated)

    def token_range(self, start: int, end: int) -> list[int]:
        """Tokens ``start:end`` of prompt + generated, without copying the whole sequence."""
        p = len(self.prompt_ids)
        if end <= p:
            return self.prompt_ids[start:end]
        if start >= p:
            return self.generated[start - p : end - p]
        return self.prompt_ids[start:] + self.generated[: end - p]

    def emit(self, delta: Delta) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)
        except RuntimeError:  # the client's event loop is gone
            self.cancelled = True
