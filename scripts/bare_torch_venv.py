"""Make a virtualenv that holds torch and nothing else, from an interpreter that has that torch.

    SEED_PYTHON scripts/bare_torch_venv.py VENV [TORCH_VERSION]

The CPU form of ``make gpu-check`` (``scripts/gpu-check-cpu.sh``) needs a Python with a bare torch,
as a GPU node has, to prove that the wheelhouse brings everything else. Installing torch into a new
venv unpacks ~1 GB (a minute or more of CI time); this makes the same venv in seconds: a venv
without pip made by SEED_PYTHON, then links in its site-packages to the seed's torch, what torch
requires (its ``Requires-Dist`` for this platform, recursively) and pip (the installer the check
runs), each as the top-level entries its RECORD lists. Nothing else of the seed's is
visible: ``pip list`` in VENV shows what ``pip install torch==VERSION`` into a fresh venv would.

Exit 3 (and a line saying why) when the seed lacks that torch: the caller then pip-installs it.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
import sysconfig
import venv as venv_module
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
from pip._vendor.packaging.version import Version

TOOLS = ("pip",)  # what a venv made with pip has besides torch


def closure(roots: list[str]) -> list[md.Distribution]:
    """The installed distributions ``roots`` need (markers evaluated here, extras left out)."""
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = md.distribution(name)
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def top_levels(dist: md.Distribution, site: Path) -> set[str]:
    """First path components, inside ``site``, of the files ``dist`` installed."""
    names = set()
    for f in dist.files or []:
        path = Path(dist.locate_file(f)).resolve()
        if path.is_relative_to(site):
            names.add(path.relative_to(site).parts[0])
    return names


def main() -> int:
    venv = Path(sys.argv[1])
    want = sys.argv[2] if len(sys.argv) > 2 else None
    try:
        have = md.version("torch")
    except md.PackageNotFoundError:
        have = None
    if have is None or (want is not None and Version(have).public != Version(want).public):  # 2.13.0+cpu
        print(
            f"bare venv: {sys.executable} has torch {have or 'none'}, not {want}: nothing to link",
            file=sys.stderr,
        )
        return 3
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    venv_module.EnvBuilder(with_pip=False, clear=True, symlinks=True).create(venv)
    target = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert target.is_dir(), target
    dists = closure(["torch", *TOOLS])
    linked = set()
    for dist in dists:
        for name in top_levels(dist, site):
            if name in linked or name == "__pycache__":
                continue
            (target / name).symlink_to(site / name)
            linked.add(name)
    print(f"bare venv {venv}: torch {have} linked from {site} with {len(dists) - 1} more: "
          f"{', '.join(sorted(d.metadata['Name'] for d in dists if d.metadata['Name'] != 'torch'))}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
