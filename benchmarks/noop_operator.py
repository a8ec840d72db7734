"""The baseline for the operator's CPU cost: a kopf operator whose handler does nothing.

Same kopf version, same resource, same API emulator; it only pays for kopf's own watching, handler
bookkeeping and annotation patches. ``kopf run benchmarks/noop_operator.py --standalone -A``.
"""

from __future__ import annotations

from typing import Any

import kopf

from autoglm_operator import api


@kopf.on.startup()
def _settings(settings: kopf.OperatorSettings, **_: Any) -> None:
    # The same bookkeeping storage as the real operator (annotations, never status).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = 40  # logging.ERROR: no Events for kopf's log lines


@kopf.on.create(api.GROUP, api.VERSION, api.PLURAL)
def noop(**_: Any) -> None:
    return None
