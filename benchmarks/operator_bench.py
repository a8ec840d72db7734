"""The operator under load, against the e2e suite's emulated Kubernetes API (kmock + stamping, SSA,
GC, a write counter; ``tests/operator/e2e/emulator.py`` lists what it does not model).

The operator runs as its own process (``autoglm-operator run --standalone -A``), exactly as in a pod,
so its RSS and CPU time are its own; the emulator and the client that creates CRs share this process.
Measured:

- API writes per CR: on create (target: one apply per child + at most 2 status patches), on a resync
  with nothing changed (target 0), on a spec change;
- time from CR creation to all children present, one CR at a time (p50/p99);
- bursts of N CRs created at once: throughput (CR/s) and T(1000)/T(100) (target <= 12, linear is 10);
- operator RSS idle vs after the big burst and through a soak (targets <= 1.5x and <= 150 MiB);
- CPU seconds per CR of a burst vs a kopf operator whose handler does nothing (same run, same burst).

Limits: one machine for everything (2 cores here): the emulator is single-threaded Python and its
cost is part of every time measured; a real API server (etcd, admission, watch cache) behaves
differently. The numbers compare versions of this operator and bound its overhead; they are not a
cluster's capacity.

``python -m benchmarks.operator_bench --out bench-results/operator.json --soak-seconds 120``;
with ``--kubeconfig FILE`` the bursts, idle requests, latency probe and memory are measured against
that real API server instead (:mod:`benchmarks.operator_cluster_bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import functools
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_KUBECONFIG = Path(tempfile.mkdtemp(prefix="autoglm-bench-")) / "kubeconfig"
# Before anything imports `kubernetes`: it reads the path at import.
os.environ["KUBECONFIG"] = str(_KUBECONFIG)
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import kmock  # noqa: E402

from autoglm_operator import api  # noqa: E402
from autoglm_operator.kube import KINDS, Kube, load_configuration  # noqa: E402
from benchmarks.loadgen import percentile  # noqa: E402
from benchmarks.servers import RunningServer, ServerSpec, free_port  # noqa: E402
from benchmarks.targets import target  # noqa: E402
from tests.operator.e2e.emulator import ApiEmulator, kubeconfig_yaml, register_resources  # noqa: E402
from tests.operator.e2e.scenarios import SPEC  # noqa: E402

CHILD_PLURALS = ("configmaps", "services", "deployments", "horizontalpodautoscalers", "poddisruptionbudgets")
CR = KINDS[api.KIND]
MIB = 2**20


class TimedEmulator(ApiEmulator):
    """Records when each object first appears, and stays O(1) per request at thousands of objects.

    Two costs of the test emulator that grow with the run, not with the operator, are removed:
    kmock matches each request against its log of every request served so far (quadratic over a
    run; 90% of this process's CPU in a 50-CR burst), so the log is trimmed to the recent requests;
    and the owner-exists check scans all objects, so a uid index replaces the scan.
    """

    async def _handle(self, request: Any) -> Any:
        del self._requests[:-1]  # the request being matched is always the newest entry
        return await super()._handle(request)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.first_seen: dict[tuple[str, str | None, str], float] = {}
        self._uids: set[str] | None = None

    def _store(self, resource: Any, namespace: str | None, name: str, obj: dict[str, Any]) -> None:
        self.first_seen.setdefault((resource.plural, namespace, name), time.perf_counter())
        uid = (obj.get("metadata") or {}).get("uid")
        if self._uids is not None and uid:
            self._uids.add(uid)
        super()._store(resource, namespace, name, obj)

    def _delete(self, resource: Any, namespace: str | None, name: str, events: list) -> None:
        self._uids = None  # rebuilt on the next lookup
        self.first_seen.pop((resource.plural, namespace, name), None)
        super()._delete(resource, namespace, name, events)

    def _uid_exists(self, uid: str | None) -> bool:
        if self._uids is None:
            self._uids = {
                str((o.raw.get("metadata") or {}).get("uid")) for o in self._objects.values() if not o.deleted
            }
        return uid in self._uids

    def children_ready_at(self, namespace: str, name: str) -> float | None:
        """When the last of the CR's children appeared (None while one is missing)."""
        times = [self.first_seen.get((p, namespace, f"{name}{suffix}")) for p, suffix in _CHILD_NAMES]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    def handled_by_kopf(self, namespace: str) -> int:
        """CRs of ``namespace`` whose handlers kopf has finished (it then stores the handled spec)."""
        done = 0
        for obj in self.objects_of(api.PLURAL, namespace):
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            done += any(k.endswith("last-handled-configuration") for k in annotations)
        return done


_CHILD_NAMES: list[tuple[str, str]] = []  # (plural, name suffix), learnt from the first CR


def write_kubeconfig(url: str) -> None:
    _KUBECONFIG.write_text(kubeconfig_yaml(url))


def cr_body(name: str, namespace: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": copy.deepcopy(spec or SPEC),
    }


class Bench:
    def __init__(self, emu: TimedEmulator, log_dir: Path, operator_env: dict[str, str] | None = None) -> None:
        self.emu = emu
        self.operator_env = operator_env or {}
        self.kube = Kube(load_configuration(), user_agent="autoglm-e2e")
        self.log_dir = log_dir

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def wait(
        self, check: Callable[[], Any], what: str, timeout: float = 600.0, every: float = 0.01
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            await asyncio.sleep(every)
        raise TimeoutError(f"timed out waiting for {what}")

    async def quiet(self, seconds: float = 1.0, timeout: float = 60.0) -> None:
        """Wait until no write has happened for ``seconds`` (the operator settled)."""
        deadline = time.monotonic() + timeout
        last = sum(self.emu.writes.values())
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now = sum(self.emu.writes.values())
            if now != last:
                last, quiet_since = now, time.monotonic()
            elif time.monotonic() - quiet_since >= seconds:
                return

    def start_operator(self, name: str, *flags: str, noop: bool = False) -> RunningServer:
        """``autoglm-operator run --standalone -A FLAGS`` (or the no-op kopf operator) as a child process."""
        port = free_port()
        bin_dir = Path(sys.executable).parent
        if noop:
            argv = [str(bin_dir / "kopf"), "run", str(REPO / "benchmarks" / "noop_operator.py"), "--standalone",
                    "-A", "--liveness", f"http://127.0.0.1:{port}/healthz"]  # fmt: skip
            ready = "/healthz"
        else:
            argv = [str(bin_dir / "autoglm-operator"), "run", "--standalone", "-A", "--liveness-port", "0",
                    "--metrics-port", str(port), "--log-format", "text", *flags]  # fmt: skip
            ready = "/metrics"
        env = {"KUBECONFIG": str(_KUBECONFIG), **self.operator_env}
        spec = ServerSpec(name, argv, port, ready, backend="none", env=env)
        return RunningServer(spec, self.log_dir)

    async def create_many(self, namespace: str, names: list[str], parallel: int = 8) -> float:
        sem = asyncio.Semaphore(parallel)

        async def one(n: str) -> None:
            async with sem:
                await self.call(self.kube.create, cr_body(n, namespace))

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in names))
        return started

    def writes_snapshot(self) -> dict[tuple[str, str, str], int]:
        return dict(self.emu.writes)

    def reads_snapshot(self) -> dict[tuple[str, str, str], int]:
        return dict(self.emu.reads)

    def reads_since(self, before: dict[tuple[str, str, str], int]) -> dict[str, int]:
        """GET, LIST and WATCH requests since ``before``, by client, verb and resource."""
        return self.writes_since(before, self.emu.reads)

    def writes_since(self, before: dict[tuple[str, str, str], int], counts: Any = None) -> dict[str, int]:
        out = {}
        for key, n in (self.emu.writes if counts is None else counts).items():
            d = n - before.get(key, 0)
            if d and key[0] != "test":
                out[f"{key[0]} {key[1]} {key[2]}"] = d
        return out


def _count(writes: dict[str, int], client: str, verb: str | None = None, prefix: str = "") -> int:
    total = 0
    for key, n in writes.items():
        who, v, res = key.split(" ")
        if who == client and (verb is None or v == verb) and res.startswith(prefix):
            total += n
    return total


async def scenario_writes(b: Bench, resync_seconds: float) -> dict[str, Any]:
    """API writes on create, on no-op resyncs and on a spec change, with a short resync period."""
    ns = "writes"
    op = b.start_operator("operator (writes)", "--resync-seconds", str(resync_seconds))
    try:
        op.wait_ready(120)
        await asyncio.sleep(1.0)  # kopf's initial listings and watches are not a CR's cost
        before, reads_before = b.writes_snapshot(), b.reads_snapshot()
        await b.call(b.kube.create, cr_body("w1", ns))
        await b.wait(lambda: b.emu.children_ready_at(ns, "w1"), "children of w1")
        await b.quiet(1.5)
        create = b.writes_since(before)
        create_reads = b.reads_since(reads_before)
        # No-op resyncs: wait for three resync periods with nothing changed.
        before, reads_before = b.writes_snapshot(), b.reads_snapshot()
        await asyncio.sleep(3 * resync_seconds + 0.5)
        resync = b.writes_since(before)
        resync_reads = b.reads_since(reads_before)
        before = b.writes_snapshot()
        await b.call(b.kube.patch, CR, ns, "w1", {"spec": {"quantization": "nf4"}})
        await asyncio.sleep(0.5)
        await b.quiet(1.5)
        change = b.writes_since(before)
    finally:
        op.stop()
    children = len(_CHILD_NAMES)
    status_patches = _count(create, "operator", "patch", f"{api.PLURAL}/status")
    child_writes = sum(_count(create, "operator", None, p) for p in CHILD_PLURALS)
    resync_total = sum(n for k, n in resync.items() if k.split(" ")[0] in ("operator", "kopf"))
    # Watches are long-lived streams (kopf reconnects them every few minutes), not a resync's cost.
    resync_reads_total = sum(
        n
        for k, n in resync_reads.items()
        if k.split(" ")[0] in ("operator", "kopf") and k.split(" ")[1] != "watch"
    )
    create_reads_total = sum(
        n
        for k, n in create_reads.items()
        if k.split(" ")[0] in ("operator", "kopf") and k.split(" ")[1] != "watch"
    )
    return {
        "resync_seconds": resync_seconds,
        "children": children,
        "create": create,
        "create_reads": create_reads,
        "resync_3_periods": resync,
        "resync_3_periods_reads": resync_reads,
        "spec_change": change,
        "targets": [
            target(
                "operator writes on CR create",
                f"{children} child applies + <= 2 status patches",
                child_writes + status_patches,
                child_writes == children and status_patches <= 2,
                unit="writes",
                note=f"child writes {child_writes}, status patches {status_patches}, "
                f"kopf annotation patches {_count(create, 'kopf', 'patch', api.PLURAL)}",
            ),
            target(
                "writes on a resync with nothing changed",
                "0",
                resync_total,
                resync_total == 0,
                unit="writes",
                note=f"over 3 resync periods of {resync_seconds:g} s",
            ),
            target(
                "API reads (GET, LIST) on a resync with nothing changed",
                "0",
                resync_reads_total / 3,
                resync_reads_total == 0,
                unit="requests per resync",
                note=f"{resync_reads or 'none'} over 3 resync periods",
            ),
            target(
                "API reads (GET, LIST) on CR create",
                "reported (0 expected: the watches deliver)",
                create_reads_total,
                True,
                unit="requests",
                note=f"{create_reads or 'none'}",
            ),
        ],
    }


def _learn_children_from(emu: TimedEmulator, namespace: str, name: str) -> None:
    found = []
    for (plural, ns, obj_name), _ in emu.first_seen.items():
        if ns == namespace and plural in CHILD_PLURALS and obj_name.startswith(name):
            found.append((plural, obj_name[len(name) :]))
    _CHILD_NAMES[:] = sorted(set(found))


async def scenario_scale(
    b: Bench, sizes: list[int], latency_n: int, soak_s: float, resync_s: float
) -> dict[str, Any]:
    """One operator process: latency one CR at a time, bursts, RSS and a soak."""
    op = b.start_operator("operator (scale)", "--resync-seconds", str(resync_s))
    out: dict[str, Any] = {"resync_seconds": resync_s}
    try:
        op.wait_ready(120)
        # One CR first: kopf is watching, imports and templates are warm; then "idle" means one CR, no activity.
        await b.call(b.kube.create, cr_body("warm", "latency"))
        await b.wait(
            lambda: b.emu.children_ready_at("latency", "warm"), "children of the warm-up CR", timeout=120
        )
        await b.quiet(1.0)
        rss_idle = op.rss_bytes()
        out["rss_idle_mib"] = rss_idle / MIB
        # Latency: one CR at a time.
        lat = []
        for i in range(latency_n):
            name = f"lat-{i}"
            t0 = time.perf_counter()
            await b.call(b.kube.create, cr_body(name, "latency"))
            done = await b.wait(
                functools.partial(b.emu.children_ready_at, "latency", name), f"children of {name}"
            )
            lat.append(done - t0)
        await b.quiet(1.0)
        out["latency"] = {"n": latency_n, "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99),
                          "all_ms": [1000 * x for x in lat]}  # fmt: skip
        bursts = {}
        for n in sizes:
            ns = f"burst-{n}"
            names = [f"b{i}" for i in range(n)]
            cpu0, self0 = op.cpu_seconds(), _own_cpu()
            started = await b.create_many(ns, names)
            created_at = time.perf_counter()
            last = await b.wait(
                functools.partial(_all_ready, b.emu, ns, names),
                f"children of {n} CRs",
                timeout=900,
                every=0.1,
            )
            self_cpu = _own_cpu() - self0
            await b.quiet(1.0)
            cpu = op.cpu_seconds() - cpu0
            t = last - started
            bursts[n] = {
                "seconds": t,
                "create_calls_s": created_at - started,
                "cr_per_s": n / t,
                "operator_cpu_s": cpu,
                "cpu_ms_per_cr": 1000 * cpu / n,
                # This process (emulator + client) until the last child appeared: near `seconds` = the
                # emulator, not the operator, set the pace.
                "emulator_process_cpu_s": self_cpu,
                "rss_mib_after": op.rss_bytes() / MIB,
            }
        out["bursts"] = bursts
        rss_loaded = op.rss_bytes()
        out["rss_loaded_mib"] = rss_loaded / MIB
        out["managed_crs"] = 1 + latency_n + sum(sizes)
        # Soak: steady state with resyncs, sampling RSS, CPU and the operator's reconcile counter.
        samples = []
        t0 = time.perf_counter()
        cpu0 = op.cpu_seconds()
        writes0 = b.writes_snapshot()
        while True:
            samples.append(
                {
                    "t_s": time.perf_counter() - t0,
                    "rss_mib": op.rss_bytes() / MIB,
                    "cpu_s": op.cpu_seconds() - cpu0,
                    "reconciles": await asyncio.to_thread(_reconciles, op.spec.base_url),
                }
            )
            if time.perf_counter() - t0 >= soak_s:
                break
            await asyncio.sleep(min(5.0, max(0.5, soak_s / 40)))
        out["soak"] = {"seconds": soak_s, "samples": samples, "writes_during": b.writes_since(writes0)}
    finally:
        op.stop()
    return out


def _reconciles(base_url: str) -> float | None:
    """The operator's autoglm_operator_reconciles_total, all results together (None if unreadable)."""
    try:
        text = httpx.get(base_url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("autoglm_operator_reconciles_total{")
    )


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def _all_ready(emu: TimedEmulator, ns: str, names: list[str]) -> float | None:
    times = []
    for n in names:
        t = emu.children_ready_at(ns, n)
        if t is None:
            return None
        times.append(t)
    return max(times)


async def scenario_noop(b: Bench, n: int) -> dict[str, Any]:
    """The same burst handled by a kopf operator with an empty handler: kopf's own CPU cost."""
    op = b.start_operator("kopf no-op", noop=True)
    try:
        op.wait_ready(120)
        await asyncio.sleep(1.0)
        ns = f"noop-{n}"
        names = [f"n{i}" for i in range(n)]
        cpu0 = op.cpu_seconds()
        started = await b.create_many(ns, names)
        await b.wait(lambda: b.emu.handled_by_kopf(ns) >= n, f"kopf handled {n} CRs", timeout=600, every=0.1)
        t = time.perf_counter() - started
        await b.quiet(1.0)
        cpu = op.cpu_seconds() - cpu0
    finally:
        op.stop()
    return {"n": n, "seconds": t, "operator_cpu_s": cpu, "cpu_ms_per_cr": 1000 * cpu / n}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = args.out.parent / "logs"
    async with TimedEmulator() as emu, kmock.Server(emu) as server:
        register_resources(emu)
        write_kubeconfig(str(server.url).rstrip("/"))
        b = Bench(emu, log_dir, dict(kv.split("=", 1) for kv in args.operator_env))
        try:
            # Learn the children's names from one reconcile (no hard-coded naming scheme).
            probe = b.start_operator("operator (probe)")
            try:
                probe.wait_ready(120)
                await b.call(b.kube.create, cr_body("probe", "probe"))
                await b.wait(
                    lambda: (
                        sum(1 for (p, ns, _n) in emu.first_seen if ns == "probe" and p in CHILD_PLURALS) >= 5
                    ),
                    "children of the probe CR",
                    timeout=120,
                )
                await b.quiet(1.0)
            finally:
                probe.stop()
            _learn_children_from(emu, "probe", "probe")
            result: dict[str, Any] = {"children": [f"{p} <name>{s}" for p, s in _CHILD_NAMES]}
            if "writes" not in args.skip:
                result["writes"] = await scenario_writes(b, args.resync_writes)
            result["scale"] = await scenario_scale(
                b, args.bursts, args.latency_n, args.soak_seconds, args.resync_scale
            )
            if "noop" not in args.skip:
                result["noop"] = await scenario_noop(b, args.noop_n)
        finally:
            b.kube.close()
    return result


def render_cost(n: int = 200, rounds: int = 3) -> dict[str, float]:
    """CPU ms per reconcile's desired objects (render, apply order, applied hashes) as a reconcile
    gets them: rendered every time vs from the operator's render memo (``memo.py``), alternated."""
    import statistics

    from autoglm_operator import render as render_mod
    from autoglm_operator.memo import RenderMemo
    from autoglm_operator.reconcile import Options, _desired

    cr = cr_body("render-cost", "bench")
    cr["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    spec = render_mod.parse_spec(cr, cel=False)
    options = Options()

    def per_reconcile(memo: RenderMemo | None) -> float:
        _desired(cr, spec, None, options, memo)  # the memo's first render
        t0 = time.process_time()
        for _ in range(n):
            _desired(cr, spec, None, options, memo)
        return (time.process_time() - t0) / n * 1000

    rendered, remembered = [], []
    for _ in range(rounds):
        rendered.append(per_reconcile(None))
        remembered.append(per_reconcile(RenderMemo()))
    return {"uncached_ms": statistics.median(rendered), "cached_ms": statistics.median(remembered)}


def _targets(result: dict[str, Any], bursts: list[int]) -> list[dict[str, Any]]:
    ts = list(result["writes"]["targets"]) if "writes" in result else []
    if "render" in result:
        r = result["render"]
        ts.append(
            target(
                "desired objects CPU per reconcile: rendered each time / render memo",
                "reported (no target)",
                r["uncached_ms"] / r["cached_ms"],
                True,
                unit="x",
                note=f"{r['uncached_ms']:.2f} vs {r['cached_ms']:.2f} ms CPU",
            )
        )
    scale = result["scale"]
    bs = scale["bursts"]
    small, big = min(bursts), max(bursts)
    if small != big:
        ratio = bs[big]["seconds"] / bs[small]["seconds"]
        ts.append(
            target(
                f"burst time T{big}/T{small}",
                f"<= {1.2 * big / small:g}",
                ratio,
                ratio <= 1.2 * big / small,
                note=f"{bs[small]['cr_per_s']:.1f} vs {bs[big]['cr_per_s']:.1f} CR/s; CPU during T{big}: operator "
                f"{bs[big]['operator_cpu_s']:.0f} s, emulator process {bs[big].get('emulator_process_cpu_s', 0):.0f} s",
            )
        )
    idle, loaded = scale["rss_idle_mib"], max(s["rss_mib"] for s in scale["soak"]["samples"])
    ts.append(
        target(
            f"operator RSS at {scale['managed_crs']} CRs (soak max) / idle",
            "<= 1.5x",
            loaded / idle,
            loaded / idle <= 1.5,
            unit="x",
            note=f"{idle:.0f} MiB idle, {loaded:.0f} MiB max",
        )
    )
    ts.append(target("operator RSS max", "<= 150 MiB", loaded, loaded <= 150, unit="MiB"))
    if "noop" not in result:
        return ts
    noop = result["noop"]
    n = noop["n"]
    ours = bs[n]["cpu_ms_per_cr"] if n in bs else bs[small]["cpu_ms_per_cr"]
    ts.append(
        target(
            f"CPU per CR vs a no-op kopf handler ({n}-CR burst)",
            "reported (no target)",
            ours / noop["cpu_ms_per_cr"],
            True,
            unit="x",
            note=f"{ours:.1f} ms vs {noop['cpu_ms_per_cr']:.1f} ms CPU per CR",
        )
    )
    return ts


def main() -> int:
    if "--kubeconfig" in sys.argv:  # the same measurements against a real API server
        from benchmarks import operator_cluster_bench

        return operator_cluster_bench.main()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=Path("bench-results/operator.json"))
    p.add_argument("--bursts", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--latency-n", type=int, default=20)
    p.add_argument("--soak-seconds", type=float, default=120.0, help="steady state after the bursts")
    p.add_argument("--resync-writes", type=float, default=1.0, help="resync period in the writes scenario")
    p.add_argument("--resync-scale", type=float, default=30.0, help="resync period in the scale scenario")
    p.add_argument("--noop-n", type=int, default=100, help="burst size for the no-op kopf comparison")
    p.add_argument(
        "--operator-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra env of the operator"
    )
    p.add_argument("--skip", nargs="*", default=[], choices=["writes", "noop"], help="scenarios to leave out")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from benchmarks.machine import describe

    started = time.time()
    result = asyncio.run(run(args))
    result["render"] = render_cost()
    result["targets"] = _targets(result, args.bursts)
    result["machine"] = describe(with_torch=False)
    result["duration_s"] = time.time() - started
    result["command"] = "python -m benchmarks.operator_bench " + " ".join(sys.argv[1:])
    result["scale"]["bursts"] = {str(k): v for k, v in result["scale"]["bursts"].items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    for t in result["targets"]:
        print(t["line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
