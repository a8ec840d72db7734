"""The model runner: the only code that runs the model.

:meth:`ModelRunner.step` runs one engine step — the scheduled chunks of every row, flattened into
one forward pass over the paged KV cache (:mod:`.kvcache`) — and returns the logits of the rows
that sample a token. Image rows (GLM-4V and other models with multimodal rotary positions) get
their image embeddings from the vision tower once, when their first image token is scheduled, and
their 3-D rotary positions from the model's ``get_rope_index`` at admission; a chunk that covers
part of an image uses the matching slice of its embeddings.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from typing import Any

from autoglm_runtime.engine import kvcache, sampling
from autoglm_runtime.engine.request_state import EngineRequest
from autoglm_runtime.engine.scheduler import Chunk


class UnsupportedModelError(RuntimeError):
    """The model cannot run on the paged engine (it does not use transformers' attention interface)."""


class ModelRunner:
    def __init__(self, model: Any, tokenizer: Any, device: str | None = None, vision: Any = None) -> None:
        import torch

        self.torch = torch
        self.model = model
        self.tokenizer = tokenizer
        self.vision = vision
        inner = getattr(model, "model", None)
        self.multimodal = vision is not None and hasattr(inner, "get_rope_index")
        self.device = device or str(model.get_input_embeddings().weight.device)
        eos: set[int] = set()
        for source in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(int(i) for i in source)
        self.eos_ids = eos
        # transformers 5 renamed the forward argument ``past_key_values`` to ``cache``.
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.text_config = model.config.get_text_config()
        if not getattr(model, "_supports_attention_backend", False):
            raise UnsupportedModelError(
                f"{type(model).__name__} does not use transformers' attention interface, which the paged "
                "KV cache needs (remote-code models often do not: use the transformers-native class)"
            )
        if "sliding_attention" in (getattr(self.text_config, "layer_types", None) or ()):
            raise UnsupportedModelError(
                f"{type(model).__name__} has sliding-window layers (not supported yet)"
            )
        kvcache.register()
        self.text_config._attn_implementation = kvcache.ATTENTION_NAME
        self.cache: kvcache.PagedKVCache | None = None
        self.block_size = 16

    # shape of the KV cache
    @property
    def num_layers(self) -> int:
        return int(self.text_config.num_hidden_layers)

    def kv_bytes_per_token(self) -> int:
        from autoglm_runtime.kvplan import kv_bytes_per_token

        c = self.text_config
        heads = int(c.num_attention_heads)
        kv_heads = int(getattr(c, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
        dtype = self.model.get_input_embeddings().weight.dtype
        return kv_bytes_per_token(self.num_layers, kv_heads, head_dim, dtype.itemsize)

    def model_dims(self) -> tuple[int, int, int, int]:
        """(hidden size, MLP width, vocabulary, bytes per activation): what one step's activations scale with."""
        c = self.text_config
        dtype = self.model.get_input_embeddings().weight.dtype
        mlp = getattr(c, "intermediate_size", None) or 4 * c.hidden_size
        return int(c.hidden_size), int(mlp), int(c.vocab_size), int(dtype.itemsize)

    def configure(self, num_blocks: int, block_size: int) -> None:
        """Create the KV pool (its tensors are allocated at the first step, layer by layer)."""
        self.block_size = block_size
        self.cache = kvcache.PagedKVCache(self.num_layers, num_blocks * block_size)

    # requests
    def image_keys(self, ids: Sequence[int], images: Any) -> list[tuple[int, int, bytes]]:
        """(start, end, digest) of each image's token span: what a prefix hash covers of an image."""
        if images is None or self.vision is None:
            return []
        torch = self.torch
        spans: list[tuple[int, int]] = []
        token = self.vision.image_token_id
        start = None
        for i, t in enumerate(ids):
            if t == token and start is None:
                start = i
            elif t != token and start is not None:
                spans.append((start, i))
                start = None
        if start is not None:
            spans.append((start, len(ids)))
        grid = images.image_grid_thw
        digests = list(getattr(images, "digests", ()) or ())
        if len(digests) != len(grid):  # inputs built without digests: hash what the model sees
            sizes = [int(torch.prod(g)) for g in grid]
            digests = []
            for px in images.pixel_values.split(sizes, dim=0):
                raw = px.detach().contiguous().cpu()
                digests.append(
                    hashlib.blake2b(raw.view(torch.uint8).numpy().tobytes(), digest_size=16).digest()
                )
        keys = []
        for (s, e), digest, g in zip(spans, digests, grid, strict=False):
            keys.append(
                (s, e, hashlib.blake2b(digest + bytes(str(g.tolist()), "ascii"), digest_size=16).digest())
            )
        return keys

    def prepare(self, r: EngineRequest) -> None:
        """At admission: the rotary positions of a multimodal prompt and the row's delta after it."""
        if not self.multimodal or r.mm_positions is not None:
            return
        torch = self.torch
        ids = torch.tensor([r.prompt_ids], dtype=torch.long, device=self.device)
        kinds = (ids == self.vision.image_token_id).int()
        grid = r.images.image_grid_thw.to(self.device) if r.images is not None else None
        positions, deltas = self.model.model.get_rope_index(
            ids, kinds, grid, attention_mask=torch.ones_like(ids)
        )
        r.mm_positions = positions[:, 0, :].to(self.device)  # [3, len(prompt)]
        r.rope_delta = int(deltas.reshape(-1)[0])

    def _image_embeds(self, r: EngineRequest) -> Any:
        if r.mm_embeds is None:
            out = self.model.model.get_image_features(
                r.images.pixel_values.to(self.device), r.images.image_grid_thw.to(self.device)
            )
            parts = getattr(out, "pooler_output", out)
            r.mm_embeds = self.torch.cat(list(parts), dim=0) if isinstance(parts, (list, tuple)) else parts
        return r.mm_embeds

    def _positions(self, r: EngineRequest, start: int, n: int) -> Any:
        torch = self.torch
        if not self.multimodal:
            return torch.arange(start, start + n, dtype=torch.long)
        prompt = len(r.prompt_ids)
        parts = []
        if start < prompt and r.mm_positions is not None:
            parts.append(r.mm_positions[:, start : min(start + n, prompt)].cpu())
        begin = max(start, prompt if r.mm_positions is not None else start)
        if begin < start + n:
            delta = r.rope_delta if r.mm_positions is not None else 0
            text = torch.arange(begin, start + n, dtype=torch.long) + delta
            parts.append(text.unsqueeze(0).expand(3, -1))
        return torch.cat(parts, dim=1)

    # the step
    def step(self, chunks: Sequence[Chunk]) -> Any:
        """Run ``chunks`` in one forward pass; returns fp32 logits [rows that sample, vocab]."""
        torch = self.torch
        assert self.cache is not None, "configure() creates the KV pool before the first step"
        ids: list[int] = []
        spans: list[kvcache.RowSpan] = []
        positions = []
        keep: list[int] = []
        images: list[tuple[int, Chunk]] = []  # (flattened offset, chunk) of chunks with image tokens
        for c in chunks:
            r = c.request
            tokens = r.token_range(c.start, c.start + c.n)
            in_prompt = c.start < len(r.prompt_ids)
            if (
                self.multimodal
                and r.images is not None
                and in_prompt
                and self.vision.image_token_id in tokens
            ):
                images.append((len(ids), c))
            spans.append(kvcache.RowSpan(len(ids), c.n, c.start, r.blocks))
            positions.append(self._positions(r, c.start, c.n))
            ids.extend(tokens)
            if c.sample:
                keep.append(len(ids) - 1)
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        position_ids = torch.cat(positions, dim=-1).to(self.device)
        position_ids = position_ids.unsqueeze(-2)  # [1, T] or [3, 1, T]
        self.cache.layout = kvcache.StepLayout(self.block_size, spans)
        inputs: dict[str, Any] = {"input_ids": input_ids}
        if images:
            inputs = {"inputs_embeds": self._embed_with_images(input_ids, images)}
        try:
            out = self.model(
                **inputs,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=torch.tensor(keep or [len(ids) - 1], device=self.device),
                **{self.cache_arg: self.cache, kvcache.LAYOUT_KWARG: self.cache.layout},
            )
        finally:
            self.cache.layout = None
        for _, c in images:  # drop embeddings once the prompt's image tokens are all in the cache
            if c.start + c.n >= len(c.request.prompt_ids):
                c.request.mm_embeds = None
        logits = out.logits[0].float()
        return logits if keep else logits[:0]

    def _embed_with_images(self, input_ids: Any, images: list[tuple[int, Chunk]]) -> Any:
        torch = self.torch
        embeds = self.model.get_input_embeddings()(input_ids)
        token = self.vision.image_token_id
        for offset, c in images:
            r = c.request
            prompt = torch.tensor(r.prompt_ids[: c.start + c.n], dtype=torch.long)
            before = int((prompt[: c.start] == token).sum())
            where = (prompt[c.start :] == token).nonzero().reshape(-1)
            table = self._image_embeds(r)
            rows = table[before : before + len(where)].to(embeds.device, embeds.dtype)
            embeds[0, offset + where.to(embeds.device)] = rows
        return embeds

    def sample(self, logits: Any, requests: Sequence[EngineRequest]) -> list[int]:
        """One token per row with that row's own temperature/top_p/seed; EOS masked below min_tokens."""
        return sampling.sample(logits, requests, self.eos_ids)

    def decode_text(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))
