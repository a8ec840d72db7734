"""Build both images and run them (scripts/build-images.sh --smoke): the operator image prints the
CRD, the runtime image (CPU variant) serves a tiny GLM-4V: /readyz, a completion, a screenshot
chat request (the vision path without torchvision), /metrics.

Minutes long and needs buildah/podman (or docker): runs only when asked for, with
``pytest -m images`` or AUTOGLM_TEST_IMAGES=1 (``make images-smoke``)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.images, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(autouse=True)
def _opt_in(request: pytest.FixtureRequest) -> None:
    markexpr = request.config.getoption("-m") or ""
    asked = os.environ.get("AUTOGLM_TEST_IMAGES") == "1" or (
        "images" in markexpr and "not images" not in markexpr
    )
    if not asked:
        pytest.skip(
            "image builds run only with `pytest -m images` or AUTOGLM_TEST_IMAGES=1 (make images-smoke)"
        )
    if not (shutil.which("buildah") and shutil.which("podman")):
        pytest.skip("needs buildah and podman: apt-get install -y buildah podman runc debootstrap")


def test_images_build_and_serve() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "ENGINE": "buildah"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert "runtime image: /readyz, /v1/completions, a screenshot chat request and /metrics OK" in done.stderr
    assert "operator image: --help, crd and uid 10001 OK" in done.stderr


def _podman(*args: str) -> list[str]:
    return ["podman", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", *args]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_operator_image_reconciles_against_an_api_server(tmp_path) -> None:
    """The operator image, run as its pod runs it (uid 10001, read-only root, no capabilities),
    against the e2e tests' emulated API server: /healthz answers, a CR becomes a Deployment, and
    /metrics counts the reconcile. Runs after test_images_build_and_serve built the image."""
    import asyncio
    import urllib.request

    import kmock
    import yaml

    from autoglm_operator import api
    from tests.operator.e2e.emulator import ApiEmulator, kubeconfig_yaml, register_resources

    image = "localhost/autoglm-operator:" + importlib.metadata.version("autoglm")
    if subprocess.run(_podman("image", "exists", image), check=False).returncode != 0:
        pytest.skip(f"{image} is not built (run test_images_build_and_serve or scripts/build-images.sh)")
    cr = yaml.safe_load((REPO / "examples" / "glm-4-9b-int8-l4.yaml").read_text())
    cr["metadata"]["namespace"] = "smoke"
    live, metrics_port = _free_port(), _free_port()
    name = f"autoglm-operator-smoke-{os.getpid()}"

    def get(url: str) -> str:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 (loopback only)
            return r.read().decode()

    async def eventually(check, what: str, seconds: float = 180) -> None:
        for _ in range(int(seconds * 2)):
            try:
                if await asyncio.to_thread(check):
                    return
            except OSError:
                pass
            state = subprocess.run(
                _podman("inspect", "--format", "{{.State.Running}}", name),
                capture_output=True,
                text=True,
                check=False,
            )
            if state.stdout.strip() != "true":
                break  # the operator exited: no use waiting
            await asyncio.sleep(0.5)
        logs = subprocess.run(_podman("logs", name), capture_output=True, text=True, check=False)
        pytest.fail(f"{what} did not happen; operator log:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")

    async with ApiEmulator() as emu, kmock.Server(emu) as server:
        register_resources(emu)
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(kubeconfig_yaml(server.url))
        kubeconfig.chmod(0o644)
        run = _podman(
            "run", "-d", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
            "-v", f"{kubeconfig}:/kube/config:ro", "-e", "KUBECONFIG=/kube/config", image,
            # cluster-wide: kmock cannot list /api/v1/namespaces, which kopf does in namespaced mode
            "run", "--standalone", f"--liveness-port={live}", f"--metrics-port={metrics_port}",
        )  # fmt: skip
        started = await asyncio.to_thread(subprocess.run, run, capture_output=True, text=True, check=False)
        assert started.returncode == 0, started.stderr
        try:
            await eventually(lambda: get(f"http://127.0.0.1:{live}/healthz") is not None, "/healthz")
            await asyncio.to_thread(
                urllib.request.urlopen,
                urllib.request.Request(
                    f"{str(server.url).rstrip('/')}/apis/{api.GROUP}/{api.VERSION}/namespaces/smoke/{api.PLURAL}",
                    data=json.dumps(cr).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                ),
            )
            await eventually(lambda: emu.objects_of("deployments", "smoke"), "a Deployment for the CR")
            await eventually(
                lambda: (
                    'autoglm_operator_reconciles_total{result="applied"} 0.0'
                    not in get(f"http://127.0.0.1:{metrics_port}/metrics")
                ),
                "an applied reconcile in /metrics",
            )
        finally:
            subprocess.run(_podman("rm", "-f", name), capture_output=True, check=False)
