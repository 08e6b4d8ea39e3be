"""deploy/prometheus.yml and deploy/prometheus/rules.yml, checked and unit-tested by promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO

RULES = DEPLOY / "prometheus" / "rules.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return binary


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_compose_prometheus_config_is_valid(promtool):
    r = run(promtool, "check", "config", "deploy/prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr  # the rules path resolves from the config's folder


def test_rules_are_valid(promtool):
    r = run(promtool, "check", "rules", str(RULES.relative_to(REPO)))
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_unit_tests_pass(promtool):
    """Alerts fire (and stay silent) on synthetic series as rules.test.yml expects; recording rules compute."""
    r = run(promtool, "test", "rules", "deploy/prometheus/rules.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_cover_the_issue(promtool):
    groups = yaml.safe_load(RULES.read_text())["groups"]
    records = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    for metric in ("onestep_request_duration_seconds", "onestep_queue_wait_seconds"):
        for q in ("p50", "p95", "p99"):
            assert f"model:{metric}:{q}_1m" in records
    assert {"OnestepHighErrorRate", "OnestepHighLatency", "OnestepQueueSaturated"} <= set(alerts)
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_a_broken_rule_is_caught(promtool, tmp_path):
    """The check can fail: a rule with a PromQL syntax error is rejected."""
    bad = yaml.safe_load(RULES.read_text())
    bad["groups"][0]["rules"][0]["expr"] = "histogram_quantile(0.5, sum by (le) (rate(x_bucket[1m]))"
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
    r = run(promtool, "check", "rules", str(tmp_path / "bad.yml"))
    assert r.returncode != 0


def test_kubernetes_scrape_config_is_valid(promtool, tmp_path):
    path = DEPLOY / "k8s" / "monitoring" / "prometheus-scrape.yml"
    r = run(promtool, "check", "config", str(path.relative_to(REPO)))
    if r.returncode != 0 and "kubernetes_sd_configs not found" in r.stdout + r.stderr:
        # Debian builds Prometheus without Kubernetes service discovery. Check everything else (relabelling,
        # rule files) with the discovery swapped for a static target.
        config = yaml.safe_load(path.read_text())
        for job in config["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
            job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
        config["rule_files"] = [str((path.parent / f).resolve()) for f in config["rule_files"]]
        (tmp_path / "scrape.yml").write_text(yaml.safe_dump(config))
        r = run(promtool, "check", "config", str(tmp_path / "scrape.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr
