"""The image's own steps, run outside Docker (no engine here): read the root Dockerfile, run its pip steps into a
fresh virtual environment under a temporary root, then start the service with the image's CMD and ENV and get 200
from /readyz and /generate.

Container paths (/opt/venv, /src, /app) are mapped under the temporary root, like a chroot. System steps that need
root inside the image (groupadd, useradd, apt-get) are not run here; their effect (a non-root USER) is checked by
test_dockerfile.py. The one build argument changed is TORCH_INDEX_URL, set empty as `docker build --build-arg
TORCH_INDEX_URL=` would: pip then uses its configured index. pip's cache is reused, as the cache mount does.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_tiny_generator_dir
from tests.deploy.conftest import REPO, TINY_MODEL, start_service
from tests.deploy.dockerfile import DockerIgnore, Instruction, env_pairs, expand, parse

pytestmark = pytest.mark.slow

BUILD_ARGS = {"TORCH_INDEX_URL": ""}
RUNNABLE = {"pip", "python", "python3"}  # RUN steps executed here; the rest change the image's system only


@dataclass
class Image:
    """The result of running a Dockerfile's steps under ``root``."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class StepRunner:
    def __init__(self, dockerfile: Path, root: Path, build_args: dict[str, str], log: Path):
        self.df = parse(dockerfile)
        self.context = dockerfile.parent
        self.ignore = DockerIgnore(self.context / ".dockerignore")
        self.root = root
        self.build_args = build_args
        self.log = log
        prefixes = set()
        for stage in self.df.stages:
            for ins in stage.instructions:
                if ins.cmd == "WORKDIR":
                    prefixes.add(ins.args)
                elif ins.cmd == "COPY":
                    *sources, dest = ins.args.split()
                    prefixes.update(p for p in [dest, *(sources if "from" in ins.flags else [])] if p.startswith("/"))
        tops = sorted({"/" + p.strip("/").split("/")[0] for p in prefixes}, key=len, reverse=True)
        self._container_path = re.compile(r"(?<![\w.:/-])(" + "|".join(map(re.escape, tops)) + r")(?=/|\b|$)")
        # The base image's interpreter: this one's base Python under the name `python`, first on PATH.
        self.base_bin = root / "base-bin"
        self.base_bin.mkdir(parents=True)
        base_python = Path(getattr(sys, "_base_executable", sys.executable))
        (self.base_bin / "python").symlink_to(base_python)
        (self.base_bin / "python3").symlink_to(base_python)

    def remap(self, text: str) -> str:
        return self._container_path.sub(lambda m: str(self.root) + m.group(1), text)

    def host(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def base_env(self) -> dict[str, str]:
        drop = ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH", "PIP_NO_CACHE_DIR", "PIP_REQUIRE_VIRTUALENV")
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ONESTEP_")}
        env["PATH"] = f"{self.base_bin}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def run(self) -> Image:
        image = Image(self.root)
        for stage in self.df.stages:
            env, args = self.base_env(), {}
            cwd = self.root
            for ins in stage.instructions:
                scope = {**env, **args}
                if ins.cmd == "ARG":
                    name, eq, default = ins.args.partition("=")
                    default = default if eq else (self.df.global_args.get(name) or "")
                    args[name] = self.build_args.get(name, expand(default, scope))
                elif ins.cmd == "ENV":
                    env.update((k, self.remap(v)) for k, v in env_pairs(ins.args, scope))
                elif ins.cmd == "WORKDIR":
                    cwd = self.host(expand(ins.args, scope))
                    cwd.mkdir(parents=True, exist_ok=True)
                elif ins.cmd == "COPY":
                    self.copy(ins, cwd)
                elif ins.cmd == "RUN":
                    self.run_step(ins, {**env, **args}, cwd, image)
                elif ins.cmd == "CMD":
                    image.cmd = ins.exec_form() or ["/bin/sh", "-c", ins.args]
                elif ins.cmd == "HEALTHCHECK":
                    image.healthcheck = ins.exec_form() or []
            image.env, image.workdir = env, cwd
        return image

    def copy(self, ins: Instruction, cwd: Path) -> None:
        *sources, dest = ins.args.split()
        target = self.host(dest) if dest.startswith("/") else cwd / dest
        for source in sources:
            if "from" in ins.flags:
                src = self.host(source)
                if src.resolve() != target.resolve():
                    shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
                continue
            src = self.context / source
            if not src.exists() and source.rstrip("/") == "models":
                # The bundled model arrives with its own issue; until then `docker build` stops here, while this
                # test goes on with an empty folder and mounts a tiny model below.
                warnings.warn("models/ is missing: `docker build` fails until the bundled model is committed",
                              stacklevel=1)
                target.mkdir(parents=True, exist_ok=True)
                continue
            if not src.exists():
                pytest.fail(f"{ins.line}: COPY {source}: not in the build context (the Docker build would fail)")
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True, ignore=self._ignored_in(src))
            else:
                dest_path = target / src.name if dest.endswith("/") or len(sources) > 1 else target
                dest_path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest_path)

    def _ignored_in(self, src: Path):
        def ignore(directory: str, names: list[str]) -> set[str]:
            rel = Path(directory).relative_to(self.context)
            return {n for n in names if self.ignore.ignored((rel / n).as_posix())}

        return ignore

    def run_step(self, ins: Instruction, env: dict[str, str], cwd: Path, image: Image) -> None:
        command = self.remap(ins.args)
        if command.split()[0] not in RUNNABLE:
            image.skipped.append(ins.args)
            return
        image.ran.append(command)
        with open(self.log, "a") as out:
            out.write(f"\n$ {command}\n")
            out.flush()
            r = subprocess.run(["/bin/sh", "-c", command], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                               timeout=900)
        if r.returncode != 0:
            pytest.fail(f"Dockerfile line {ins.line} failed ({r.returncode}): {command}\n"
                        f"{self.log.read_text()[-4000:]}")


def test_image_steps_install_and_serve(tmp_path):
    root = tmp_path / "root"
    runner = StepRunner(REPO / "Dockerfile", root, BUILD_ARGS, tmp_path / "build.log")
    image = runner.run()

    # The build ran pip for torch and for the project; the system steps were left to Docker.
    assert any(re.search(r"pip install .*torch==", c) for c in image.ran), image.ran
    assert any('".[serve]"' in c for c in image.ran), image.ran
    assert any(s.startswith("groupadd") for s in image.skipped)
    # The project is installed in the venv (not run from the sources): the runtime stage has no sources to run.
    venv = Path(image.env["VIRTUAL_ENV"])
    assert venv.is_relative_to(root)
    installed = list(venv.glob("lib/python3*/site-packages/service/main.py"))
    assert installed, "service is not installed in the image's venv"
    assert not (image.workdir / "service").exists()

    env = dict(image.env)
    bundled = Path(env["ONESTEP_MODELS_DIR"]) / env["ONESTEP_DEFAULT_MODEL"] / "config.json"
    if not bundled.is_file():
        # No bundled model in this checkout yet: mount one, as `docker run -v ...:/app/models` would.
        models = tmp_path / "models"
        make_tiny_generator_dir(models / TINY_MODEL)
        env.update(ONESTEP_MODELS_DIR=str(models), ONESTEP_DEFAULT_MODEL=TINY_MODEL)
    executable = shutil.which(image.cmd[0], path=env["PATH"])
    assert executable and Path(executable).is_relative_to(venv), f"{image.cmd[0]} resolves to {executable}"

    service = start_service(env, tmp_path / "service.log", argv=[executable, *image.cmd[1:]], cwd=image.workdir,
                            timeout=420)
    try:
        assert httpx.get(service.url + "/readyz", timeout=10).status_code == 200
        r = httpx.post(service.url + "/generate", json={"num_images": 2, "seed": 3}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["images"]) == 2 and body["images"][0]["media_type"] == "image/png"
        assert body["model"] == env["ONESTEP_DEFAULT_MODEL"]
        # The image's HEALTHCHECK command passes against the running service.
        health_env = {**env, "ONESTEP_PORT": service.url.rsplit(":", 1)[1]}
        hc = [shutil.which(image.healthcheck[0], path=env["PATH"]), *image.healthcheck[1:]]
        assert subprocess.run(hc, env=health_env, timeout=30).returncode == 0
    finally:
        service.stop()
