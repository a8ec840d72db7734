"""What tells a mounted file changed: Kubernetes swaps a Secret's ``..data`` symlink on update, which
changes the target's device/inode, and an edit changes size or mtime. Used by the API-key and TLS
reloaders."""

from __future__ import annotations

import os
from pathlib import Path

FileIdentity = tuple[tuple[int, int, int, int], ...]


def file_identity(*paths: Path) -> FileIdentity:
    """(device, inode, size, mtime) of each path, symlinks followed; raises OSError when one is gone."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)
