"""How big a step may be after the model failed: multiplicative decrease, additive increase.

A step that raised (CUDA out of memory above all) was too big for now: the rows and tokens per step
are halved, and grow back by one row (tokens doubling) per ``BATCH_CAP_RECOVERY_STEPS`` good steps,
as TCP does with its window.
"""

from __future__ import annotations

BATCH_CAP_RECOVERY_STEPS = 32
NO_TOKEN_CAP = 1 << 30


class StepCaps:
    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.rows = max_batch_size  # lowered after a failed step, regrows with good steps
        self.tokens = NO_TOKEN_CAP  # tokens per step, lowered with rows after a failed step
        self._good_steps = 0

    def succeeded(self) -> None:
        if self.rows < self.max_batch_size or self.tokens < NO_TOKEN_CAP:
            self._good_steps += 1
            if self._good_steps >= BATCH_CAP_RECOVERY_STEPS:
                self.rows = min(self.max_batch_size, self.rows + 1)
                self.tokens = NO_TOKEN_CAP if self.tokens * 2 >= NO_TOKEN_CAP else self.tokens * 2
                self._good_steps = 0

    def failed(self, rows: int, tokens: int) -> None:
        """A step of ``rows`` rows and ``tokens`` tokens raised (a row alone changes nothing)."""
        if rows > 1:
            self.rows = max(1, min(self.rows, rows) // 2)
            self.tokens = max(1, min(self.tokens, tokens) // 2)
        self._good_steps = 0
