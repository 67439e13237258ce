"""The Dockerfile's commands, run outside a container (no Docker engine runs here).

The image's dependency and project layers are built with the very `uv sync` lines of the
Dockerfile into a fresh directory; its CMD (the Dagster code server) must start and answer a
gRPC health check, and `serve` (how SageMaker starts the image) must serve a model bundle
from SageMaker's model directory variable on the port SageMaker gives it, and the image's
HEALTHCHECK command must find it healthy (and a server that does not answer unhealthy). The
base image is pinned by digest and uv at the version of uv.lock, the one these tests build with.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from geo_busyness.stack.services import free_port, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
# Docker joins a line ending in a backslash with the next one.
INSTRUCTIONS = [
    line for line in DOCKERFILE.replace("\\\n", "").splitlines() if line and line[0] != "#"
]


def dockerfile_uv_commands() -> list[list[str]]:
    return [
        shlex.split(line.removeprefix("RUN "))
        for line in DOCKERFILE.splitlines()
        if line.startswith("RUN uv ")
    ]


def dockerfile_cmd() -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE).group(1))


def dockerfile_healthcheck() -> tuple[str, str]:
    """(options, shell command) of the HEALTHCHECK instruction."""
    found = [line for line in INSTRUCTIONS if line.startswith("HEALTHCHECK ")]
    assert len(found) == 1, "the Dockerfile has no (or more than one) HEALTHCHECK"
    options, command = found[0].removeprefix("HEALTHCHECK ").split("CMD ", 1)
    return options.strip(), command.strip()


def locked_version(package: str) -> str:
    lock = (REPO / "uv.lock").read_text()
    return re.search(rf'^name = "{package}"\nversion = "([^"]+)"$', lock, re.MULTILINE).group(1)


def uv_executable() -> str:
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def run_healthcheck(venv_bin: Path, env: dict[str, str], pid: int, port: int):
    """The image's HEALTHCHECK command as Docker runs it (``/bin/sh -c``), for the process
    ``pid`` as the container's command, with ``python`` of the image's venv."""
    _, command = dockerfile_healthcheck()
    return subprocess.run(
        ["/bin/sh", "-c", command],
        env={
            **env,
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
            "HEALTHCHECK_PID": str(pid),
            "SAGEMAKER_BIND_TO_PORT": str(port),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_dockerfile_pins_the_base_image_by_digest_and_uv_at_the_locked_version():
    bases = [line for line in INSTRUCTIONS if line.startswith("FROM ")]
    assert len(bases) == 1
    assert re.fullmatch(r"FROM python:3\.11-slim@sha256:[0-9a-f]{64}", bases[0]), bases[0]
    installs = re.findall(r"pip install (?:--\S+ )*uv(\S*)", DOCKERFILE)
    locked = locked_version("uv")
    assert installs == [f"=={locked}"]
    # The uv these tests build the image's layers with is the image's.
    version = subprocess.run(
        [uv_executable(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version.split()[:2] == ["uv", locked]


def test_dockerfile_healthcheck_checks_ping_of_serve_with_python():
    options, command = dockerfile_healthcheck()
    values = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    assert set(values) >= {"interval", "timeout", "start-period", "retries"}
    assert command.startswith("python -c ")  # the slim image has no curl
    assert "/ping" in command and "serve" in command


def test_dockerfile_builds_from_the_lockfile_without_dev_dependencies():
    commands = dockerfile_uv_commands()
    assert [c[:2] for c in commands] == [["uv", "sync"], ["uv", "sync"]]
    assert all("--frozen" in c and "--no-dev" in c for c in commands)
    assert "--no-install-project" in commands[0]  # the cacheable dependency layer
    assert "USER app" in DOCKERFILE


def test_image_commands_install_and_serve_the_code_location(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md", "workspace.yaml", "dagster_cloud.yaml"):
        shutil.copy(REPO / name, app / name)
    env = {
        **os.environ,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": sys.executable,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "GEO_BUSYNESS_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("VIRTUAL_ENV", None)
    (tmp_path / "home").mkdir()
    dockerfile_healthcheck()  # before minutes of installing: the image must have one
    uv = uv_executable()
    dependencies, project = dockerfile_uv_commands()
    subprocess.run(
        [uv, *dependencies[1:]], cwd=app, env=env, check=True, capture_output=True, timeout=900
    )
    shutil.copytree(
        REPO / "geo_busyness", app / "geo_busyness", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [uv, *project[1:]], cwd=app, env=env, check=True, capture_output=True, timeout=900
    )
    venv_bin = app / ".venv" / "bin"
    assert not (venv_bin / "pytest").exists()  # dev dependencies stay out of the image

    port = free_port()
    command = [str(venv_bin / dockerfile_cmd()[0]), *dockerfile_cmd()[1:]]
    command = [("127.0.0.1" if part == "0.0.0.0" else part) for part in command]
    command[command.index("-p") + 1] = str(port)
    server = subprocess.Popen(
        command,
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            check = subprocess.run(
                [venv_bin / "dagster", "api", "grpc-health-check", "-p", str(port)],
                env=env,
                capture_output=True,
                text=True,
            )
            if check.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"code server did not become healthy:\n{server.stdout.read()}")
            time.sleep(2)
        # The default command is not `serve`: the HEALTHCHECK has nothing to ask it.
        healthcheck = run_healthcheck(venv_bin, env, server.pid, free_port())
        assert healthcheck.returncode == 0, healthcheck.stderr
    finally:
        stop_process_group(server)

    # SageMaker: `docker run <image> serve`, the model unpacked into SM_MODEL_DIR.
    bundle = tmp_path / "opt-ml-model"
    subprocess.run(
        [venv_bin / "python", "-m", "geo_busyness.serving.demo", str(bundle)],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    port = free_port()
    serve_env = {**env, "SM_MODEL_DIR": str(bundle), "SAGEMAKER_BIND_TO_PORT": str(port)}
    model_server = subprocess.Popen(
        [venv_bin / "serve", "--host", "127.0.0.1"],
        cwd=app,
        env=serve_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if model_server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not answer /ping:\n{model_server.stdout.read()}")
            time.sleep(0.5)
        manifest = json.loads((bundle / "manifest.json").read_text())
        answer = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={
                "instances": [
                    {"lat": 50.45, "lon": -104.61, "timestamp": manifest["horizon_start"]}
                ]
            },
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == manifest["model_version"]
        # Docker's HEALTHCHECK of this container: healthy while /ping answers on its port...
        healthcheck = run_healthcheck(venv_bin, serve_env, model_server.pid, port)
        assert healthcheck.returncode == 0, healthcheck.stderr
        # ... unhealthy when nothing answers there.
        healthcheck = run_healthcheck(venv_bin, serve_env, model_server.pid, free_port())
        assert healthcheck.returncode == 1, healthcheck.stderr
        assert "Connection refused" in healthcheck.stderr
    finally:
        stop_process_group(model_server)

    # SageMaker training: `docker run <image> train`. An empty channel must fail the way
    # SageMaker reports it (exit 1, the reason in /opt/ml/output/failure); training itself is
    # covered by unit/test_training_container.py.
    sm = tmp_path / "opt-ml"
    for folder in ("input/data/training", "input/config", "model", "output"):
        (sm / folder).mkdir(parents=True)
    (sm / "input/config/hyperparameters.json").write_text('{"feature_names": "lag_24h"}')
    trained = subprocess.run(
        [venv_bin / "train"],
        cwd=app,
        env={
            **env,
            "SM_CHANNEL_TRAINING": str(sm / "input/data/training"),
            "SM_INPUT_CONFIG_DIR": str(sm / "input/config"),
            "SM_MODEL_DIR": str(sm / "model"),
            "SM_OUTPUT_DIR": str(sm / "output"),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 1, trained.stdout + trained.stderr
    assert "holds no .parquet file" in (sm / "output" / "failure").read_text()
