"""docker-compose.yml (and the GPU override) parsed and checked, then validated by a real compose CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import REPO, require_tool

pytestmark = pytest.mark.deploy

COMPOSE = REPO / "docker-compose.yml"
GPU_OVERRIDE = REPO / "docker-compose.gpu.yml"


def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def bind_mounts(service: dict) -> dict[str, str]:
    """container path -> host path, for the service's bind mounts (host paths start with ./)."""
    mounts = (volume.split(":") for volume in service.get("volumes", []))
    return {target: source for source, target, *_ in mounts if source.startswith("./")}


def container_ports(service: dict) -> set[int]:
    return {int(port.split(":")[-1]) for port in service["ports"]}


def test_services_ports_and_loopback_default() -> None:
    svc = services()
    assert set(svc) == {"tnn", "prometheus", "grafana"}
    assert container_ports(svc["tnn"]) == {8000}
    assert container_ports(svc["prometheus"]) == {9090}
    assert container_ports(svc["grafana"]) == {3000}
    for service in svc.values():
        # Published on the host's loopback unless TNN_PUBLISH_ADDR says otherwise
        assert all(port.startswith("${TNN_PUBLISH_ADDR:-127.0.0.1}:") for port in service["ports"])


def test_server_builds_this_repo_and_shuts_down_gracefully() -> None:
    tnn = services()["tnn"]
    assert tnn["build"]["context"] == "."
    assert tnn["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert tnn["init"] is True  # SIGTERM forwarded to tnn serve, zombies reaped
    assert int(tnn["stop_grace_period"].removesuffix("s")) >= 30  # time to drain running requests
    # Its healthcheck is the image's HEALTHCHECK on /health: compose must not override or disable it
    assert "healthcheck" not in tnn
    assert "HEALTHCHECK" in (REPO / "Dockerfile").read_text()


def test_bind_mounts_exist_and_match_the_configs_that_use_them() -> None:
    svc = services()
    for service in svc.values():
        for source in bind_mounts(service).values():
            assert (REPO / source).exists(), source

    prometheus = svc["prometheus"]
    (config_flag,) = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    assert bind_mounts(prometheus)[config_flag.split("=", 1)[1]] == "./deploy/prometheus/prometheus.yml"

    grafana = svc["grafana"]
    grafana_mounts = bind_mounts(grafana)
    assert grafana_mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/tnn-serve.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert (REPO / grafana_mounts[dashboards_dir] / home.relative_to(dashboards_dir)).is_file()

    named = {volume.split(":")[0] for s in svc.values() for volume in s.get("volumes", [])} - {
        source for s in svc.values() for source in bind_mounts(s).values()
    }
    assert named == set(yaml.safe_load(COMPOSE.read_text())["volumes"])


def test_healthchecks_and_startup_order() -> None:
    svc = services()
    for name in ("prometheus", "grafana"):
        assert svc[name]["healthcheck"]["test"][0] == "CMD"
    assert svc["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_datasource_points_at_the_prometheus_service() -> None:
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == f"http://prometheus:{min(container_ports(services()['prometheus']))}"


def compose_config(*files: Path) -> subprocess.CompletedProcess:
    compose = require_tool("docker-compose")
    argv = [compose, *(arg for path in files for arg in ("-f", str(path))), "config"]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_compose_cli_validates_the_file() -> None:
    result = compose_config(COMPOSE)
    assert result.returncode == 0, result.stderr
    assert set(yaml.safe_load(result.stdout)["services"]) == {"tnn", "prometheus", "grafana"}


def test_compose_cli_rejects_an_invalid_file(tmp_path: Path) -> None:
    """Control: the validator really checks the schema (a misspelt service key must fail)."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periode:"))
    result = compose_config(broken)
    assert result.returncode != 0
    assert "stop_grace_periode" in result.stderr


def test_gpu_override_reserves_an_nvidia_device() -> None:
    result = compose_config(COMPOSE, GPU_OVERRIDE)
    assert result.returncode == 0, result.stderr
    tnn = yaml.safe_load(result.stdout)["services"]["tnn"]
    (device,) = tnn["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert tnn["environment"]["TNN_DEVICE"] == "cuda"
    assert tnn["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    # The override changes the device, not the rest of the server's service
    assert tnn["ports"] and tnn["init"] is True
