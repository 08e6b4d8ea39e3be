#!/usr/bin/env bash
# Install onestep into .venv (idempotent). Usage: scripts/install.sh [EXTRAS]   (default: dev)
# Debian packages: the Fashion-MNIST data set, Prometheus (promtool, for tests) and Chromium (playground test);
# for dev, also a container engine for the compose end-to-end test (tests/e2e/test_compose.py): podman with runc,
# debootstrap (base images built from Debian packages where no image registry is reachable) and podman-compose.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"

missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
if [ "$extras" = "dev" ]; then
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v chromium >/dev/null || missing+=(chromium)
  # Docker users keep their engine; elsewhere podman (ONESTEP_NO_CONTAINERS=1 skips it).
  if [ -z "${ONESTEP_NO_CONTAINERS:-}" ] && ! { command -v docker >/dev/null && docker info >/dev/null 2>&1; }; then
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    dpkg -s aardvark-dns >/dev/null 2>&1 || missing+=(aardvark-dns)
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" != none ] && command -v apt-get >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: could not install Debian packages ${missing[*]} (no apt-get or no root); tests needing them skip" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# TORCH_SPEC lets a GPU user install a CUDA build of the same version first, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" scripts/install.sh
.venv/bin/pip install -q --disable-pip-version-check ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/pip install -q --disable-pip-version-check -e ".[${extras}]"

if [ "$extras" = "dev" ] && command -v podman >/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check "podman-compose>=1.1"
  # runc, not crun: crun fails on hosts with hybrid cgroups. Container rlimits within the host's own (podman's
  # defaults ask for more than such hosts allow). Only a missing system configuration is written.
  if [ "$(id -u)" = 0 ] && [ ! -e /etc/containers/containers.conf ]; then
    mkdir -p /etc/containers
    nofile="$(ulimit -Hn)"
    if [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; then nofile=65536; fi
    printf '%s\n' "# Written by onestep's scripts/install.sh: podman with runc, container rlimits within the host's." \
      "[containers]" "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=32768:32768\"]" "" \
      "[engine]" 'runtime = "runc"' > /etc/containers/containers.conf
  fi
  podman info >/dev/null 2>&1 || echo "note: podman is installed but does not run here; the compose e2e test skips" >&2
fi
