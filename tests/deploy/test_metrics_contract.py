"""The dashboard, the rules and the autoscaler read metrics the running service really exports.

The service runs for real (uvicorn on 127.0.0.1, a tiny model, one /generate done); a real Prometheus scrapes it and
answers every dashboard query and recording rule.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.conftest import DEPLOY, start_prometheus
from tests.deploy.promql import metric_names

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "onestep.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
ADAPTER = DEPLOY / "k8s" / "monitoring" / "prometheus-adapter-values.yaml"
HPA = DEPLOY / "k8s" / "base" / "hpa.yaml"
PROMETHEUS_BUILTINS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def dashboard_panels() -> list[dict]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        out.extend(p.get("panels", []) if p.get("type") == "row" else [p])
    return out


def dashboard_exprs() -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    for var in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        exprs.append(query.replace("label_values(", "").split(",")[0])  # label_values(metric, label)
    return exprs


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def recorded_names() -> set[str]:
    return {r["record"] for r in rules() if "record" in r}


def scraped_names(url: str) -> set[str]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{model=~"$model",status=~"2.."}[$__rate_interval]))', {"a_bucket"}),
        ("histogram_quantile(0.95, sum without (pod) (rate(b[5m]))) > on (model) group_left (x) c:d:e", {"b", "c:d:e"}),
        ('sum(rate(x_count{le="+Inf"}[1m] offset 5m)) / ignoring (status) y', {"x_count", "y"}),
        ('up{job="onestep"} == 0 and bool z', {"up", "z"}),
    ],
)
def test_promql_name_extraction(expr, names):
    assert metric_names(expr) == names


def test_dashboard_has_the_panels_the_issue_asks_for():
    titles = " | ".join(p["title"].lower() for p in dashboard_panels())
    for words in ("request rate", "latency", "queue wait", "batch size distribution", "images generated per second",
                  "rejections", "error"):
        assert words in titles, words
    provisioned = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    for p in dashboard_panels():
        assert p["datasource"]["uid"] == uid, p["title"]
        assert all(t["datasource"]["uid"] == uid for t in p["targets"])
    exprs = " ".join(dashboard_exprs())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(onestep_request_duration_seconds_bucket" in exprs


def test_dashboard_metrics_exist_in_live_scrape(live_service):
    scraped = scraped_names(live_service.url)
    used = set().union(*(metric_names(e) for e in dashboard_exprs()))
    assert used, "no metric found in the dashboard"
    missing = used - scraped
    assert not missing, f"dashboard uses metrics the service does not export: {sorted(missing)}"


def test_rule_metrics_exist_in_live_scrape(live_service):
    scraped = scraped_names(live_service.url)
    used = set().union(*(metric_names(r["expr"]) for r in rules()))
    missing = used - scraped - recorded_names() - PROMETHEUS_BUILTINS
    assert not missing, f"rules use metrics the service does not export: {sorted(missing)}"
    # Every raw metric of the service's contract is used somewhere (dashboard or rules).
    dashboard = set().union(*(metric_names(e) for e in dashboard_exprs()))
    families = {n.removesuffix(s) for n in used | dashboard for s in ("_bucket", "_count", "_sum", "_total") if
                n.endswith(s)} | used | dashboard
    for name in ("onestep_request_duration_seconds", "onestep_queue_wait_seconds", "onestep_batch_inference_seconds",
                 "onestep_batch_size", "onestep_encode_seconds", "onestep_images_generated", "onestep_queue_depth",
                 "onestep_rejected_requests", "onestep_model_ready"):
        assert name in families, name


def test_autoscaler_metric_exists_in_live_scrape(live_service):
    scraped = scraped_names(live_service.url)
    adapter = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    exposed = set()
    for rule in adapter:
        series = metric_names(rule["seriesQuery"])
        assert series <= scraped, series - scraped
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        exposed.add(rule["name"]["as"])
    hpa = yaml.safe_load(HPA.read_text())
    custom = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert custom == ["onestep_queue_depth"]
    assert set(custom) <= exposed


@pytest.mark.slow
def test_real_prometheus_answers_every_dashboard_query_and_rule(live_service, tmp_path):
    prom = start_prometheus(tmp_path / "prom", live_service.url.removeprefix("http://"))
    try:
        deadline = time.monotonic() + 30
        while not prom.query('up{job="onestep"} == 1'):  # scraped once before the traffic, so rates see it
            assert time.monotonic() < deadline, prom.log.read_text()[-2000:]
            time.sleep(0.5)
        for seed in range(6):
            r = httpx.post(live_service.url + "/generate", json={"num_images": 1 + seed % 3, "seed": seed}, timeout=60)
            assert r.status_code == 200
            time.sleep(0.4)
        queries = {e: substitute(e) for e in dashboard_exprs()} | {n: n for n in recorded_names()}
        pending = dict(queries)
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for name, q in list(pending.items()):
                if prom.query(q):  # raises if Prometheus rejects the query
                    del pending[name]
            time.sleep(1)
        assert not pending, f"no series for: {sorted(pending)}\n{prom.log.read_text()[-2000:]}"
        groups = httpx.get(prom.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        assert not bad, bad
        assert sum(len(g["rules"]) for g in groups) == len(rules())
        # The recorded request latency p50 is a real, positive number of seconds once a scrape saw the traffic.
        p50 = float("nan")
        while not 0 < p50 < 60 and time.monotonic() < deadline:
            p50 = float(prom.query("model:onestep_request_duration_seconds:p50_1m")[0]["value"][1])
            time.sleep(0.5)
        assert 0 < p50 < 60

        if importlib.util.find_spec("matplotlib") is not None:
            render = _load_renderer()
            out = tmp_path / "dashboard.png"
            render.render(prom.url, DASHBOARD, out, minutes=1, step=1, rate_interval="10s")
            assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        prom.stop()


def substitute(expr: str) -> str:
    return expr.replace("$__rate_interval", "10s").replace("$model", ".*")


def _load_renderer():
    spec = importlib.util.spec_from_file_location("render_dashboard", DEPLOY / "render_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
