"""compose.yaml: schema-valid (compose-spec), wired to files that exist, hardened, with no default password.

tests/e2e/test_compose.py builds and runs the stack for real where a container engine runs."""

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

STACK = REPO / "compose.yaml"
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
    r = validate(STACK)
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
    r = subprocess.run([docker, "compose", "-f", str(STACK), "config", "--quiet"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_one_self_contained_file():
    """No `include`: podman-compose resolves an included file's relative paths from the root file's folder, which
    put the build context outside the repository. One file at the root works the same under both engines."""
    assert "include" not in stack()
    assert not (DEPLOY / "docker-compose.yml").exists()


def test_services_ports_and_build():
    services = stack()["services"]
    assert set(services) == {"onestep", "prometheus", "grafana"}
    onestep = services["onestep"]
    assert (REPO / onestep["build"]["context"]).resolve() == REPO
    assert (REPO / interpolate(onestep["build"]["dockerfile"])).is_file()
    assert interpolate(onestep["ports"][0]).endswith(":8000")
    assert "/readyz" in " ".join(onestep["healthcheck"]["test"])
    for name in ("prometheus", "grafana"):
        image = interpolate(services[name]["image"])
        assert ":" in image and not image.endswith(":latest"), "pin the image"


def test_service_environment_is_valid_settings(monkeypatch):
    env = {k: interpolate(str(v)) for k, v in stack()["services"]["onestep"]["environment"].items()}
    settings = check_settings(env, monkeypatch, "compose.yaml")
    assert settings.workers == 1
    assert "/readyz" in settings.auth_exempt_paths and "/metrics" in settings.auth_exempt_paths


def bind_mounts(service: dict) -> dict[str, Path]:
    """container path -> host path (relative paths resolve from the compose file's folder)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (REPO / source).resolve()
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


def test_hardened_and_no_default_password():
    services = stack()["services"]
    onestep = services["onestep"]
    assert onestep["read_only"] is True and "/tmp" in onestep["tmpfs"]
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
    assert services["prometheus"]["read_only"] is True
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    # The grace period outlasts the service's own drain time, so `down` never kills a request mid-flight.
    grace = int(onestep["stop_grace_period"].rstrip("s"))
    assert grace > float(interpolate(onestep["environment"]["ONESTEP_GRACEFUL_TIMEOUT_S"]))


def test_the_wrapper_and_compose_agree_on_images():
    """scripts/compose.sh tries to pull the images compose.yaml names before building local stand-ins."""
    script = (REPO / "scripts" / "compose.sh").read_text()
    services = stack()["services"]
    for name, var in (("prometheus", "PROMETHEUS_DEFAULT"), ("grafana", "GRAFANA_DEFAULT")):
        image = interpolate(services[name]["image"])
        assert re.search(rf"^{var}=docker\.io/(library/)?{re.escape(image)}$", script, re.M), (name, image)
    python = interpolate(services["onestep"]["build"]["args"]["PYTHON_IMAGE"])
    assert re.search(rf"^PYTHON_DEFAULT=docker\.io/library/{re.escape(python)}$", script, re.M)
