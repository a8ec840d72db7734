"""KV blocks and the prefix index (torch-free bookkeeping; the tensors live in :mod:`.kvcache`).

The pool has ``num_blocks`` blocks of ``block_size`` token slots. A block is

- *in use* while one or more rows hold it (reference count > 0);
- *cached* when no row holds it but it is full and its content hash is in the prefix index: a
  later prompt with the same prefix takes it back instead of recomputing it; cached blocks are
  evicted least recently used first when the pool needs room;
- *free* otherwise.

A block's hash chains the hash of the block before it with its token ids and the digests of the
images whose tokens it covers, so equal hashes mean equal KV: the same tokens at the same positions
after the same prefix (with multimodal rotary positions too, since they follow from the prefix).
Only full blocks are indexed, and shared blocks are never written again: a row that reuses a
prefix starts writing in a block of its own.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence


class NoFreeBlocksError(RuntimeError):
    """The pool cannot hand out the blocks asked for (the scheduler preempts or waits)."""


def block_hash(parent: bytes, tokens: Sequence[int], image_digests: Sequence[bytes] = ()) -> bytes:
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(len(tokens).to_bytes(4, "little"))
    for t in tokens:
        h.update(int(t).to_bytes(4, "little", signed=False))
    for d in image_digests:
        h.update(b"img")
        h.update(d)
    return h.digest()


def image_digests(keys: Sequence[tuple[int, int, bytes]], start: int, end: int) -> list[bytes]:
    """Digests of the images whose token spans overlap ``start:end`` (keys: (start, end, digest))."""
    return [d for s, e, d in keys if s < end and e > start]


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV pool needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self._refs = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._cached: OrderedDict[int, None] = OrderedDict()  # refs == 0, hashed; LRU first
        self._index: dict[bytes, int] = {}
        self.query_tokens = 0
        self.hit_tokens = 0

    # counts
    @property
    def available(self) -> int:
        """Blocks that can be handed out now (free + evictable cached ones)."""
        return len(self._free) + len(self._cached)

    @property
    def used(self) -> int:
        return self.num_blocks - self.available

    @property
    def cached(self) -> int:
        return len(self._cached)

    # allocation
    def allocate(self, n: int) -> list[int]:
        if n > self.available:
            raise NoFreeBlocksError(f"{n} KV blocks asked for, {self.available} available")
        out = []
        for _ in range(n):
            if self._free:
                block = self._free.popleft()
            else:
                block, _ = self._cached.popitem(last=False)  # evict the least recently used
                h = self._hash[block]
                if h is not None and self._index.get(h) == block:
                    del self._index[h]
                self._hash[block] = None
            self._refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each block; the last one makes it cached (if indexed) or free.
        Released in reverse so a sequence's tail is evicted before its head (the head is the
        prefix other requests share)."""
        for block in reversed(blocks):
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            h = self._hash[block]
            if h is not None and self._index.get(h) == block:
                self._cached[block] = None
            else:
                self._hash[block] = None
                self._free.append(block)

    # prefix index
    def lookup(self, hashes: Sequence[bytes]) -> list[int]:
        """The longest run of cached blocks matching ``hashes`` from the start; each gets a reference."""
        if not self.prefix_caching:
            return []
        found: list[int] = []
        for h in hashes:
            block = self._index.get(h)
            if block is None:
                break
            if self._refs[block] == 0:
                self._cached.pop(block, None)
            self._refs[block] += 1
            found.append(block)
        return found

    def record_lookup(self, queried_tokens: int, hit_tokens: int) -> None:
        self.query_tokens += queried_tokens
        self.hit_tokens += hit_tokens

    def register(self, block: int, h: bytes) -> None:
        """Index a full block of a running row under its hash (the first block with a hash keeps it)."""
        if not self.prefix_caching or self._hash[block] is not None:
            return
        if h not in self._index:
            self._index[h] = block
            self._hash[block] = h
