"""``make bench``: every benchmark this machine can run, one after the other (never two at once:
they would disturb each other's numbers), then the report.

A failing part is recorded in ``bench-results/run.json`` and the others still run; the exit code
says whether all parts ran. ``--soak-seconds`` sets the operator soak (2 minutes here; a longer one,
e.g. ``--soak-seconds 3600``, is what catches slow leaks).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--results", type=Path, default=REPO / "bench-results")
    p.add_argument("--soak-seconds", type=float, default=120.0)
    p.add_argument("--bursts", type=int, nargs="+", default=[100, 1000])
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["overhead", "runtime", "engine", "routing", "agent", "operator"],
    )
    args = p.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    r = args.results
    steps = {
        "overhead": [py, "-m", "benchmarks.overhead_bench", "--out", str(r / "overhead.json")],
        "runtime": [py, "-m", "benchmarks.runtime_bench", "--out", str(r / "runtime.json")],
        "engine": [py, "-m", "benchmarks.engine_bench", "--out", str(r / "engine.json")],
        # two of the three workloads, two rounds each (all three at three rounds take about an hour here)
        "routing": [py, "-m", "benchmarks.routing_bench", "--workloads", "agent", "replies", "--rounds", "2",
                    "--probe-reps", "2", "--out", str(r / "routing.json")],
        "agent": [py, "-m", "benchmarks.agent_bench", "--out", str(r / "agent.json")],
        "operator": [
            py, "-m", "benchmarks.operator_bench", "--out", str(r / "operator.json"),
            "--soak-seconds", f"{args.soak_seconds:g}", "--bursts", *map(str, args.bursts),
        ],
    }  # fmt: skip
    run: dict = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "commands": [],
        "steps": {},
    }
    t0 = time.time()
    ok = True
    for name, argv in steps.items():
        if name in args.skip:
            continue
        shown = " ".join(
            a if not a.startswith(str(REPO)) else str(Path(a).relative_to(REPO)) for a in argv[1:]
        )
        run["commands"].append(f"python {shown}")
        print(f"==> {name}: python {shown}", flush=True)
        started = time.time()
        rc = subprocess.call(argv, cwd=REPO)
        run["steps"][name] = {"rc": rc, "seconds": time.time() - started}
        ok = ok and rc == 0
        print(f"<== {name}: exit {rc} after {time.time() - started:.0f} s", flush=True)
    run["duration_s"] = time.time() - t0
    run["commands"].append("python -m benchmarks.report")
    (r / "run.json").write_text(json.dumps(run, indent=2))
    rc = subprocess.call([py, "-m", "benchmarks.report", "--results", str(r)], cwd=REPO)
    return 0 if ok and rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
