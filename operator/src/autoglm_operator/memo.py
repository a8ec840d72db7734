"""What a CR renders to, remembered while what rendering reads stays the same.

Most reconciles change nothing: they follow a child's status (a rollout, an autoscaler's
conditions) or re-check an unchanged CR. Each rendered the CR again (templates, YAML, a hash per
child): in a 1,000-CR burst on a real API server that was ~40% of the operator's CPU (``py-spy``,
docs/benchmarks.md). The memo keeps, for the most recently reconciled CRs, the objects in apply
order with their applied hashes, as compressed JSON (~2 kB a CR), and the rest of the render
(plan, checksum); a hit returns fresh objects, so callers may change them.

The key is everything :func:`autoglm_operator.render.render` reads: the CR's identity (name,
namespace, uid, apiVersion: its owner reference), its spec, the GPU seen on the nodes and where a
ScaledObject's Prometheus is. Bounded (LRU): a burst's reconciles of one CR come close together,
and a miss only costs the render it replaces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from autoglm_operator.render import Rendered

MEMO_SIZE = 256


def render_key(body: Mapping[str, Any], gpu: Any, prometheus_address: str) -> str:
    meta = body.get("metadata") or {}
    inputs = [
        body.get("apiVersion"),
        meta.get("name"),
        meta.get("namespace"),
        meta.get("uid"),
        body.get("spec"),
        repr(gpu),
        prometheus_address,
    ]
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class RenderMemo:
    """Per CR uid: (key, the render without its objects, the wanted objects as zlib'd JSON)."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[str, Rendered, bytes]] = OrderedDict()
        self._lock = threading.Lock()  # reconciles run in several threads

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, uid: str, key: str) -> tuple[Rendered, list[dict[str, Any]]] | None:
        with self._lock:
            entry = self._entries.get(uid)
            if entry is None or entry[0] != key:
                return None
            self._entries.move_to_end(uid)
        wanted = json.loads(zlib.decompress(entry[2]))
        return dataclasses.replace(entry[1], objects=wanted), wanted

    def put(self, uid: str, key: str, rendered: Rendered, wanted: list[dict[str, Any]]) -> None:
        blob = zlib.compress(json.dumps(wanted, separators=(",", ":")).encode())
        with self._lock:
            self._entries[uid] = (key, dataclasses.replace(rendered, objects=[]), blob)
            self._entries.move_to_end(uid)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._entries.pop(uid, None)
