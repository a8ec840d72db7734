"""``autoglm-runtime serve``: listen at once, load the model in the background, then serve.

Every :class:`RuntimeSettings` field is a flag (``--gpu-memory-percent``), generated from the model
so the two can never drift; each also reads ``AUTOGLM_*`` from the environment; flags win. A renamed
setting's earlier flag (``--request-timeout-s``) is still accepted, deprecated, with a warning.
Listening before the model is loaded keeps /healthz answering during a long load (no crash loop
while a 9B model loads); /readyz flips when the model is loaded and warm. A load failure stops the
server and exits 1 with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from autoglm_runtime import serving_settings
from autoglm_runtime.logs import LogFormatter
from autoglm_runtime.serving_settings import ServingSettings, renamed
from autoglm_runtime.settings import ENV_PREFIX, RuntimeSettings

log = logging.getLogger("autoglm_runtime.serve")


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _field_type(annotation: Any) -> Any:
    """The non-None type of ``X | None``."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def _flag_kwargs(name: str, info: Any) -> dict[str, Any]:
    kind = _field_type(info.annotation)
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif isinstance(kind, type) and issubclass(kind, Enum):
        kwargs["choices"] = [m.value for m in kind]
    else:
        kwargs["metavar"] = name.upper()
    return kwargs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per settings field; defaults are suppressed so only explicit flags override env.
    A renamed setting also keeps its earlier flag (its own ``dest``: the old name), deprecated."""
    old_names = {new: old for old, new in renamed(RuntimeSettings).items()}
    for name, info in RuntimeSettings.model_fields.items():
        text = serving_settings.description(name) if name in ServingSettings.model_fields else info.description
        help_text = f"{text or ''} [env {ENV_PREFIX}{name.upper()}]"
        if not info.is_required():
            help_text += (
                f" (default: {info.default.value if isinstance(info.default, Enum) else info.default})"
            )
        parser.add_argument(flag_name(name), dest=name, help=help_text, **_flag_kwargs(name, info))
        if name in old_names:
            old = old_names[name]
            parser.add_argument(
                flag_name(old),
                dest=old,
                help=f"Deprecated: use {flag_name(name)} [env {ENV_PREFIX}{old.upper()}, deprecated too].",
                **_flag_kwargs(name, info),
            )


def _renamed_flags(args: argparse.Namespace, flags: dict[str, Any]) -> None:
    """A renamed setting's earlier flag, as the new one (which wins where both are given)."""
    for old, new in renamed(RuntimeSettings).items():
        if not hasattr(args, old):
            continue
        if new in flags:
            log.warning("%s is deprecated and ignored: %s is given too and wins", flag_name(old), flag_name(new))
            continue
        log.warning("%s is deprecated: use %s", flag_name(old), flag_name(new))
        flags[new] = getattr(args, old)


def settings_from_args(args: argparse.Namespace) -> RuntimeSettings:
    """Flags over ``AUTOGLM_*`` env vars over defaults; raises ``ValueError`` with a one-line message.
    Renamed settings' earlier flags and env vars count as the new ones, below them, with a warning."""
    flags = {name: getattr(args, name) for name in RuntimeSettings.model_fields if hasattr(args, name)}
    _renamed_flags(args, flags)
    try:
        return RuntimeSettings(**flags)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            where = f"{flag_name(field)} / {ENV_PREFIX}{field.upper()}" if field else "settings"
            msg = "is required" if err["type"] == "missing" else err["msg"]
            problems.append(f"{where}: {msg}")
        raise ValueError("; ".join(problems)) from None


def configure_logging(settings: RuntimeSettings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(settings.log_format == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Libraries' chatty loggers: bitsandbytes warns on every int8 forward pass.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def public_settings(settings: RuntimeSettings) -> dict[str, Any]:
    """Settings for the startup log: file paths only (never file contents such as API keys)."""
    return json.loads(settings.model_dump_json())


class BackgroundLoader:
    """Loads the model on a thread while the server already answers /healthz."""

    def __init__(self, settings: RuntimeSettings, engine: Any, metrics: Any, on_failure: Any) -> None:
        self.settings, self.engine, self.metrics, self.on_failure = settings, engine, metrics, on_failure
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="autoglm-loader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        from autoglm_runtime.engine import ModelRunner
        from autoglm_runtime.loader import ModelLoadError, load_model

        try:
            loaded = load_model(self.settings)
            self.metrics.model_loaded(loaded.load_seconds, loaded.memory_bytes)
            log.info("Ready: serving %s", loaded.name)
            # This thread becomes the engine's worker (see Engine.run_here for why).
            self.engine.run_here(
                ModelRunner(loaded.model, loaded.tokenizer, loaded.device, vision=loaded.vision), loaded.name
            )
        except ModelLoadError as exc:
            self._fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - anything else still must stop the pod, clearly
            log.error("Unexpected error while loading the model", exc_info=exc)
            self._fail(f"cannot load model {self.settings.model}: {type(exc).__name__}: {exc}")

    def _fail(self, message: str) -> None:
        self.error = message
        self.engine.load_error = message
        log.error("Model load failed: %s", message)
        self.on_failure()


class _Held(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _replay(records: list[logging.LogRecord]) -> None:
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def read_settings(args: argparse.Namespace) -> RuntimeSettings:
    """:func:`settings_from_args`, then logging configured by them; what reading them logged (a
    deprecated name's warning) is held until then, so it comes out in the configured format."""
    logger, held = logging.getLogger("autoglm_runtime"), _Held()
    logger.addHandler(held)
    propagate, logger.propagate = logger.propagate, False
    try:
        try:
            settings = settings_from_args(args)
        finally:
            logger.removeHandler(held)
            logger.propagate = propagate
    except ValueError:
        _replay(held.records)  # before the error: logging as it is (Python's last-resort stderr)
        raise
    configure_logging(settings)
    _replay(held.records)
    return settings


def run(args: argparse.Namespace) -> int:
    try:
        settings = read_settings(args)
    except ValueError as exc:
        print(f"autoglm-runtime serve: {exc}", file=sys.stderr)
        return 2
    log.info("Starting with settings %s", json.dumps(public_settings(settings)))

    import uvicorn

    from autoglm_runtime.app import create_app
    from autoglm_runtime.engine import Engine, EngineConfig
    from autoglm_runtime.loader import ModelLoadError, check_weights, resolve_source
    from autoglm_runtime.metrics import RuntimeMetrics

    # Cheap checks first, so an obviously wrong model path fails before the port opens.
    try:
        source = resolve_source(settings)
        if Path(source).is_dir():
            check_weights(Path(source))
    except ModelLoadError as exc:
        print(f"autoglm-runtime serve: {exc}", file=sys.stderr)
        return 1
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    # Start torch's CPU thread pool from the main thread. Measured: when the first parallel op ran on
    # the loader thread instead, every later CPU decode step was 3-10x slower.
    torch.ones(512, 512).matmul(torch.ones(512, 512)).sum()

    from autoglm_runtime.auth import ApiKeysError
    from autoglm_runtime.guard import GuardState
    from autoglm_runtime.shutdown import DrainingServer
    from autoglm_runtime.tls import ReloadingTLS, TLSConfigError

    # Unusable key or certificate files are configuration errors: say which file, before listening.
    try:
        guard = GuardState.from_settings(settings)
        tls = (
            ReloadingTLS(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
            if settings.tls_cert_file is not None and settings.tls_key_file is not None
            else None
        )
    except (ApiKeysError, TLSConfigError) as exc:
        print(f"autoglm-runtime serve: {exc}", file=sys.stderr)
        return 2

    engine = Engine(EngineConfig.from_settings(settings))
    metrics = RuntimeMetrics()

    async def shutdown() -> None:
        engine.stop()

    app = create_app(settings, engine, metrics=metrics, on_shutdown=shutdown, guard=guard)
    # TLS 1.2+, AEAD ciphers, optional mTLS, and certificates reloaded when the Secret changes.
    ssl: dict[str, Any] = {"ssl_context_factory": tls.uvicorn_factory()} if tls is not None else {}
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        timeout_keep_alive=settings.keep_alive_s,
        **ssl,
    )
    server = DrainingServer(config, guard, settings.shutdown_grace_s)

    def stop_server() -> None:
        server.should_exit = True

    loader = BackgroundLoader(settings, engine, metrics, stop_server)
    loader.start()
    server.run()
    engine.stop()
    if loader.error:
        print(f"autoglm-runtime serve: {loader.error}", file=sys.stderr)
        return 1
    return 0
