"""Produce docs/dashboard.png where Grafana cannot run: real service, real Prometheus, loopback load, rendered panels.

Starts `python -m service` on 127.0.0.1, a Prometheus (the `prometheus` binary on PATH) with the settings of
deploy/prometheus.yml and the rules of deploy/prometheus/rules.yml scraping it, sends load in phases of rising
concurrency (a few malformed requests among them, so the error panels have something to show), then draws every
dashboard query with render_dashboard.py. Loopback only; bounded in time.

    python deploy/dashboard_demo.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import render_dashboard  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def model_dir(work: Path, models_dir: Path | None, model: str) -> tuple[Path, str, str]:
    """The models folder to serve and a description of it."""
    if models_dir is not None:
        return models_dir, model, f"model dirs in {models_dir}"
    bundled = REPO / "models"
    if (bundled / model / "config.json").is_file():
        return bundled, model, f"the bundled model models/{model}"
    from training.checkpoint import save_model
    from training.configs import network_config
    from training.precond import D2OPrecond, OneStepGenerator

    kw = network_config("fmnist")
    model_type = kw.pop("model_type")
    net = OneStepGenerator(D2OPrecond(img_resolution=28, img_channels=1, label_dim=10, model_type=model_type, **kw))
    save_model(net, work / "models" / model, name=model, class_names=[f"class-{i}" for i in range(10)])
    return work / "models", model, "random weights in the `fmnist` architecture (no trained model was bundled yet)"


async def load_phase(url: str, concurrency: int, seconds: float, rng: random.Random, bad_share: float) -> dict:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    images = 0
    stop = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal images
        while time.monotonic() < stop:
            n = rng.choice((1, 1, 2, 4))
            body = {"num_images": n, "seed": rng.randrange(1 << 30), "class_labels": rng.randrange(10)}
            if rng.random() < bad_share:
                body["num_images"] = 0  # rejected by validation: 422
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/generate", json=body)
                code = r.status_code
            except httpx.HTTPError:
                code = 0
            statuses[code] = statuses.get(code, 0) + 1
            if code == 200:
                latencies.append(time.perf_counter() - t0)
                images += n
            elif code in (503, 0):
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as c:
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
    lat = sorted(latencies)
    return {
        "concurrency": concurrency,
        "statuses": dict(sorted(statuses.items())),
        "images_per_s": images / seconds,
        "p50_ms": 1e3 * statistics.median(lat) if lat else float("nan"),
        "p95_ms": 1e3 * lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    ap.add_argument("--models-dir", type=Path, default=None, help="serve these model dirs (default: models/)")
    ap.add_argument("--model", default="fmnist-d2o")
    ap.add_argument("--concurrency", default="1,4,16,48", help="one load phase per value")
    ap.add_argument("--phase-seconds", type=float, default=60.0)
    ap.add_argument("--max-queue-images", type=int, default=48, help="small, so the last phase overflows it")
    ap.add_argument("--bad-share", type=float, default=0.02, help="share of malformed requests (422)")
    ap.add_argument("--torch-threads", type=int, default=1, help="ONESTEP_TORCH_THREADS for the service")
    args = ap.parse_args(argv)
    if args.phase_seconds * len(args.concurrency.split(",")) > 1800:
        raise SystemExit("keep the demo under 30 minutes")
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        raise SystemExit("needs the `prometheus` binary on PATH (Debian package `prometheus`)")

    with tempfile.TemporaryDirectory(prefix="onestep-demo-") as tmp:
        work = Path(tmp)
        models, model, described = model_dir(work, args.models_dir, args.model)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONESTEP_")}
        env.update(ONESTEP_HOST="127.0.0.1", ONESTEP_PORT=str(port), ONESTEP_MODELS_DIR=str(models),
                   ONESTEP_DEFAULT_MODEL=model, ONESTEP_MAX_QUEUE_IMAGES=str(args.max_queue_images),
                   ONESTEP_TORCH_THREADS=str(args.torch_threads),
                   ONESTEP_LOG_LEVEL="warning")
        service_log = work / "service.log"
        procs = []
        try:
            with open(service_log, "wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", "service"], env=env, cwd=REPO, stdout=out,
                                              stderr=subprocess.STDOUT))
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/readyz", 600, procs[0], service_log)

            config = yaml.safe_load((HERE / "prometheus.yml").read_text())
            job = next(j for j in config["scrape_configs"] if j["job_name"] == "onestep")
            job.pop("dns_sd_configs")
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
            config["scrape_configs"] = [job]
            config["global"].update(scrape_interval="2s", scrape_timeout="2s", evaluation_interval="5s")
            rules = yaml.safe_load((HERE / "prometheus" / "rules.yml").read_text())
            for group in rules["groups"]:
                group["interval"] = "5s"
            (work / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
            config["rule_files"] = ["rules.yml"]
            (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
            prom_port = free_port()
            prom_log = work / "prometheus.log"
            with open(prom_log, "wb") as out:
                procs.append(subprocess.Popen(
                    [prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                     f"--web.listen-address=127.0.0.1:{prom_port}"], cwd=work, stdout=out, stderr=subprocess.STDOUT))
            prom_url = f"http://127.0.0.1:{prom_port}"
            wait_http(prom_url + "/-/ready", 60, procs[1], prom_log)
            time.sleep(6)  # a few idle scrapes first

            rng = random.Random(0)
            started = time.monotonic()
            phases = []
            for c in (int(x) for x in args.concurrency.split(",")):
                phase = asyncio.run(load_phase(url, c, args.phase_seconds, rng, args.bad_share))
                phases.append(phase)
                print(f"concurrency {c:3d}: {phase['images_per_s']:7.1f} images/s  p50 {phase['p50_ms']:7.1f} ms  "
                      f"p95 {phase['p95_ms']:7.1f} ms  statuses {phase['statuses']}", flush=True)
            time.sleep(10)
            minutes = (time.monotonic() - started) / 60 + 0.3
            render_dashboard.render(prom_url, render_dashboard.DEFAULT_DASHBOARD, args.out, minutes=round(minutes, 1),
                                    step=2, rate_interval="20s")
            print(f"served {described}; wrote {args.out}")
            cpu = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()) if Path(
                "/proc/cpuinfo").exists() else []
            print(f"machine: {os.cpu_count()} CPUs{(' (' + cpu[0] + ')') if cpu else ''}; load shared with the "
                  "load generator and anything else running")
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
