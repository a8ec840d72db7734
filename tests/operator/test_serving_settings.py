"""Every serving setting walks from a CR to the engine, and every layer follows its one declaration.

Each setting declared in :mod:`autoglm_runtime.serving_settings` with a place in the CR is set in a
CR (to a value other than its default), rendered to the pod by the ``autoglm-operator render``
path, read back by the runtime's settings from the pod's env, put into the engine's config, and
must arrive unchanged at each step. A setting left out of any layer (the CR model, the rendering,
the runtime, the engine) fails here. Adding a setting is its declaration plus, when its default is
"not set", a sample value in ``SAMPLES``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic.alias_generators import to_camel

from autoglm_operator import api, render
from autoglm_operator.cli import main
from autoglm_runtime import serving_settings
from autoglm_runtime.serving_settings import EngineSettings, ServingSettings, in_spec, spec_bounds
from autoglm_runtime.settings import RuntimeSettings, env_name
from tests.conftest import REPO
from tests.operator.render_helpers import BASE

SETTINGS = serving_settings.spec_settings()

# Values for the settings whose default is "not set" (or that are not numbers): within the CR's
# bounds and its cross-field rules, and small enough that the model still fits (so pods render).
SAMPLES: dict[str, Any] = {
    "max_batch_tokens": 4096,
    "kv_cache_tokens": 100000,
    "max_queue_wait_seconds": 2.5,
    "max_image_pixels": 1000000,
    "image_url_hosts": ["screens.example.com", "*.cdn.example.com"],
}


def sample(name: str) -> Any:
    """A CR value other than the setting's default."""
    if name in SAMPLES:
        return SAMPLES[name]
    default = ServingSettings.model_fields[name].default
    assert default is not None, f"{name} is 'not set' by default: add a sample value to SAMPLES"
    if isinstance(default, bool):
        return not default
    le = spec_bounds(name).get("le")
    return default + 1 if le is None or default + 1 <= le else default - 1


def rendered_pod_env(cr: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """The runtime container's environment as `autoglm-operator render` writes it (envFrom the
    settings ConfigMap, then the container's own env)."""
    path = tmp_path / "cr.yaml"
    path.write_text(yaml.safe_dump(cr))
    assert main(["render", "-f", str(path)]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "runtime")
    maps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def runtime_reads(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> RuntimeSettings:
    """The runtime's settings as the pod's process reads them (env only: no flags)."""
    for key in list(os.environ):
        if key.startswith("AUTOGLM_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return RuntimeSettings()  # type: ignore[call-arg]  # model comes from the env


def walk(name: str, value: Any, tmp_path: Path, capsys: Any, monkeypatch: Any) -> dict[str, Any]:
    """The setting's value in each layer, from a CR that sets it to ``value``."""
    from autoglm_runtime.engine import EngineConfig

    where = in_spec(name)
    assert where is not None
    cr = copy.deepcopy(BASE)
    cr["spec"].setdefault(where.section, {})[to_camel(name)] = value
    spec = render.parse_spec(cr)
    env = rendered_pod_env(cr, tmp_path, capsys)
    settings = runtime_reads(env, monkeypatch)
    layers = {
        "cr": getattr(getattr(spec, where.section), name),
        "env": env.get(env_name(name)),
        "runtime": getattr(settings, name),
    }
    if name in EngineSettings.model_fields:
        layers["engine"] = getattr(EngineConfig.from_settings(settings), name)
    return layers


@pytest.mark.parametrize("name", SETTINGS)
def test_a_setting_set_in_the_cr_reaches_the_runtime_and_the_engine(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    value = sample(name)
    assert value != ServingSettings.model_fields[name].default
    layers = walk(name, value, tmp_path, capsys, monkeypatch)
    expected = serving_settings.encode(name, value)
    assert layers["cr"] == value
    assert layers["env"] is not None, f"{name} is not rendered into the pod"
    assert layers["runtime"] == expected
    if "engine" in layers:
        assert layers["engine"] == expected


def test_a_setting_the_operator_does_not_render_fails_the_walk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk can fail: a setting dropped from the rendering arrives as the runtime's default."""
    real = serving_settings.spec_values

    def without_max_queue(sections: Any) -> dict[str, Any]:
        return {k: v for k, v in real(sections).items() if k != "max_queue"}

    monkeypatch.setattr(serving_settings, "spec_values", without_max_queue)
    layers = walk("max_queue", 300, tmp_path, capsys, monkeypatch)
    assert layers["cr"] == 300
    assert layers["env"] is None
    assert layers["runtime"] == layers["engine"] == 256  # the default, not what the CR asked for


def test_not_set_means_the_same_in_every_layer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CR that sets nothing: every setting is the declaration's default in the runtime and the
    engine, and a "not set" one (None) is not rendered at all."""
    from autoglm_runtime.engine import EngineConfig

    env = rendered_pod_env(copy.deepcopy(BASE), tmp_path, capsys)
    settings = runtime_reads(env, monkeypatch)
    engine = EngineConfig.from_settings(settings)
    for name in SETTINGS:
        default = ServingSettings.model_fields[name].default
        assert getattr(settings, name) == default, name
        if default is None:
            assert env_name(name) not in env, name
        if name in EngineSettings.model_fields:
            assert getattr(engine, name) == default, name


def test_the_operator_renders_the_new_names_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A renamed setting set in the CR is rendered under its new env var; its earlier one (which the
    runtime still reads, deprecated) never."""
    cr = copy.deepcopy(BASE)
    for new in serving_settings.renamed().values():
        where = in_spec(new)
        assert where is not None
        cr["spec"].setdefault(where.section, {})[to_camel(new)] = sample(new)
    env = rendered_pod_env(cr, tmp_path, capsys)
    for old, new in serving_settings.renamed().items():
        assert env_name(new) in env, new
        assert "AUTOGLM_" + old.upper() not in env, old


def test_the_engine_config_is_the_engines_part_of_the_declarations() -> None:
    from autoglm_runtime.engine import EngineConfig

    assert set(EngineConfig.model_fields) == set(EngineSettings.model_fields)
    assert set(ServingSettings.model_fields) <= set(RuntimeSettings.model_fields)


@pytest.mark.parametrize("name", SETTINGS)
def test_the_cr_field_follows_the_declaration(name: str) -> None:
    """Name, default, bounds and description of the CR field, in the model and in the committed
    CRD; the CR's bounds are never looser than the runtime's (an admitted CR is never refused)."""
    where = in_spec(name)
    assert where is not None
    model = api.ServingSpec if where.section == "serving" else api.MemorySpec
    field = model.model_fields[name]
    declared = ServingSettings.model_fields[name]
    if field.default_factory is None:
        assert field.default == declared.default
    crd = yaml.safe_load((REPO / "crds" / "autoglm.io_autoglmdeployments.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    prop = spec["properties"][where.section]["properties"][to_camel(name)]
    assert prop["description"] == serving_settings.description(name, for_spec=True)
    bounds = spec_bounds(name)
    if "ge" in bounds:
        assert prop["minimum"] == bounds["ge"]
    if "le" in bounds:
        assert prop["maximum"] == bounds["le"]
    if declared.default is not None and not isinstance(declared.default, str):
        assert prop["default"] == declared.default
    runtime = serving_settings._runtime_bounds(declared)
    if where.type is None or where.type in (int, float):
        lower = runtime.get("ge", runtime.get("gt"))
        assert lower is None or bounds.get("ge", bounds.get("gt")) >= lower
        assert runtime.get("le") is None or bounds["le"] <= runtime["le"]


@pytest.mark.parametrize("name", SETTINGS)
def test_the_reverse_map_names_the_cr_field(name: str) -> None:
    where = in_spec(name)
    assert where is not None
    assert render.setting_source(name) == f"spec.{where.section}.{to_camel(name)}"


def test_zero_is_still_read_as_not_set_by_the_runtime() -> None:
    """0 was the runtime's "not set" for these two before None was: pods and scripts that pass it
    keep the device default and the pool sized from memory."""
    settings = RuntimeSettings(model="m", max_batch_tokens=0, kv_cache_tokens="0")  # type: ignore[arg-type]
    assert settings.max_batch_tokens is None
    assert settings.kv_cache_tokens is None
