"""deploy/k8s: every overlay renders with kustomize (kubectl's) and validates against the Kubernetes schemas.

Beyond the schemas, the checks tie the manifests to what the server does: probe paths, the drain budget, the
autoscaling metric the server exports, selectors that select, and the GPU overlay's resources. CRDs that the
schemas do not cover (ServiceMonitor) are checked field by field.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import REPO

pytestmark = pytest.mark.deploy

K8S = REPO / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.32.0"
CRD_KINDS = {"ServiceMonitor"}


def render(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) not installed: run `make deploy-tools`")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True)
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def server_container(docs: list[dict]) -> dict:
    pod = by_kind(docs, "Deployment", "tnn-serve")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "tnn-serve")


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(overlay: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="run `make deploy-tools`")
    docs = render(K8S / "overlays" / overlay)
    kinds = {d["kind"] for d in docs}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "Ingress"}
    assert expected <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any schema error
        assert doc["metadata"].get("namespace", "tnn") == "tnn"


def test_a_broken_manifest_is_rejected() -> None:
    """The validator really checks: a probe port of the wrong type fails."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="run `make deploy-tools`")
    deployment = by_kind(render(K8S / "overlays" / "cpu"), "Deployment", "tnn-serve")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = {"bad": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_probes_drain_and_security() -> None:
    docs = render(K8S / "overlays" / "cpu")
    pod = by_kind(docs, "Deployment", "tnn-serve")["spec"]["template"]["spec"]
    container = server_container(docs)
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health" and startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # the grace period covers the preStop wait plus the server's whole drain
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env_of(container)["TNN_DRAIN_TIMEOUT"]["value"])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000  # the image's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}
    assert "memory" in container["resources"]["limits"] and "cpu" in container["resources"]["requests"]


def test_selectors_select_and_the_balancer_finds_the_pods() -> None:
    docs = render(K8S / "overlays" / "cpu")
    labels = by_kind(docs, "Deployment", "tnn-serve")["spec"]["template"]["metadata"]["labels"]
    for kind, name in [("Service", "tnn-serve"), ("Service", "tnn-serve-headless")]:
        assert by_kind(docs, kind, name)["spec"]["selector"].items() <= labels.items()
    assert by_kind(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert by_kind(docs, "Service", "tnn-serve-headless")["spec"]["clusterIP"] == "None"

    monitor = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    monitored = [
        d
        for d in docs
        if d["kind"] == "Service"
        and monitor["spec"]["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items()
    ]
    assert [d["metadata"]["name"] for d in monitored] == ["tnn-serve"]  # each pod scraped once
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in monitored[0]["spec"]["ports"]}

    # the load balancer resolves the headless Service and ships the same haproxy.cfg as the local stack
    lb = by_kind(docs, "Deployment", "tnn-lb")["spec"]["template"]["spec"]["containers"][0]
    assert env_of(lb)["TNN_UPSTREAM_DNS"]["value"].startswith("tnn-serve-headless.$(POD_NAMESPACE).svc")
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("tnn-lb-config"))
    assert config["data"]["haproxy.cfg"] == (REPO / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    ingress = by_kind(docs, "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "tnn-lb"


def test_autoscaling_on_a_metric_the_server_exports() -> None:
    from tnn.server.metrics import Metrics

    docs = render(K8S / "overlays" / "cpu")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tnn-serve"
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    exported = {m.name for m in Metrics().registry.collect()}
    assert metric in exported
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    rule = adapter["rules"]["custom"][0]
    assert rule["seriesQuery"].startswith(metric + "{") and rule["name"]["as"] == metric


def test_gpu_overlay_requests_a_gpu() -> None:
    docs = render(K8S / "overlays" / "gpu")
    container = server_container(docs)
    pod = by_kind(docs, "Deployment", "tnn-serve")["spec"]["template"]["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(container)["TNN_DEVICE"]["value"] == "cuda"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    # the patch keeps what the base set
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"


def test_model_from_a_volume_component(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "base", overlay)],
                "components": [os.path.relpath(K8S / "components" / "model-pvc", overlay)],
            }
        )
    )
    docs = render(overlay)
    container = server_container(docs)
    assert env_of(container)["TNN_MODEL_DIR"]["value"].startswith("/models/")
    assert any(m["mountPath"] == "/models" and m["readOnly"] for m in container["volumeMounts"])
    assert by_kind(docs, "PersistentVolumeClaim")["metadata"]["name"] == "tnn-models"
