"""The generation engine, in the order a request meets it::

submit ─► requests (typed errors, SamplingParams, RequestHandle)
      ─► core.Engine: the worker loop, failures (backoff: smaller steps), streaming
      ─► scheduler: owns the waiting and running queues; each step, decode tokens + prompt
                    chunks up to the token budget; admission by free KV blocks, preemption;
                    request_state: a request's status (waiting … finished) and per-part state
      ─► blocks: the block pool and the prefix index (hash of tokens + images)
      ─► runner.ModelRunner: one flattened forward pass over the paged cache (kvcache)
      ─► sampling: each row's next token; stop-sequence hold-back
sizing: how many blocks the pool gets (kvplan's formula, the operator's too)
"""

from autoglm_runtime.engine.backoff import BATCH_CAP_RECOVERY_STEPS
from autoglm_runtime.engine.core import Engine
from autoglm_runtime.engine.request_state import EngineRequest, RequestStatus
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
from autoglm_runtime.engine.runner import ModelRunner, UnsupportedModelError

__all__ = [
    "BATCH_CAP_RECOVERY_STEPS",
    "Delta",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineNotReadyError",
    "EngineRequest",
    "EngineStats",
    "GenerationFailedError",
    "InvalidRequestError",
    "ModelRunner",
    "ModelUnavailableError",
    "PromptTooLongError",
    "QueueFullError",
    "RequestHandle",
    "RequestStatus",
    "RequestTimeoutError",
    "SamplingParams",
    "UnsupportedModelError",
]
