"""compose.yaml and deploy/docker-compose.yml: schema-valid (compose-spec), and wired to files that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO
from tests.deploy.settings_env import check_settings

ROOT_COMPOSE = REPO / "compose.yaml"
STACK = DEPLOY / "docker-compose.yml"
_DEFAULT = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def validate(*files: Path) -> subprocess.CompletedProcess:
    """check-jsonschema with the compose-spec schema it ships (offline: no schema download)."""
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", *map(str, files)],
        capture_output=True, text=True, timeout=60,
    )


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment."""
    return _DEFAULT.sub(lambda m: m.group(2) or "", value)


def stack() -> dict:
    return yaml.safe_load(STACK.read_text())


def test_compose_files_match_the_compose_spec():
    r = validate(ROOT_COMPOSE, STACK)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_schema_check_can_fail(tmp_path):
    bad = stack()
    bad["services"]["prometheus"]["restart_policy"] = "always"  # not a compose key
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
    r = validate(tmp_path / "bad.yml")
    assert r.returncode != 0
    assert "restart_policy" in r.stdout + r.stderr
    bad = stack()
    bad["services"]["onestep"]["ports"] = {"http": 8000}  # a list is required
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
    assert validate(tmp_path / "bad.yml").returncode != 0


def test_docker_compose_config_accepts_it():
    """`docker compose config` parses and validates without an engine, where the compose plugin is installed."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the Docker compose plugin is not installed (the schema check above still runs)")
    r = subprocess.run([docker, "compose", "-f", str(ROOT_COMPOSE), "config", "--quiet"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_root_compose_includes_the_stack():
    root = yaml.safe_load(ROOT_COMPOSE.read_text())
    included = [REPO / (i if isinstance(i, str) else i["path"]) for i in root["include"]]
    assert STACK in included


def test_services_ports_and_build():
    services = stack()["services"]
    assert set(services) == {"onestep", "prometheus", "grafana"}
    onestep = services["onestep"]
    assert (DEPLOY / onestep["build"]["context"]).resolve() == REPO
    assert (REPO / interpolate(onestep["build"]["dockerfile"])).is_file()
    assert interpolate(onestep["ports"][0]).endswith(":8000")
    assert "/readyz" in " ".join(onestep["healthcheck"]["test"])
    for name in ("prometheus", "grafana"):
        assert ":" in services[name]["image"] and not services[name]["image"].endswith(":latest"), "pin the image"


def test_service_environment_is_valid_settings(monkeypatch):
    env = {k: interpolate(str(v)) for k, v in stack()["services"]["onestep"]["environment"].items()}
    settings = check_settings(env, monkeypatch, "deploy/docker-compose.yml")
    assert settings.workers == 1
    assert "/readyz" in settings.auth_exempt_paths and "/metrics" in settings.auth_exempt_paths


def bind_mounts(service: dict) -> dict[str, Path]:
    """container path -> host path (relative paths resolve from deploy/, as compose does)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (DEPLOY / source).resolve()
    return out


def test_bind_mounts_exist_and_prometheus_finds_its_rules():
    services = stack()["services"]
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
    mounts = bind_mounts(services["prometheus"])
    config_arg = next(a for a in services["prometheus"]["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    assert mounts[config_path] == DEPLOY / "prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:
        in_container = str(Path(config_path).parent / rule_file)
        assert in_container in mounts, f"{in_container} is not mounted into the Prometheus container"
        assert mounts[in_container] == (DEPLOY / rule_file).resolve()
    targets = config["scrape_configs"][0]["dns_sd_configs"][0]
    assert targets["names"] == ["onestep"] and targets["port"] == 8000


def test_grafana_provisioning_points_at_mounted_files():
    grafana = stack()["services"]["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/onestep.yml").read_text())["providers"][0]
    dashboards = mounts[provider["options"]["path"]]
    assert (dashboards / "onestep.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert mounts[str(Path(home).parent)] / Path(home).name == dashboards / "onestep.json"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
