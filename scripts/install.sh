#!/usr/bin/env bash
# Install onestep into .venv (idempotent). Usage: scripts/install.sh [EXTRAS]   (default: dev)
# Debian packages: the Fashion-MNIST data set, Prometheus (promtool, for tests) and Chromium (playground test).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev}"

missing=()
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)
if [ "$extras" = "dev" ]; then
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v chromium >/dev/null || missing+=(chromium)
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
