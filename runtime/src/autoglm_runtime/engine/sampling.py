"""Choosing each row's next token: its own temperature, top_p, seed and OpenAI penalties; and how
much streamed text to hold back while it might still turn into a stop sequence."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from autoglm_runtime.engine.request_state import EngineRequest
from autoglm_runtime.engine.requests import Delta


def sample(logits: Any, requests: Sequence[EngineRequest], eos_ids: set[int]) -> list[int]:
    """One token per row with that row's own temperature/top_p/seed; EOS masked below min_tokens."""
    import torch

    for row, r in enumerate(requests):
        p = r.params
        if r.generated and (p.frequency_penalty or p.presence_penalty):
            counts = torch.bincount(
                torch.tensor(r.generated, device=logits.device), minlength=logits.shape[-1]
            )[: logits.shape[-1]].to(logits.dtype)
            logits[row] -= counts * p.frequency_penalty + (counts > 0).to(logits.dtype) * p.presence_penalty
    if eos_ids:
        eos = torch.tensor(sorted(eos_ids), device=logits.device)
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


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing chars might start a stop sequence (held back from the stream)."""
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:n]):
                hold = n
                break
    return hold


def next_delta(
    r: EngineRequest, token: int, eos_ids: set[int], decode: Callable[[list[int]], str]
) -> Delta | None:
    """Append ``token`` to ``r`` and return the text the client may see now (None: nothing yet);
    the last delta carries the finish reason (the engine finishes the request before sending it)."""
    r.generated.append(token)
    p = r.params
    finish: str | None = None
    if token in eos_ids and len(r.generated) > p.min_tokens:
        finish = "stop"
        text = decode(r.generated[:-1])
    else:
        text = decode(r.generated)
        if len(r.generated) >= p.max_tokens:
            finish = "length"
    if p.stop:
        hits = [i for i in (text.find(s, max(0, r.sent_chars - len(s))) for s in p.stop) if i >= 0]
        if hits:
            text, finish = text[: min(hits)], "stop"
    if finish is None:
        # Hold back an incomplete UTF-8 character and a possible start of a stop sequence.
        end = len(text.rstrip("\ufffd"))
        end -= stop_holdback(text[:end], p.stop)
    else:
        end = len(text)
    if end > r.sent_chars or finish is not None:
        delta = Delta(text[r.sent_chars : end], finish)
        r.sent_chars = max(r.sent_chars, end)
        return delta
    return None
