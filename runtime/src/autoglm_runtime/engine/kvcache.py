"""The paged KV cache's tensors and the attention that reads them.

One engine step is one forward pass over a *flattened* batch: the tokens of every scheduled row
(one decode token, or a chunk of a prompt) side by side in a batch of one, as transformers'
continuous-batching package does. Each attention layer

1. writes the keys/values of the step's tokens into their slots of the layer's pool
   (:meth:`PagedKVCache.update`, called by the model's attention module), and
2. attends each row's queries to that row's own slots only (:func:`paged_attention`, registered
   with transformers' ``AttentionInterface`` and selected for the language model's layers).

The model gets the step's :class:`StepLayout` as the keyword argument ``autoglm_layout``:
transformers models hand their extra keyword arguments down to the attention function, so the
layout reaches :func:`paged_attention` with no change to the model's code (with no mask function
registered for this implementation, transformers builds no mask: the layout is the mask).

Pool tensors are ``[num_blocks * block_size, kv_heads, head_dim]`` per layer, allocated at the first
step on the device and in the dtype of that layer's keys (so a model split over devices keeps
each layer's cache beside it). On a CPU ``torch.empty`` commits pages only as slots are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ATTENTION_NAME = "autoglm_paged"
LAYOUT_KWARG = "autoglm_layout"


@dataclass
class RowSpan:
    """One row of a step: ``q_len`` new tokens at flattened offset ``q_start``, after ``context``
    tokens already in the cache; ``blocks`` is the row's block table."""

    q_start: int
    q_len: int
    context: int
    blocks: list[int]


@dataclass
class StepLayout:
    block_size: int
    rows: list[RowSpan]
    _index: dict[Any, dict[str, Any]] = field(default_factory=dict)  # per-device index tensors

    def tensors(self, device: Any) -> dict[str, Any]:
        """Index tensors on ``device`` (built once per device and step)."""
        cached = self._index.get(device)
        if cached is not None:
            return cached
        import torch

        offsets = torch.arange(self.block_size, dtype=torch.long)

        def slots(r: RowSpan) -> Any:  # the pool slots of the row's context + q_len tokens
            table = torch.tensor(r.blocks, dtype=torch.long)
            return (table[:, None] * self.block_size + offsets).reshape(-1)[: r.context + r.q_len]

        every = [slots(r) for r in self.rows]
        write = torch.cat([s[r.context :] for r, s in zip(self.rows, every, strict=True)])
        out: dict[str, Any] = {"write": write.to(device)}
        decode = [i for i, r in enumerate(self.rows) if r.q_len == 1]
        if decode:
            width = max(len(every[i]) for i in decode)
            table = torch.zeros((len(decode), width), dtype=torch.long)
            mask = torch.zeros((len(decode), width), dtype=torch.bool)
            for n, i in enumerate(decode):
                table[n, : len(every[i])] = every[i]
                mask[n, : len(every[i])] = True
            out["decode_rows"] = decode
            out["decode_q"] = torch.tensor([self.rows[i].q_start for i in decode], device=device)
            out["decode_slots"] = table.to(device)
            out["decode_mask"] = mask.to(device)[:, None, None, :]
        out["prefill"] = [(r, s.to(device)) for r, s in zip(self.rows, every, strict=True) if r.q_len > 1]
        self._index[device] = out
        return out


class PagedKVCache:
    """The ``cache`` object the model's attention modules call ``update`` on."""

    is_compileable = False

    def __init__(self, num_layers: int, num_slots: int) -> None:
        self.num_slots = num_slots
        self.keys: list[Any] = [None] * num_layers
        self.values: list[Any] = [None] * num_layers
        self.layout: StepLayout | None = None

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        import torch

        assert self.layout is not None, "a step's layout is set before the forward pass"
        k = key_states[0].transpose(0, 1)  # [tokens, kv_heads, head_dim]
        v = value_states[0].transpose(0, 1)
        if self.keys[layer_idx] is None:
            shape = (self.num_slots, k.shape[1], k.shape[2])
            self.keys[layer_idx] = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.values[layer_idx] = torch.empty(shape, dtype=v.dtype, device=v.device)
        write = self.layout.tensors(k.device)["write"]
        self.keys[layer_idx].index_copy_(0, write, k)
        self.values[layer_idx].index_copy_(0, write, v)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def paged_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention of a flattened step: ``query`` [1, heads, T, dim]; ``key``/``value`` are the layer's
    pools. Decode rows (one query each) are gathered into one padded batch; each prompt chunk
    attends causally to its cached context and itself. Returns [1, T, heads, dim]."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    layout = kwargs.pop(LAYOUT_KWARG, None)
    if not isinstance(layout, StepLayout):  # another caller (e.g. generate in a warm-up)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    idx = layout.tensors(query.device)
    heads, tokens = query.shape[1], query.shape[2]
    groups = heads // key.shape[1]
    # On CUDA the memory-efficient kernel takes any mask but not grouped heads: repeat the gathered
    # keys/values (a chunk's context, not the pool) rather than fall back to the math kernel, which
    # would materialise chunk x context attention scores per head.
    repeat = groups > 1 and query.is_cuda
    gqa = groups > 1 and not repeat

    def heads_of(t: Any) -> Any:
        return t.repeat_interleave(groups, dim=-3) if repeat else t

    out = query.new_empty((tokens, heads, query.shape[3]))
    if "decode_rows" in idx:
        q = query[0].index_select(1, idx["decode_q"]).transpose(0, 1).unsqueeze(2)  # [R, H, 1, D]
        slots = idx["decode_slots"]
        k = key.index_select(0, slots.reshape(-1)).view(*slots.shape, *key.shape[1:]).transpose(1, 2)
        v = value.index_select(0, slots.reshape(-1)).view(*slots.shape, *value.shape[1:]).transpose(1, 2)
        o = sdpa(q, heads_of(k), heads_of(v), attn_mask=idx["decode_mask"], scale=scaling, enable_gqa=gqa)
        out.index_copy_(0, idx["decode_q"], o[:, :, 0, :])
    for row, slots in idx["prefill"]:
        q = query[:, :, row.q_start : row.q_start + row.q_len]
        k = heads_of(key.index_select(0, slots).transpose(0, 1).unsqueeze(0))  # [1, Hkv, K, D]
        v = heads_of(value.index_select(0, slots).transpose(0, 1).unsqueeze(0))
        if row.context == 0:
            o = sdpa(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
        else:
            width = row.context + row.q_len
            mask = torch.ones((row.q_len, width), dtype=torch.bool, device=q.device).tril(row.context)
            o = sdpa(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        out[row.q_start : row.q_start + row.q_len] = o[0].transpose(0, 1)
    return out.unsqueeze(0), None


def register() -> None:
    """Make ``autoglm_paged`` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention)
