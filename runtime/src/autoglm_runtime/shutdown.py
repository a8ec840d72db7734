"""Graceful shutdown: SIGTERM drains the pod instead of cutting requests off.

uvicorn's own SIGTERM handling closes the listening socket at once (new clients get "connection
refused" while the endpoint is still in the Service) and then re-raises the signal, so the process
dies by SIGTERM instead of exiting 0. :class:`DrainingServer` changes the first SIGTERM/SIGINT to:

1. start draining at once: ``/readyz`` → 503 (Kubernetes takes the pod out of the Service) and new
   API requests → 503 ``server_shutting_down`` with ``Retry-After``; the socket stays open, so a
   client that still reaches this pod gets an answer it can retry elsewhere;
2. let in-flight requests, streams included, finish — up to ``grace_s``;
3. then hand over to uvicorn's shutdown (close connections, lifespan shutdown → engine stop), and
   exit 0.

A second signal during the drain stops at once (uvicorn's behaviour).
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from autoglm_runtime.guard import GuardState

log = logging.getLogger(__name__)

_DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, guard: GuardState, grace_s: float) -> None:
        super().__init__(config)
        self.guard = guard
        self.grace_s = grace_s
        self.drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is None and sig in _DRAIN_SIGNALS and not self.should_exit:
            # Runs in the signal handler: only set flags; on_tick (event loop) does the rest.
            self.drain_started = time.monotonic()
            self.guard.start_draining()
            log.info(
                "Received %s: draining %d in-flight request(s) for up to %.0fs",
                signal.Signals(sig).name,
                self.guard.in_flight.count,
                self.grace_s,
            )
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.drain_started is not None and not self.should_exit:
            waited = time.monotonic() - self.drain_started
            left = self.guard.in_flight.count
            if left == 0 or waited >= self.grace_s:
                if left:
                    log.warning(
                        "Shutdown grace of %.0fs over: %d request(s) still running are cut off",
                        self.grace_s,
                        left,
                    )
                else:
                    log.info("Drained in %.1fs; shutting down", waited)
                # Nothing (or nothing worth waiting for) is left: uvicorn's own wait stays short.
                self.config.timeout_graceful_shutdown = 1
                self.should_exit = True
        return await super().on_tick(counter)
