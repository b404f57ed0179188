"""Shared fixtures of the deploy tests: tool lookup, a `tnn serve` on 127.0.0.1, the image built with buildah.

Every server, container and Prometheus started here listens on 127.0.0.1 only and is stopped by its fixture;
every wait is bounded. Tools are looked up, never installed: scripts/install-deploy-tools.sh does that.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import ServerProcess, make_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/tnn-base:bookworm"
STARTUP_TIMEOUT_S = 180  # model load on a busy 2-core machine, torch import included
SCRAPED_REQUESTS = 3


def require_tool(name: str) -> str:
    """Path of a deploy tool (the project's venv first, for hadolint), or skip the test naming the fix."""
    venv_tool = Path(sys.executable).parent / name
    path = str(venv_tool) if venv_tool.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed: run `make deploy-tools` (scripts/install-deploy-tools.sh, as root)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, body: dict | None = None, timeout: float = 60) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_http_ok(url: str, proc: subprocess.Popen, log: Path, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Poll url until it answers 200; fail early with the log's tail if proc exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"process exited with {proc.returncode} before {url} answered:\n{tail(log)}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    pytest.fail(f"{url} not ready after {timeout} s:\n{tail(log)}")


def tail(log: Path, n: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.exists() else ""


def stop(proc: subprocess.Popen, timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL if it has not exited within timeout; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def complete(base_url: str, prompt: str = "Hello", max_tokens: int = 4) -> dict:
    model = http_json(f"{base_url}/v1/models")["data"][0]["id"]
    return http_json(f"{base_url}/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens})


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`tnn serve` on 127.0.0.1 with a tiny random model (seconds to load); yields its base URL.

    What Prometheus scrapes needs the real server and its metrics, not a trained model.
    """
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")
    with ServerProcess(model_dir) as server:
        yield server.url


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Dockerfile built by buildah on the local debootstrap base, offline from deploy/wheels; its name.

    The base image stays cached in buildah's storage (and build/deploy/) for the next run; the built image
    is removed at the end of the session.
    """
    if os.geteuid() != 0:
        pytest.skip("building with buildah here needs root (its storage is /var/lib/containers)")
    buildah = require_tool("buildah")
    require_tool("debootstrap")
    name = f"localhost/tnn-serve:pytest-{os.getpid()}"
    log = tmp_path_factory.mktemp("image") / "build.log"
    steps = [
        ["scripts/build-base-image.sh", BASE_IMAGE],
        ["scripts/download-wheels.sh", sys.executable],
        [buildah, "build", "--isolation", "chroot", "--format", "docker", "--pull=never",
         "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", "PIP_NO_INDEX=1", "--tag", name, "."],
    ]  # fmt: skip
    try:
        with log.open("w") as out:
            for step in steps:
                start = time.monotonic()
                result = subprocess.run(step, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=900)
                out.write(f"### {step[0]}: exit {result.returncode} in {time.monotonic() - start:.0f} s\n")
                out.flush()
                if result.returncode != 0:
                    pytest.fail(f"{' '.join(step)} failed:\n{tail(log)}")
        yield name
    finally:
        subprocess.run([buildah, "rmi", "--force", name], capture_output=True, timeout=120)


@contextlib.contextmanager
def container(image: str) -> Iterator[str]:
    """A buildah working container of image (chroot isolation: the host's network, so 127.0.0.1 is shared)."""
    buildah = require_tool("buildah")
    ctr = subprocess.run([buildah, "from", "--pull=never", image], capture_output=True, text=True, timeout=120)
    assert ctr.returncode == 0, ctr.stderr
    name = ctr.stdout.strip()
    try:
        yield name
    finally:
        subprocess.run([buildah, "rm", name], capture_output=True, timeout=120)


def buildah_run(ctr: str, *command: str, env: dict[str, str] | None = None, volumes: tuple[str, ...] = ()) -> list[str]:
    """argv of `buildah run` for command in ctr: the image's user and environment plus env, and volumes
    (`HOST:CONTAINER[:OPTIONS]`, as `docker run -v`)."""
    argv = [require_tool("buildah"), "run", "--isolation", "chroot"]
    for key, value in (env or {}).items():
        argv += ["--env", f"{key}={value}"]
    for volume in volumes:
        argv += ["--volume", volume]
    return [*argv, ctr, "--", *command]


def container_process(buildah_pid: int) -> int:
    """PID of the command that `buildah run` (pid buildah_pid) started, below its chroot helper processes.

    Chroot isolation shares the host's PID namespace, so this is the container's main process, the one
    Docker would send STOPSIGNAL to.
    """
    pending = [buildah_pid]
    while pending:
        pid = pending.pop(0)
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            for child in map(int, children.read_text().split()):
                argv0 = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
                if not argv0.startswith(b"buildah"):
                    return child
                pending.append(child)
    raise AssertionError(f"no container process under buildah pid {buildah_pid}")


def image_config(image: str) -> dict:
    """The Docker-format config of image (Entrypoint, Env, Healthcheck, User, ExposedPorts, StopSignal)."""
    out = subprocess.run(
        [require_tool("buildah"), "inspect", "--type", "image", image],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)["Docker"]["config"]


def prometheus_query(prom_url: str, query: str) -> list[dict]:
    """Instant query through Prometheus's HTTP API; the result vector (fails on a query error)."""
    url = f"{prom_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    body = http_json(url)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture(scope="session")
def scraped(served: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping `served` with the repo's scrape config, after a few completions; its URL.

    Only the target changes (compose's tnn:8000 becomes the served 127.0.0.1 port), so this runs the config
    docker compose would use. Yields once the completions are visible through Prometheus's HTTP API.
    """
    prometheus = require_tool("prometheus")
    promtool = require_tool("promtool")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [served.removeprefix("http://")]}]
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    check = subprocess.run([promtool, "check", "config", str(config_path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr

    port = free_port()
    prom_url = f"http://127.0.0.1:{port}"
    log = workdir / "prometheus.log"
    argv = [
        prometheus,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"{prom_url}/-/ready", proc, log, timeout=60)
        # A first scrape before the requests, so rate() over the dashboard's window sees them increase
        wait_for(lambda: prometheus_query(prom_url, f'up{{job="{job["job_name"]}"}} == 1'), "target up", log)
        for i in range(SCRAPED_REQUESTS):
            complete(served, prompt=f"Request {i}", max_tokens=4)
        count = "sum(tnn_time_to_first_token_seconds_count)"
        wait_for(
            lambda: any(float(r["value"][1]) >= SCRAPED_REQUESTS for r in prometheus_query(prom_url, count)),
            f"{count} >= {SCRAPED_REQUESTS}",
            log,
        )
        yield prom_url
    finally:
        stop(proc)


def wait_for(condition: Callable[[], object], what: str, log: Path, timeout: float = 60) -> None:
    """Poll condition until truthy (Prometheus scrapes every 5 s, so a few scrapes fit in timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    pytest.fail(f"{what}: not true after {timeout} s\n{tail(log)}")
