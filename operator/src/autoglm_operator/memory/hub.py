"""Optional look-up of a model's ``config.json`` and safetensors parameter count on the hub or a mirror.

Only used when the caller allows the network (the operator passes ``allow_network``); the CLI and
tests default to the catalog and spec hints. Short timeouts: a slow hub must not stall a reconcile.
The token comes from the argument, else ``HF_TOKEN`` (huggingface_hub's usual lookup).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from autoglm_operator.memory.catalog import repo_id
from autoglm_operator.memory.errors import MemoryFitError
from autoglm_operator.memory.shapes import shape_from_config
from autoglm_operator.memory.types import ModelShape

DEFAULT_TIMEOUT_S = 5.0


def split_source(source: str) -> tuple[str | None, str]:
    """(endpoint, org/name) of ``hf://org/name`` (endpoint None = huggingface_hub's default, which
    honours ``HF_ENDPOINT``) or of a mirror URL ``https://host[/prefix]/org/name``."""
    repo = repo_id(source)
    if repo is None or source.lower().startswith("pvc://"):
        raise MemoryFitError(
            "spec.model.source", f"{source!r} names no hub repository to fetch config.json from"
        )
    if source.lower().startswith(("https://", "http://")):
        base = source.strip().rstrip("/")
        return base[: -len(repo)].rstrip("/"), repo
    return None, repo


def fetch_config(
    source: str, *, revision: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> dict[str, Any]:
    """``config.json`` of the model at ``source`` as a dict."""
    from huggingface_hub import constants, get_session, hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    endpoint, repo = split_source(source)
    if constants.HF_HUB_OFFLINE:
        raise MemoryFitError(
            "spec.model.source", f"cannot fetch config.json of {repo}: HF_HUB_OFFLINE is set"
        )
    url = hf_hub_url(repo, "config.json", revision=revision, endpoint=endpoint)
    try:
        response = get_session().get(
            url, headers=build_hf_headers(token=token), timeout=timeout, follow_redirects=True
        )
    except Exception as exc:  # network errors of any client library
        raise MemoryFitError("spec.model.source", f"cannot fetch {url}: {exc}") from None
    if response.status_code != 200:
        hint = (
            " (gated or private: set spec.model.credentialsSecret)"
            if response.status_code in (401, 403)
            else ""
        )
        raise MemoryFitError("spec.model.source", f"cannot fetch {url}: HTTP {response.status_code}{hint}")
    try:
        config = json.loads(response.content)
    except ValueError:
        raise MemoryFitError("spec.model.source", f"{url} is not JSON") from None
    if not isinstance(config, dict):
        raise MemoryFitError("spec.model.source", f"{url} is not a JSON object")
    return config


def fetch_parameter_count(
    source: str, *, revision: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> int | None:
    """Total parameters from the hub's safetensors metadata (``model_info(...).safetensors.total``);
    None when the repository has no safetensors metadata or the call fails (the config count is used)."""
    from huggingface_hub import HfApi, constants

    endpoint, repo = split_source(source)
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision, timeout=timeout)
    except Exception:  # metadata is a refinement; the config alone is enough
        return None
    safetensors = getattr(info, "safetensors", None)
    total = getattr(safetensors, "total", None)
    return int(total) if total else None


def fetch_shape(
    source: str, *, revision: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> ModelShape:
    """Shape from the fetched ``config.json``, with the parameter total from safetensors metadata when
    the hub has it (it also counts tensors the config formula does not know, kept 16-bit)."""
    _, repo = split_source(source)
    config = fetch_config(source, revision=revision, token=token, timeout=timeout)
    shape = shape_from_config(config, repo, source="hub")
    total = fetch_parameter_count(source, revision=revision, token=token, timeout=timeout)
    if total and total != shape.parameters:
        # Keep the computed Linear count: the difference (e.g. an unknown vision tower) stays 16-bit.
        linear = min(shape.quantizable_parameters, total)
        shape = dataclasses.replace(
            shape, parameters=total, linear_parameters=linear, source="hub (safetensors)"
        )
    return shape
