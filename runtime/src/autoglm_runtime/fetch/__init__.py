"""``autoglm-runtime fetch``: download a model revision into the cache volume (the pods' init container).

Resumable (``.incomplete`` files + HTTP Range), retried with exponential backoff and jitter (honoring
``Retry-After``), every LFS file checked against the hub's sha256 (small files against their git blob
id), a file lock so replicas sharing a PVC download once, a manifest so a restart does not re-hash,
and an offline mode that succeeds with no network when the cache is complete. See ``docs/fetch.md``.

The folder is ``<cache-dir>/<org>--<name>/<revision>/`` (see :mod:`autoglm_runtime.fetch.layout`);
``--print-path`` prints it without I/O and a successful fetch prints it as its last stdout line.

Exit codes:

====  ==================  ===================================================================
code  name                meaning
====  ==================  ===================================================================
0     ok                  the revision is complete and verified in the cache
1     internal            a bug; the log has the traceback
2     usage               bad flags or source, token file missing or empty
3     auth                HTTP 401/403: token missing, rejected, or without access (gated repo)
4     not_found           HTTP 404: repo, revision or file; or no file matches the patterns
5     checksum            a file kept failing its sha256/size check; the bad copy was deleted
6     disk                cache volume full (ENOSPC/EDQUOT), too small, or not writable
7     network             retries exhausted (429/5xx, connection errors, timeouts)
8     offline_incomplete  offline mode and the cache does not hold the complete revision
9     lock_timeout        another fetch held the lock longer than ``--lock-timeout``
====  ==================  ===================================================================

This module imports only argparse at import time (the operator may import ``layout``); the
download machinery (httpx, huggingface_hub, tenacity, filelock) loads when ``run`` is called.
torch is never imported.
"""

from __future__ import annotations

import argparse

from autoglm_runtime.fetch.errors import ExitCode
from autoglm_runtime.fetch.options import add_arguments

__all__ = ["ExitCode", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    from autoglm_runtime.fetch.command import run as run_fetch

    return run_fetch(args)
