"""``autoglm-operator run``: run the operator (kopf) against the cluster.

Every flag also reads ``AUTOGLM_OPERATOR_<FLAG>`` (e.g. ``AUTOGLM_OPERATOR_METRICS_PORT=9090``,
``AUTOGLM_OPERATOR_NAMESPACE=ml,serving``); a flag on the command line wins over the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoglm_operator import autoscaling

DEFAULT_PEERING = "autoglm-operator"
DEFAULT_PEERING_LIFETIME = 15
# Start-time priorities: 2**52 - (milliseconds since the epoch * 1024 + a random 0..1023). The older
# replica has the higher priority; two replicas started in the same millisecond still differ (1 in
# 1024 chance of a tie, which kopf then resolves by pausing both until one restarts). Values stay
# below 2**53, exact in any JSON reader.
_PRIORITY_BASE = 2**52
_PRIORITY_JITTER = 1024


def _env(name: str, default: Any = None) -> Any:
    return os.environ.get(f"AUTOGLM_OPERATOR_{name}", default)


def _env_bool(name: str) -> bool:
    return str(_env(name, "")).strip().lower() in {"1", "true", "yes", "on"}


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in str(_env(name, "")).split(",") if item.strip()]


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (0-65535; 0 turns the endpoint off)")
    return value


def _lifetime(text: str) -> int:
    value = int(text)
    if not 5 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not a peering lifetime (5-3600 seconds)")
    return value


def start_time_priority(now: float | None = None) -> int:
    """A peering priority that makes the oldest replica the leader (see ``_PRIORITY_BASE``)."""
    millis = int((time.time() if now is None else now) * 1000)
    return _PRIORITY_BASE - millis * _PRIORITY_JITTER - secrets.randbelow(_PRIORITY_JITTER)


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    _scope_and_election_arguments(p)
    _operation_arguments(p)


def _scope_and_election_arguments(p: argparse.ArgumentParser) -> None:
    scope = p.add_argument_group("what to watch")
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        metavar="NS",
        help="watch this namespace (repeatable; globs like ml-* work); env: comma-separated list",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        default=_env_bool("ALL_NAMESPACES"),
        help="watch every namespace (the default when no --namespace is given)",
    )
    ha = p.add_argument_group("high availability").add_mutually_exclusive_group()
    ha.add_argument(
        "--standalone",
        action="store_true",
        default=_env_bool("STANDALONE"),
        help="run without peering (only when exactly one replica runs)",
    )
    ha.add_argument(
        "--peering",
        metavar="NAME",
        default=_env("PEERING", DEFAULT_PEERING),
        help="kopf peering object shared by the replicas; only one of them reconciles (default: %(default)s)",
    )
    election = p.add_argument_group("leader election (with --peering)")
    election.add_argument(
        "--priority",
        type=int,
        default=_env("PRIORITY"),
        help="this replica's kopf peering priority; the highest live one reconciles, the others stand by. "
        "Default: derived from the start time, so the oldest replica leads and a restarted one stands by",
    )
    election.add_argument(
        "--peering-lifetime",
        type=_lifetime,
        default=_env("PEERING_LIFETIME", str(DEFAULT_PEERING_LIFETIME)),
        help="seconds a replica's keep-alive stays valid; a standby takes over at most this long after "
        "the leader dies without a clean stop (default: %(default)s)",
    )


def _operation_arguments(p: argparse.ArgumentParser) -> None:
    ops = p.add_argument_group("endpoints and timing")
    ops.add_argument(
        "--liveness-port",
        type=_port,
        default=_env("LIVENESS_PORT", "8080"),
        help="serve the liveness probe on http://0.0.0.0:PORT/healthz; 0 = off (default: %(default)s)",
    )
    ops.add_argument(
        "--metrics-port",
        type=_port,
        default=_env("METRICS_PORT", "9090"),
        help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics; 0 = off (default: %(default)s)",
    )
    ops.add_argument(
        "--resync-seconds",
        type=_positive,
        default=_env("RESYNC_SECONDS", "600"),
        help="re-check every CR about this often, ±10%% jitter: a backstop, as the watches report drift; "
        "no API request when nothing changed (default: %(default)s)",
    )
    behaviour = p.add_argument_group("behaviour")
    behaviour.add_argument(
        "--allow-network",
        action="store_true",
        default=_env_bool("ALLOW_NETWORK"),
        help="let the memory planner fetch config.json from the model hub for models outside its catalog",
    )
    behaviour.add_argument(
        "--no-node-lookup",
        action="store_true",
        default=_env_bool("NO_NODE_LOOKUP"),
        help="do not read GPU-feature-discovery node labels (when RBAC gives no access to nodes)",
    )
    behaviour.add_argument(
        "--prometheus-address",
        default=_env("PROMETHEUS_ADDRESS", autoscaling.DEFAULT_PROMETHEUS_ADDRESS),
        help="Prometheus server that KEDA ScaledObjects (spec.autoscaling.engine: keda) query, unless the CR "
        "names one (default: %(default)s)",
    )
    logs = p.add_argument_group("logging")
    logs.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=_env("LOG_FORMAT", "json"),
        help="json (one object per line, for pods) or text (default: %(default)s)",
    )
    logs.add_argument("-v", "--verbose", action="store_true", default=_env_bool("VERBOSE"), help="debug logs")


@dataclass
class Hooks:
    """What an embedder (the e2e tests) passes to :func:`run` besides the flags."""

    stop_flag: Any = None  # threading.Event / asyncio.Event / Future: set it to stop the operator
    ready_flag: Any = None  # set by kopf once the operator watches
    tune: Callable[[Any], None] | None = None  # adjust kopf settings after ours
    configure_logging: bool = True


def namespaces_of(args: argparse.Namespace) -> list[str]:
    if args.namespace:
        return [ns for item in args.namespace for ns in item.split(",") if ns]
    return _env_list("NAMESPACE")


def build(args: argparse.Namespace, hooks: Hooks | None = None) -> tuple[Any, dict[str, Any]]:
    """The registry and the ``kopf.run`` keyword arguments for these flags (no side effects)."""
    import kopf

    from autoglm_operator.handlers import OperatorConfig, register
    from autoglm_operator.reconcile import Options

    hooks = hooks or Hooks()
    namespaces = namespaces_of(args)
    if namespaces and args.all_namespaces:
        raise SystemExit("autoglm-operator run: use either --namespace or --all-namespaces, not both")
    standalone = bool(args.standalone)
    user_tune = hooks.tune

    priority = args.priority if args.priority is not None else start_time_priority()
    lifetime = int(args.peering_lifetime)

    def tune(settings: kopf.OperatorSettings) -> None:
        if not standalone:
            # Without the KopfPeering CRD kopf would quietly run unpeered; two replicas must never both act.
            settings.peering.mandatory = True
            # Leader election: kopf pauses every replica that sees a live peer of higher priority, and
            # all of them on a tie; distinct priorities leave exactly one active. A peer that stops
            # cleanly leaves the peering at once; one that is killed is dropped when its keep-alive
            # (refreshed every lifetime - 5..10 s) expires, which bounds the takeover by the lifetime.
            settings.peering.lifetime = lifetime
        if user_tune is not None:
            user_tune(settings)

    config = OperatorConfig(
        resync_seconds=args.resync_seconds,
        options=Options(
            read_nodes=not args.no_node_lookup,
            allow_network=args.allow_network,
            prometheus_address=args.prometheus_address,
        ),
        tune=tune,
    )
    registry = register(kopf.OperatorRegistry(), config)
    kwargs: dict[str, Any] = {
        "registry": registry,
        "standalone": standalone,
        "peering_name": None if standalone else args.peering,
        "priority": None if standalone else priority,
        "clusterwide": not namespaces,
        "namespaces": namespaces,
        "liveness_endpoint": f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None,
        "stop_flag": hooks.stop_flag,
        "ready_flag": hooks.ready_flag,
    }
    return registry, kwargs


def configure_logging(log_format: str, verbose: bool) -> None:
    import kopf

    kopf.configure(
        verbose=verbose,
        log_format=kopf.LogFormat.JSON if log_format == "json" else kopf.LogFormat.FULL,
        log_refkey="object",  # JSON lines carry {"object": {"namespace", "name", ...}}
    )
    from autoglm_operator.handlers import QuietEventHandlers

    quiet = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietEventHandlers) for f in quiet.filters):
        quiet.addFilter(QuietEventHandlers())


def run(args: argparse.Namespace, hooks: Hooks | None = None) -> int:
    import kopf

    from autoglm_operator import metrics

    hooks = hooks or Hooks()
    if hooks.configure_logging:
        from autoglm_operator import malloc

        malloc.limit_arenas()  # a process of its own (not a test's thread): before any thread starts
        configure_logging(args.log_format, args.verbose)
    _, kwargs = build(args, hooks)
    metrics.serve(args.metrics_port)
    scope = ", ".join(kwargs["namespaces"]) or "all namespaces"
    mode = (
        "standalone"
        if kwargs["standalone"]
        else f"peering {kwargs['peering_name']} with priority {kwargs['priority']} (the highest live one leads)"
    )
    logging.getLogger("autoglm_operator").info(f"Starting autoglm-operator: watching {scope}, {mode}")
    if hooks.stop_flag is None and threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run() outside the main thread needs a stop_flag")
    stop_requested = threading.Event()
    try:
        with asyncio.Runner(loop_factory=lambda: _signal_observing_loop(stop_requested)) as runner:
            runner.run(kopf.operator(**kwargs))
    except asyncio.CancelledError:
        pass  # what kopf.run() ignores too
    except TimeoutError:
        # kopf's shutdown re-raises a timeout of a request that was in flight when the stop came
        # (e.g. a slow API server): after SIGTERM or the stop flag that is a clean stop, not a crash.
        if not (stop_requested.is_set() or _is_set(hooks.stop_flag)):
            raise
        logging.getLogger("autoglm_operator").warning(
            "Stopped; a Kubernetes API request still in flight at shutdown timed out"
        )
    return 0


def _signal_observing_loop(seen: threading.Event) -> asyncio.AbstractEventLoop:
    """A new event loop that notes when a signal handler kopf installs (SIGTERM, SIGINT) fires."""
    loop = asyncio.new_event_loop()
    add_signal_handler = loop.add_signal_handler

    def observed(sig: int, callback: Callable[..., object], *args: Any) -> None:
        def handler(*a: Any) -> None:
            seen.set()
            callback(*a)

        add_signal_handler(sig, handler, *args)

    loop.add_signal_handler = observed  # type: ignore[method-assign,assignment]
    return loop


def _is_set(flag: Any) -> bool:
    """Whether a kopf stop flag (threading/asyncio Event or Future) has been raised."""
    if flag is None:
        return False
    if hasattr(flag, "is_set"):
        return bool(flag.is_set())
    return bool(flag.done())
