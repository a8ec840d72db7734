"""Flags of ``autoglm-runtime fetch``. Tuning flags also read ``AUTOGLM_FETCH_<FLAG>`` env vars."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

ENV_PREFIX = "AUTOGLM_FETCH_"


def _env(flag: str, default: Any, kind: Callable[[str], Any] = str) -> Any:
    raw = os.environ.get(ENV_PREFIX + flag.upper().replace("-", "_"))
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        name = ENV_PREFIX + flag.upper().replace("-", "_")
        print(f"autoglm-runtime fetch: error: {name}={raw!r}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None  # usage, like argparse


def _truthy(raw: str | None) -> bool:
    return (raw or "").strip().lower() in {"1", "true", "yes", "on"}


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


# flag, type, default, help (each also from env AUTOGLM_FETCH_<FLAG>)
_NETWORK_TUNING: list[tuple[str, type, float, str]] = [
    ("workers", int, 4, "files downloaded in parallel"),
    ("connect-timeout", float, 10.0, "seconds"),
    ("read-timeout", float, 60.0, "seconds without a byte"),
    ("max-attempts", int, 8, "consecutive failed attempts (without progress) before giving up on a request"),
    ("backoff-initial", float, 1.0, "seconds"),
    ("backoff-max", float, 60.0, "seconds"),
    ("max-retry-after", float, 300.0, "cap on a server's Retry-After, seconds"),
    ("checksum-attempts", int, 3, "downloads of one file that fail verification before exit code 5"),
    (
        "lock-timeout",
        float,
        0.0,
        "seconds to wait for another fetch of the same revision; 0 = as long as it runs",
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_source_arguments(parser)
    _add_mode_and_tuning_arguments(parser)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("what to fetch")
    src.add_argument(
        "--model",
        required=True,
        help="hf://org/name, org/name, or https://MIRROR[/prefix]/org/name (a server speaking the hub's HTTP API)",
    )
    src.add_argument(
        "--revision",
        default=os.environ.get("AUTOGLM_REVISION") or "main",
        help="commit sha (recommended), branch or tag (default: $AUTOGLM_REVISION or main)",
    )
    src.add_argument(
        "--cache-dir",
        default=os.environ.get("AUTOGLM_CACHE_DIR"),
        help="the model cache volume; files land in CACHE/<org>--<name>/<revision>/ (default: $AUTOGLM_CACHE_DIR)",
    )
    src.add_argument(
        "--endpoint",
        default=os.environ.get("HF_ENDPOINT"),
        help="hub base URL for hf:// and org/name sources (default: $HF_ENDPOINT or https://huggingface.co)",
    )
    src.add_argument(
        "--token-file",
        default=os.environ.get(ENV_PREFIX + "TOKEN_FILE"),
        help="file holding the hub token (a mounted Secret); default: $HF_TOKEN. Never logged.",
    )
    src.add_argument(
        "--allow-patterns",
        nargs="+",
        action="extend",
        metavar="GLOB",
        help="files to fetch (fnmatch globs); default: what inference needs (*.json, *.safetensors, tokenizer files...)",
    )
    src.add_argument(
        "--ignore-patterns",
        nargs="+",
        action="extend",
        metavar="GLOB",
        help="files to skip, on top of the defaults",
    )
    src.add_argument(
        "--trust-remote-code",
        action="store_true",
        default=_truthy(os.environ.get("AUTOGLM_TRUST_REMOTE_CODE")),
        help="also fetch the repo's *.py files (the model's own code)",
    )


def _add_mode_and_tuning_arguments(parser: argparse.ArgumentParser) -> None:
    pos_float, pos_int = _positive(float), _positive(int)
    mode = parser.add_argument_group("mode")
    mode.add_argument(
        "--offline",
        action="store_true",
        default=any(
            _truthy(os.environ.get(v))
            for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", ENV_PREFIX + "OFFLINE")
        ),
        help="no network: succeed only if the cache holds the complete revision (also HF_HUB_OFFLINE=1)",
    )
    mode.add_argument(
        "--verify", action="store_true", help="re-hash every cached file instead of trusting the manifest"
    )
    mode.add_argument(
        "--print-path", action="store_true", help="print the local folder and exit (no network, no I/O)"
    )
    mode.add_argument("--output-file", help="also write the local folder path to this file")

    net = parser.add_argument_group("network tuning (env AUTOGLM_FETCH_<FLAG>)")
    for flag, kind, default, help_text in _NETWORK_TUNING:
        checker = pos_int if kind is int else pos_float
        net.add_argument(f"--{flag}", type=checker, default=_env(flag, default, kind), help=help_text)

    out = parser.add_argument_group("logging")
    out.add_argument(
        "--progress-interval",
        type=pos_float,
        default=_env("progress-interval", 10.0, float),
        help="seconds between progress lines",
    )
    out.add_argument(
        "--log-format",
        choices=["json", "text"],
        default=os.environ.get("AUTOGLM_LOG_FORMAT", "json"),
        help="json (in pods) or text",
    )
    out.add_argument(
        "--log-level", default=os.environ.get("AUTOGLM_LOG_LEVEL", "INFO"), help="Python log level"
    )
