"""The scheduler: which tokens of which rows run in the next step (torch-free).

Every row has ``length`` tokens (prompt + generated) of which ``computed`` have their KV in the
cache; a step computes a *chunk* of the rest. One policy covers prefill, decode, chunked prefill
and recompute after preemption, as in vLLM's v1 scheduler:

1. Running rows first, decode rows (one token left) before rows still prefilling, oldest first:
   each gets ``min(tokens left, budget left)`` tokens, so a long prompt is prefilled over several
   steps while every stream keeps getting a token per step.
2. A row that needs a new block when none is free preempts the newest running row (its blocks go
   back to the pool — its full blocks stay indexed, so its resume usually finds them — and it
   waits at the head of the queue to be recomputed), or itself when it is the newest.
3. Waiting requests are admitted in arrival order while there is budget, a batch slot, and blocks
   for their whole sequence beyond what the prefix cache already holds; the first that does not
   fit waits (first come, first served), and so does everyone behind it.

A chunk that reaches the end of its row's sequence samples the row's next token.

The scheduler owns the queues, as vLLM's does: ``waiting`` and ``running`` change only here. The
engine adds requests (:meth:`Scheduler.add_request`, from the event loop, under ``lock``) and ends
them (:meth:`Scheduler.finish`, the one place a request finishes and gives its blocks back).
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from autoglm_runtime.engine.blocks import BlockPool, block_hash, image_digests
from autoglm_runtime.engine.request_state import EngineRequest, RequestStatus
from autoglm_runtime.kvplan import blocks_for


@dataclass
class Chunk:
    request: EngineRequest
    start: int  # first token of the chunk (== request.computed when scheduled)
    n: int
    sample: bool  # the chunk ends the sequence: its last position's logits give the next token


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        step_tokens: int,
        lock: threading.Condition | None = None,
        prepare: Callable[[EngineRequest], None] = lambda r: None,
    ) -> None:
        self.pool = pool
        self.block_size = pool.block_size
        self.step_tokens = step_tokens
        # Guards ``waiting``, which the event loop appends to; the engine's worker sleeps on it.
        self.lock = lock or threading.Condition()
        self.prepare = prepare  # the runner's per-request set-up at admission (rotary positions)
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.preemptions = 0
        self._order = itertools.count()

    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.block_size

    def fits_ever(self, tokens: int) -> bool:
        return blocks_for(tokens, self.block_size) <= self.pool.num_blocks

    # the queues
    def add_request(self, r: EngineRequest) -> None:
        """Queue ``r`` (any thread) and wake the worker."""
        with self.lock:
            r.status = RequestStatus.WAITING
            self.waiting.append(r)
            self.lock.notify_all()

    @property
    def pending(self) -> int:
        """Requests admitted and not finished: waiting + running."""
        with self.lock:
            return len(self.waiting) + len(self.running)

    def requests(self) -> list[EngineRequest]:
        """A snapshot of every unfinished request, waiting ones first."""
        with self.lock:
            return [*self.waiting, *self.running]

    def finish(self, r: EngineRequest, status: RequestStatus) -> bool:
        """The one way a request ends: it leaves its queue, gives its blocks back and takes
        ``status``. False (and nothing changes) when it had finished already."""
        assert status.finished
        if r.finished:
            return False
        with self.lock:
            if r.status is RequestStatus.RUNNING:
                self.running.remove(r)
            else:
                self.waiting.remove(r)
            r.status = status
        self._free(r)
        return True

    # one step
    def schedule(self, *, max_rows: int, max_tokens: int, admit: bool = True) -> list[Chunk]:
        budget = min(self.step_tokens, max_tokens)
        chunks: list[Chunk] = []
        preempted = False
        order = sorted(self.running, key=lambda r: (r.length - r.computed > 1, r.admitted_at))
        for r in order[:max_rows]:
            if r not in self.running:  # preempted for an older row in this loop
                continue
            todo = r.length - r.computed
            n = min(todo, budget)
            if n <= 0:
                continue
            while not self._grow(r, r.computed + n):
                victim = max(self.running, key=lambda x: x.admitted_at)
                self.preempt(victim)
                preempted = True
                dropped = [c for c in chunks if c.request is victim]
                for c in dropped:
                    chunks.remove(c)
                    budget += c.n
                if victim is r:
                    break
            else:
                chunks.append(Chunk(r, r.computed, n, sample=n == todo))
                budget -= n
        while admit and not preempted and budget > 0 and len(chunks) < max_rows:
            new = self._admit_next()
            if new is None:
                break
            n = min(new.length - new.computed, budget)
            chunks.append(Chunk(new, new.computed, n, sample=n == new.length - new.computed))
            budget -= n
        return chunks

    def _grow(self, r: EngineRequest, tokens: int) -> bool:
        need = blocks_for(tokens, self.block_size) - len(r.blocks)
        if need <= 0:
            return True
        if need > self.pool.available:
            return False
        r.blocks.extend(self.pool.allocate(need))
        return True

    def _admit_next(self) -> EngineRequest | None:
        with self.lock:
            if not self.waiting:
                return None
            r = self.waiting[0]
        self.prepare(r)
        self._hash_blocks(r, r.length // self.block_size)
        reusable = (r.length - 1) // self.block_size  # at least the last token is computed
        hits = self.pool.lookup(r.hashes[:reusable])
        need = blocks_for(r.length, self.block_size) - len(hits)
        if need > self.pool.available:
            self.pool.release(hits)
            return None
        with self.lock:
            if not self.waiting or self.waiting[0] is not r:  # cancelled meanwhile
                self.pool.release(hits)
                return None
            self.waiting.popleft()
        r.blocks = hits + self.pool.allocate(need)
        r.computed = len(hits) * self.block_size
        self.pool.record_lookup(r.length, r.computed)
        r.admitted_at = next(self._order)
        with self.lock:
            r.status = RequestStatus.RUNNING
            self.running.append(r)
        return r

    def _hash_blocks(self, r: EngineRequest, full: int) -> None:
        """Extend ``r.hashes`` to the first ``full`` blocks of its sequence."""
        size = self.block_size
        while len(r.hashes) < full:
            b = len(r.hashes)
            parent = r.hashes[-1] if r.hashes else b""
            digests = image_digests(r.image_keys, b * size, (b + 1) * size)
            r.hashes.append(block_hash(parent, r.token_range(b * size, (b + 1) * size), digests))

    # after the step
    def commit(self, chunks: list[Chunk]) -> None:
        """The step ran: its tokens' KV is in the cache; index the blocks that became full."""
        for c in chunks:
            r = c.request
            r.computed = c.start + c.n
            full = r.computed // self.block_size
            if self.pool.prefix_caching and full > 0:
                self._hash_blocks(r, full)
                for b in range(c.start // self.block_size, full):  # earlier ones are indexed already
                    self.pool.register(r.blocks[b], r.hashes[b])

    def preempt(self, r: EngineRequest) -> None:
        """Give ``r``'s blocks back; it waits at the head of the queue and is recomputed later."""
        with self.lock:
            self.running.remove(r)
            r.status = RequestStatus.PREEMPTED
            self.waiting.appendleft(r)
        self._free(r)
        r.mm_embeds = None
        self.preemptions += 1

    def _free(self, r: EngineRequest) -> None:
        self.pool.release(r.blocks)
        r.blocks = []
        r.computed = 0
