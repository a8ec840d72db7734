"""The docs users read name every runtime setting and metric that exists (and nothing stale)."""

from __future__ import annotations

import re

from autoglm_runtime import metrics
from autoglm_runtime.serve import flag_name
from autoglm_runtime.serving_settings import renamed
from autoglm_runtime.settings import ENV_PREFIX, RuntimeSettings, env_name
from tests.conftest import REPO

RUNTIME_DOC = (REPO / "docs" / "runtime.md").read_text()


def test_every_setting_is_documented_with_env_and_flag():
    for field in RuntimeSettings.model_fields:
        assert f"| `{env_name(field)}` | `{flag_name(field)}` |" in RUNTIME_DOC, field


def test_documented_settings_exist():
    documented = set(re.findall(r"`(AUTOGLM_[A-Z0-9_]+)`", RUNTIME_DOC))
    deprecated = {ENV_PREFIX + old.upper() for old in renamed(RuntimeSettings)}  # still read, with a warning
    assert documented <= {env_name(f) for f in RuntimeSettings.model_fields} | deprecated


def test_the_deprecated_names_are_documented():
    for old, new in renamed(RuntimeSettings).items():
        assert f"`{ENV_PREFIX}{old.upper()}` / `{flag_name(old)}` (now `{env_name(new)}`)" in RUNTIME_DOC, old


def test_every_metric_is_documented():
    names = {v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str) and v.startswith("autoglm_")}
    assert names
    for name in names:
        assert f"`{name}`" in RUNTIME_DOC, name
