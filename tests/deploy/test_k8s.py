"""deploy/k8s: schema-valid manifests (kubernetes-validate ships the Kubernetes schemas: no download), overlays that
render with kustomize, and the wiring between them (probes, selectors, GPU requests, settings)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import DEPLOY
from tests.deploy.settings_env import check_settings

K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes release we claim to run on, and the newest the validator knows.
VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate(resource: dict, where: str) -> None:
    for version in VERSIONS:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            kind = resource["kind"]
            raise AssertionError(f"{where}: {kind} invalid for Kubernetes {version}: {path}: {e.message}") from e
        except kubernetes_validate.SchemaNotFoundError as e:
            kind = f"{resource['kind']} {resource['apiVersion']}"
            raise AssertionError(f"{where}: no schema for {kind}: {e.message}") from e


def base_resources() -> list[dict]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [d for f in kustomization["resources"] for d in docs(BASE / f)]


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    if kubectl:
        argv = [kubectl, "kustomize", str(K8S / "overlays" / overlay)]
    elif kustomize:
        argv = [kustomize, "build", str(K8S / "overlays" / overlay)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed to render the overlays")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def by_kind(resources: list[dict], kind: str) -> dict:
    found = [r for r in resources if r["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def test_kustomization_lists_every_base_manifest():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_base_manifests_are_schema_valid():
    resources = base_resources()
    assert {r["kind"] for r in resources} == {
        "Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for r in resources:
        validate(r, "deploy/k8s/base")


def test_the_validator_can_fail():
    deployment = by_kind(base_resources(), "Deployment")
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(AssertionError, match="replicas"):
        validate(bad, "test")
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo: strict mode rejects it
    with pytest.raises(AssertionError):
        validate(bad, "test")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_to_valid_manifests(overlay):
    resources = render(overlay)
    for r in resources:
        validate(r, f"deploy/k8s/overlays/{overlay}")
    assert all(r["metadata"].get("namespace") == "onestep" for r in resources if r["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ports_and_selectors_agree(overlay, monkeypatch):
    resources = render(overlay)
    deployment = by_kind(resources, "Deployment")
    config = by_kind(resources, "ConfigMap")
    pod = deployment["spec"]["template"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "onestep")
    port = next(p for p in container["ports"] if p["name"] == "http")
    settings = check_settings(config["data"], monkeypatch, f"{overlay} ConfigMap")
    assert port["containerPort"] == settings.port == 8000
    assert settings.host == "0.0.0.0"
    assert settings.workers == 1
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/healthz", "/readyz", "/metrics"} <= set(settings.auth_exempt_paths)
    assert container["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # The pod may drain in-flight requests before it is killed.
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > settings.graceful_timeout_s + pre_stop

    labels = pod["metadata"]["labels"]
    service = by_kind(resources, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = by_kind(resources, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = by_kind(resources, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(settings.port)


def test_cpu_overlay_scales_on_cpu_and_queue_depth():
    resources = render("cpu")
    hpa = by_kind(resources, "HorizontalPodAutoscaler")
    kinds = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    assert kinds["Pods"]["pods"]["metric"]["name"] == "onestep_queue_depth"
    container = by_kind(resources, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":cpu")
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_gpu_overlay_requests_a_gpu_and_builds_the_engine_on_it(monkeypatch):
    resources = render("gpu")
    deployment = by_kind(resources, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    main = next(c for c in spec["containers"] if c["name"] == "onestep")
    assert main["image"].endswith(":gpu")
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    init = spec["initContainers"][0]
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "python -m exporters tensorrt" in " ".join(init["command"])
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    settings = check_settings(by_kind(resources, "ConfigMap")["data"], monkeypatch, "gpu ConfigMap")
    assert settings.backend == "tensorrt"
    # The engine's batch profile covers every batch the batcher may form.
    profile = re.search(r"--profile (\d+):(\d+):(\d+)", " ".join(init["command"]))
    assert profile and int(profile.group(1)) == 1 and int(profile.group(3)) >= settings.max_batch_size
    models = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert models[str(settings.models_dir)] == "models"
    assert {m["mountPath"]: m["name"] for m in init["volumeMounts"]}[str(settings.models_dir)] == "models"
    hpa = by_kind(resources, "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]
