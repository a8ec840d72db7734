"""The operator against a real API server: bursts, a new CR at steady state, idle requests, memory.

``python -m benchmarks.operator_cluster_bench --kubeconfig admin.kubeconfig --bursts 100 1000``

The operator runs as its own process (``autoglm-operator run --standalone --all-namespaces``) with
the given kubeconfig; CRs like the scenario suite's (GLM-4-9B int8 on an L4, autoscaling 2–3) are
created by 8 client threads at once. What the API server pays is read from its own counters
(``apiserver_request_total`` on ``/metrics``, so the kubeconfig needs rights to read it), restricted
to the resources the operator touches and without the subresources the controllers write
(``deployments/status``, ``horizontalpodautoscalers/status``, ``deployments/scale``); the operator's
own client counts its requests too (``autoglm_operator_api_requests_total``). Measured:

- each burst: seconds until every CR has ``observedGeneration == generation`` and a Deployment
  (watched, not polled), with the operator's default resync period; T(big)/T(small) (linear =
  big/small);
- a restart of the operator at all those CRs (with the short resync period of the idle interval):
  RSS once the API server served it nothing but watches for 30 s;
- at steady state: a new CR → its Deployment, several tries (p50/max);
- an idle interval of several resync periods: API requests by verb and resource, per CR per resync;
- operator RSS idle (before the bursts) and after, and through the idle interval.

The machine is shared: the API server, etcd, the controller manager, the operator and this client
all run on it. Times bound the operator's behaviour here, they are not a cluster's capacity.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import urllib3

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autoglm_operator import api  # noqa: E402
from autoglm_operator.kube import KINDS, Kube, KubeApiError  # noqa: E402
from benchmarks.loadgen import percentile  # noqa: E402
from benchmarks.servers import RunningServer, ServerSpec, free_port  # noqa: E402
from tests.operator.e2e.scenarios import SPEC  # noqa: E402

MIB = 2**20
CR = KINDS[api.KIND]
# What the operator reads or writes; the controllers' own subresource writes are not its cost.
RESOURCES = {
    "autoglmdeployments",
    "deployments",
    "services",
    "configmaps",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
    "persistentvolumeclaims",
    "nodes",
    "scaledobjects",
    "servicemonitors",
}  # not events: the HPA controller posts two Warnings per HPA every 15 s without a metrics API
_SAMPLE = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")


def request_counts(kube: Kube) -> Counter[tuple[str, str]]:
    """(verb, resource[/subresource]) → requests the API server has served, for our resources."""
    raw = kube.raw("/metrics").data.decode()
    out: Counter[tuple[str, str]] = Counter()
    for line in raw.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        resource, sub = labels.get("resource", ""), labels.get("subresource", "")
        if resource not in RESOURCES or (sub and not (resource == "autoglmdeployments" and sub == "status")):
            continue
        out[(labels.get("verb", ""), resource + (f"/{sub}" if sub else ""))] += int(float(m.group(2)))
    return out


def delta(after: Counter[tuple[str, str]], before: Counter[tuple[str, str]]) -> dict[str, int]:
    return {f"{v} {r}": n - before.get((v, r), 0) for (v, r), n in after.items() if n - before.get((v, r), 0)}


def own_requests(base_url: str) -> dict[str, float]:
    """The operator's own count of its client's requests (autoglm_operator_api_requests_total)."""
    import httpx

    text = httpx.get(base_url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("autoglm_operator_api_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            out[f"{labels['verb']} {labels['resource']}"] = float(line.rsplit(" ", 1)[1])
    return out


def settle(kube: Kube, quiet_s: float = 30.0, timeout: float = 900.0) -> float:
    """Wait until the API server served no request on the operator's resources but watches for
    ``quiet_s``: rollouts and first HPA evaluations after a burst change the CRs' status for a
    while, and after a restart each child is read once when its owner is first reconciled."""
    t0 = time.monotonic()
    before = request_counts(kube)
    while time.monotonic() - t0 < timeout:
        time.sleep(quiet_s)
        now = request_counts(kube)
        if all(k.startswith("WATCH ") for k in delta(now, before)):
            return time.monotonic() - t0
        before = now
    return time.monotonic() - t0


def cr_body(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name, "namespace": namespace},
            "spec": copy.deepcopy(SPEC)}  # fmt: skip


def ensure_namespace(kube: Kube, name: str) -> None:
    try:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    except KubeApiError as e:
        if e.status != 409:
            raise


class Progress:
    """Which CRs of a namespace are done (``observedGeneration == generation`` and a Deployment), as
    two watch streams tell it.

    Not a LIST per poll: at 1,000 CRs each LIST of the namespace's CRs and Deployments made the API
    server encode ~10 MB of JSON (``managedFields`` and all) and this client decode it, every
    second of the burst: a load growing with N × T that the 100-CR burst barely paid, and the
    1,000-CR burst paid on the two cores the operator and the controllers needed.
    """

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.deployments: set[str] = set()
        self.observed: dict[str, bool] = {}
        self.changed = threading.Condition()
        self.closed = False
        started = [self._start(kind) for kind in (CR, KINDS["Deployment"])]
        for ready in started:
            ready.wait(30)

    def wait(self, n: int, timeout: float) -> float:
        started = time.monotonic()
        with self.changed:
            while not self.changed.wait_for(lambda: self._count() >= n, timeout=5.0):
                if time.monotonic() - started > timeout:
                    raise TimeoutError(
                        f"{self._count()} of {n} CRs in {self.namespace} done after {timeout} s"
                    )
        return time.monotonic() - started

    def _count(self) -> int:
        return sum(1 for name, ok in self.observed.items() if ok and name in self.deployments)

    def close(self) -> None:
        self.closed = True

    def _start(self, kind: Any) -> threading.Event:
        ready = threading.Event()
        threading.Thread(
            target=self._watch, args=(kind, ready), daemon=True, name=f"watch {kind.plural}"
        ).start()
        return ready

    def _apply(self, kind: Any, type_: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        with self.changed:
            if kind is CR:
                if type_ == "DELETED":
                    self.observed.pop(name, None)
                else:
                    status = obj.get("status") or {}
                    self.observed[name] = status.get("observedGeneration") == obj["metadata"].get(
                        "generation"
                    )
            elif type_ == "DELETED":
                self.deployments.discard(name)
            else:
                self.deployments.add(name)
            self.changed.notify_all()

    def _watch(self, kind: Any, ready: threading.Event) -> None:
        rv = ""
        while not self.closed:
            if not rv:  # (re)list: the namespace is empty at the start, so this is cheap
                listed = self.kube._call("GET", kind.path(self.namespace))  # noqa: SLF001
                for item in listed.get("items") or []:
                    self._apply(kind, "ADDED", item)
                rv = listed["metadata"]["resourceVersion"]
            query = f"watch=true&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion={rv}"
            response = self.kube.raw(f"{kind.path(self.namespace)}?{query}", stream=True, read_timeout=330)
            ready.set()
            try:
                for line in _lines(response):
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":  # 410 Gone: the version is too old; relist
                        rv = ""
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if event.get("type") != "BOOKMARK":
                        self._apply(kind, event["type"], obj)
            except (urllib3.exceptions.HTTPError, OSError):
                time.sleep(1)
            finally:
                response.release_conn()


def _lines(response: Any) -> Any:
    """The newline-separated JSON events of a watch stream, as they arrive."""
    pending = b""
    for chunk in response.stream(65536, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())


def burst(kube: Kube, namespace: str, n: int, threads: int = 8, timeout: float = 1800) -> float:
    ensure_namespace(kube, namespace)
    progress = Progress(kube, namespace)
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: kube.create(cr_body(f"b{i}", namespace)), range(n)))
        progress.wait(n, timeout - (time.monotonic() - started))
        return time.monotonic() - started
    finally:
        progress.close()


def new_cr_latency(kube: Kube, namespace: str, tries: int) -> list[float]:
    out = []
    for _ in range(tries):
        name = f"probe-{uuid.uuid4().hex[:6]}"
        t0 = time.monotonic()
        kube.create(cr_body(name, namespace))
        while kube.get(KINDS["Deployment"], namespace, name) is None:
            time.sleep(0.1)
            if time.monotonic() - t0 > 600:
                raise TimeoutError(name)
        out.append(time.monotonic() - t0)
        time.sleep(1.0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument(
        "--kubeconfig", required=True, help="a real API server (rights to create CRs and read /metrics)"
    )
    p.add_argument("--bursts", type=int, nargs="+", default=[100, 1000])
    p.add_argument(
        "--burst-resync-seconds", type=float, default=600.0,
        help="the operator's resync period through the bursts (its default); the idle interval then "
        "restarts it with --resync-seconds, so that resyncs happen there to be counted",
    )  # fmt: skip
    p.add_argument("--probes", type=int, default=5, help="new CRs timed one at a time at steady state")
    p.add_argument(
        "--resync-seconds",
        type=float,
        default=60.0,
        help="the operator's resync period through the idle interval (short, so resyncs happen to be counted)",
    )
    p.add_argument("--idle-periods", type=float, default=3.0, help="resync periods in the idle interval")
    p.add_argument(
        "--outage",
        nargs=2,
        metavar=("STOP_CMD", "START_CMD"),
        help="shell commands that stop and start the API server: after the idle interval it is down for "
        "--outage-seconds, then a new CR is timed to its Deployment",
    )
    p.add_argument("--outage-seconds", type=float, default=45.0)
    p.add_argument("--out", type=Path, default=Path("bench-results/operator-cluster.json"))
    p.add_argument(
        "--operator", default=str(Path(sys.executable).parent / "autoglm-operator"),
        help="the operator command: this environment's by default; name one installed with only the "
        "operator extra (as in its image: no official kubernetes client) to measure the image's memory",
    )  # fmt: skip
    p.add_argument("--prefix", default=f"bench-{uuid.uuid4().hex[:4]}", help="namespace prefix")
    args = p.parse_args()
    os.environ["KUBECONFIG"] = args.kubeconfig
    from autoglm_operator.kube import load_configuration

    kube = Kube(load_configuration(), user_agent="autoglm-bench")
    log_dir = args.out.parent / "logs"

    def start_operator(resync_seconds: float) -> RunningServer:
        port = free_port()
        argv = [args.operator, "run", "--standalone", "-A", "--liveness-port", "0", "--metrics-port", str(port),
                "--log-format", "text", "--resync-seconds", str(resync_seconds)]  # fmt: skip
        return RunningServer(ServerSpec("operator (real API server)", argv, port, "/metrics", backend="none",
                                        env={"KUBECONFIG": args.kubeconfig}), log_dir)  # fmt: skip

    op = start_operator(args.burst_resync_seconds)
    result: dict[str, Any] = {
        "command": "python -m benchmarks.operator_cluster_bench " + " ".join(sys.argv[1:])
    }
    try:
        op.wait_ready(120)
        version = kube._call("GET", "/version")  # noqa: SLF001
        result["server"] = version.get("gitVersion")
        time.sleep(5)
        result["rss_idle_mib"] = op.rss_bytes() / MIB
        bursts = {}
        for n in args.bursts:
            before = request_counts(kube)
            seconds = burst(kube, f"{args.prefix}-{n}", n)
            bursts[str(n)] = {"crs": n, "seconds": seconds, "cr_per_s": n / seconds,
                              "requests": delta(request_counts(kube), before),
                              "rss_mib_after": op.rss_bytes() / MIB}  # fmt: skip
            print(
                f"burst {n}: {seconds:.1f} s ({n / seconds:.1f} CR/s), RSS {op.rss_bytes() / MIB:.0f} MiB",
                flush=True,
            )
        result["bursts"] = bursts
        total = sum(args.bursts)
        # Steady state: the bursts' rollouts and first HPA evaluations settle, then measure idle.
        result["settle_s"] = settle(kube)
        result["rss_settled_mib"] = op.rss_bytes() / MIB
        if args.resync_seconds != args.burst_resync_seconds:
            # The idle interval needs resyncs to count: restart with the short period. The restart
            # is measured too: every CR listed and re-checked, then RSS once settled (see settle).
            op.stop()
            op = start_operator(args.resync_seconds)
            op.wait_ready(120)
            result["restart"] = {"settle_s": settle(kube), "rss_mib": op.rss_bytes() / MIB}
            print(f"restart at {sum(args.bursts)} CRs: RSS {result['restart']['rss_mib']:.0f} MiB once settled "
                  f"({result['restart']['settle_s']:.0f} s)", flush=True)  # fmt: skip
        before = request_counts(kube)
        own_before = own_requests(op.spec.base_url)
        rss = []
        idle_s = args.idle_periods * args.resync_seconds
        t0 = time.monotonic()
        while time.monotonic() - t0 < idle_s:
            rss.append(op.rss_bytes() / MIB)
            time.sleep(min(10.0, idle_s / 10))
        idle = delta(request_counts(kube), before)
        own = {k: v - own_before.get(k, 0) for k, v in own_requests(op.spec.base_url).items()}
        own = {k: v for k, v in own.items() if v}
        per_resync = {k: n for k, n in idle.items() if not k.startswith("WATCH")}  # watches are streams
        result["idle"] = {"seconds": idle_s, "crs": total, "requests": idle, "operator_client": own,
                          "requests_per_cr_per_resync": sum(per_resync.values()) / (total * args.idle_periods),
                          "rss_mib": rss}  # fmt: skip
        print(f"idle {idle_s:.0f} s ({args.idle_periods:g} resyncs) at {total} CRs: API server requests "
              f"{idle or 'none'}; the operator's client: {own or 'none'}; per CR per resync "
              f"{result['idle']['requests_per_cr_per_resync']:.3f}", flush=True)  # fmt: skip
        lat = new_cr_latency(kube, f"{args.prefix}-{args.bursts[-1]}", args.probes)
        result["new_cr_seconds"] = {"all": lat, "p50": percentile(lat, 50), "max": max(lat)}
        print(
            f"new CR at {total} CRs -> Deployment: p50 {percentile(lat, 50):.2f} s, max {max(lat):.2f} s",
            flush=True,
        )
        print(f"operator RSS through the idle interval: {min(rss):.0f}-{max(rss):.0f} MiB", flush=True)
        if args.outage:
            # STOP_CMD must return once the server is gone (a server still shutting down made the
            # start script believe it was running): e.g. "kill PID; while kill -0 PID; do sleep 1; done".
            subprocess.run(args.outage[0], shell=True, check=True)  # noqa: S602 - the user's own command
            time.sleep(args.outage_seconds)
            subprocess.run(args.outage[1], shell=True, check=True)  # noqa: S602
            back = time.monotonic()
            after = new_cr_latency(kube, f"{args.prefix}-{args.bursts[-1]}", 3)
            result["after_outage"] = {"outage_s": args.outage_seconds, "new_cr_seconds": after,
                                      "since_server_back_s": time.monotonic() - back}  # fmt: skip
            print(f"API server down {args.outage_seconds:g} s, back: new CR -> Deployment "
                  f"{', '.join(f'{x:.2f}' for x in after)} s", flush=True)  # fmt: skip
        result["rss_end_mib"] = op.rss_bytes() / MIB
        small, big = min(args.bursts), max(args.bursts)
        if small != big:
            ratio = bursts[str(big)]["seconds"] / bursts[str(small)]["seconds"]
            result["burst_ratio"] = ratio
            print(f"T{big}/T{small} = {ratio:.1f} (linear {big / small:g})", flush=True)
        print(f"operator RSS: idle {result['rss_idle_mib']:.0f} MiB, max {max(rss):.0f} MiB, "
              f"end {result['rss_end_mib']:.0f} MiB", flush=True)  # fmt: skip
    finally:
        op.stop()
        kube.close()
        # What was measured is kept when a later phase fails (the outage's restart, a timeout).
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
