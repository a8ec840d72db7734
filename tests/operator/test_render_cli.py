"""`autoglm-operator render`: what a GitOps user runs in CI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoglm_operator.cli import main
from tests.conftest import EXAMPLES, REPO
from tests.operator.render_helpers import cr

INT8_L4 = REPO / "examples" / "glm-4-9b-int8-l4.yaml"


def test_renders_an_example_as_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(INT8_L4)]) == 0
    out, err = capsys.readouterr()
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert kinds == ["ConfigMap", "Service", "Deployment"]
    assert "quantization int8" in err
    assert "fits" in err


def test_output_is_the_same_every_time(capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for _ in range(2):
        assert main(["render", "-f", str(INT8_L4)]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]


def test_json_output_is_a_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(INT8_L4), "-o", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "List"
    assert [o["kind"] for o in doc["items"]] == ["ConfigMap", "Service", "Deployment"]


def test_several_files_and_multi_document_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hf"},
        "stringData": {"token": "hf_NOTFORPRINT"},
    }
    first = cr(model={"source": "hf://THUDM/glm-4-9b-chat", "credentialsSecret": "hf"})
    second = cr()
    second["metadata"]["name"] = "other"
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump_all([secret, first, second])))
    assert main(["render", "-f", "-", "-f", str(INT8_L4)]) == 0
    out, err = capsys.readouterr()
    names = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out) if d}
    assert ("Deployment", "glm") in names
    assert ("Deployment", "other") in names
    assert ("Deployment", "glm4-chat") in names
    assert "skipping a Secret" in err
    assert "hf_NOTFORPRINT" not in out + err, "a Secret's value was printed"


def test_invalid_cr_names_the_field_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cr(autoscaling={"minReplicas": 5, "maxReplicas": 2})))
    proc = subprocess.run(
        [sys.executable, "-m", "autoglm_operator.cli", "render", "-f", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "spec.autoscaling.minReplicas" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_unreadable_input_is_reported(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["render", "-f", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert main(["render", "-f", str(broken)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_a_cr_that_does_not_fit_warns(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(cr(quantization="bf16", resources={"gpu": {"count": 1, "product": "T4"}})))
    assert main(["render", "-f", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "Deployment" not in out
    assert "does NOT fit" in err
    assert "no Deployment rendered" in err


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_cli_prints_the_golden(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(path), "--operator-version", "0.1.0"]) == 0
    assert capsys.readouterr().out == (Path(__file__).parent / "golden" / f"{path.stem}.yaml").read_text()
