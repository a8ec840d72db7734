"""The generation engine, in the order a request meets it::

submit ─► requests (typed errors, SamplingParams, RequestHandle)
      ─► core.Engine: the queue and the worker loop, failures, streaming
      ─► scheduler: each step, decode tokens + prompt chunks up to the token budget;
                    admission by free KV blocks, preemption
      ─► blocks: the block pool and the prefix index (hash of tokens + images)
      ─► runner.ModelRunner: one flattened forward pass over the paged cache (kvcache)
      ─► sampling: each row's next token; stop-sequence hold-back
sizing: how many blocks the pool gets (kvplan's formula, the operator's too)
"""

from autoglm_runtime.engine.core import BATCH_CAP_RECOVERY_STEPS, Engine
from autoglm_runtime.engine.requests import (
    Delta,
    EngineConfig,
    EngineError,
    EngineNotReadyError,
    EngineOverloadedError,
    EngineStats,
    GenerationFailedError,
    InvalidRequestError,
    ModelUnavailableError,
    PromptTooLongError,
    QueueFullError,
    RequestHandle,
    RequestTimeoutError,
    SamplingParams,
    _Request,
)
from autoglm_runtime.engine.runner import ModelRunner, UnsupportedModelError

__all__ = [
    "BATCH_CAP_RECOVERY_STEPS",
    "Delta",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineNotReadyError",
    "EngineOverloadedError",
    "EngineStats",
    "GenerationFailedError",
    "InvalidRequestError",
    "ModelRunner",
    "ModelUnavailableError",
    "PromptTooLongError",
    "QueueFullError",
    "RequestHandle",
    "RequestTimeoutError",
    "SamplingParams",
    "UnsupportedModelError",
    "_Request",
]
