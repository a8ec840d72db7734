"""Install what ``make gpu-check`` needs from the wheelhouse into a target folder, offline.

    python scripts/gpu_check_install.py WHEELHOUSE TARGET

Runs with the node's own Python, its standard library and pip only (nothing else is there yet). Never
installs or replaces torch: the target holds only wheels from the wheelhouse, and is put in front
of ``sys.path`` (``PYTHONPATH``) by ``scripts/gpu-check.sh`` for the check alone.

- ``WHEELHOUSE/*.whl``: this project and the runtime's and the check's dependencies; each one is
  installed unless the node already has that release or a newer one.
- ``WHEELHOUSE/extra/*.whl`` (optional): transformers, accelerate, their dependencies and Pillow.
  When the node's transformers or accelerate are missing or older than the runtime supports (the
  project's ``runtime`` requirements), everything there that the node lacks or has older is
  installed (the node's numpy is kept); otherwise only what the runtime itself imports and the node
  lacks (e.g. Pillow, for the vision path).

Wheels for another Python or platform are left out (the wheelhouse holds CPython 3.11 and 3.12).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile
from pathlib import Path

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.tags import sys_tags
from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename
from pip._vendor.packaging.version import Version

NEVER = ("torch", "triton", "nvidia-")  # the node's CUDA stack is its own
PEERS = ("transformers", "accelerate")
# Floors above the project's own ranges: the oldest releases the whole check has passed with
# (docs/benchmarks.md, "Which transformers"). transformers 4.56.2 (the project's floor): the loader's
# warm-up passed on the token_type_ids devmodels' tokenizer returns under 4.x (fixed since, not
# re-run), and devmodels' GLM-4V builder needs Glm4vImageProcessorPil; 5.0.0 lacks that class and refuses accelerate 1.0.1 (the
# project's floor), 5.4.0 has it but wants torchvision for it; 5.5.0 passes every part. Only
# accelerate 1.16.0 has been tried with 5.5.0 (1.1.0 lacks what 5.0.0 imports).
TESTED_FLOORS = {"transformers": "5.5.0", "accelerate": "1.16.0"}
KEEP_IF_PRESENT = ("numpy",)
# What the runtime and the check import themselves, taken from extra/ whenever the node lacks it;
# the rest of extra/ (transformers' and accelerate's own dependencies) only with them.
OWN_NEEDS = ("pillow", "packaging", "psutil", "pyyaml", "certifi", "idna", "safetensors", "tokenizers",
             "huggingface-hub", "numpy")  # fmt: skip


def present(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def compatible(wheels: list[Path]) -> dict[str, tuple[Version, Path]]:
    """name -> (version, file) of the wheels this interpreter can install (the best tag wins)."""
    ranking = {tag: i for i, tag in enumerate(sys_tags())}
    best: dict[str, tuple[int, Version, Path]] = {}
    for wheel in wheels:
        name, version, _, tags = parse_wheel_filename(wheel.name)
        rank = min((ranking[t] for t in tags if t in ranking), default=None)
        if rank is None or str(name).startswith(NEVER):
            continue
        if name not in best or rank < best[name][0]:
            best[name] = (rank, version, wheel)
    return {n: (v, f) for n, (_, v, f) in best.items()}


def runtime_minimums(project: Path) -> dict[str, Requirement]:
    """transformers/accelerate requirements of the project's ``runtime`` extra (its wheel's METADATA)."""
    with zipfile.ZipFile(project) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    found = {}
    for line in lines:
        if line.startswith("Requires-Dist:"):
            req = Requirement(line.split(":", 1)[1].strip())
            if req.name in PEERS and req.marker and req.marker.evaluate({"extra": "runtime"}):
                found[req.name] = req
    return found


def plan(wheelhouse: Path) -> tuple[list[Path], list[str]]:
    """(wheels to install, lines that say why)."""
    main = compatible(sorted(wheelhouse.glob("*.whl")))
    extra = compatible(sorted((wheelhouse / "extra").glob("*.whl")))
    project = main.get(canonicalize_name("autoglm"))
    if project is None:
        raise SystemExit(f"error: {wheelhouse} has no autoglm wheel: run make gpu-wheelhouse")
    notes: list[str] = []
    chosen: list[Path] = []
    for name, (version, wheel) in main.items():
        have = present(name)
        if have is None or have < version or name == "autoglm":
            chosen.append(wheel)
    need_peers = []
    for name, req in runtime_minimums(project[1]).items():
        have = present(name)
        floor = TESTED_FLOORS.get(name)
        ok = have is not None and req.specifier.contains(have, prereleases=True)
        ok = ok and (floor is None or have >= Version(floor))
        notes.append(
            f"{name}: node has {have or 'none'}, runtime supports {req.specifier}"
            + (f", the check >={floor}" if floor else "")
            + (": using the node's" if ok else ": from extra/")
        )
        if not ok:
            need_peers.append(name)
    if need_peers and not extra:
        raise SystemExit(
            f"error: the node's {', '.join(need_peers)} missing or too old and {wheelhouse}/extra has no "
            "wheels for this Python: copy the whole wheelhouse, extra/ included"
        )
    for name, (version, wheel) in extra.items():
        have = present(name)
        if need_peers:
            take = have is None or (have < version and name not in KEEP_IF_PRESENT)
        else:
            take = have is None and name in OWN_NEEDS
        if take:
            chosen.append(wheel)
    return chosen, notes


def install(wheels: list[Path], target: Path) -> None:
    if not wheels:
        return
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
           "-q", "--no-compile", "--target", str(target), *map(str, wheels)]  # fmt: skip
    if subprocess.run(pip, check=False).returncode != 0:
        raise SystemExit("error: pip could not install the wheelhouse (see above)")


def main() -> int:
    wheelhouse, target = Path(sys.argv[1]), Path(sys.argv[2])
    wheels, notes = plan(wheelhouse)
    for line in notes:
        print(f"gpu-check: {line}")
    size = sum(w.stat().st_size for w in wheels) / 1e6
    print(f"gpu-check: installing {len(wheels)} wheels ({size:.1f} MB) into {target}, offline, beside "
          f"torch {importlib.metadata.version('torch')}: {', '.join(sorted(w.name.split('-')[0] for w in wheels))}")  # fmt: skip
    target.mkdir(parents=True, exist_ok=True)
    install(wheels, target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
