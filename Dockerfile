# syntax=docker/dockerfile:1.7
# onestep serving image, CPU: the CPU build of torch, ONNX Runtime serving a model.onnx exported at build time.
# GPU variant: Dockerfile.gpu (CUDA base, TensorRT). See docs/deploy.md.
#
#   docker build -t onestep:cpu .
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp onestep:cpu
#
# Build arguments:
#   PYTHON_IMAGE     base image of both stages: Debian bookworm with CPython 3.11 as `python` (python:3.11-slim-bookworm,
#                    or a base built from Debian packages where no image registry is reachable: scripts/compose.sh)
#   TORCH_VERSION    must match the pin in pyproject.toml
#   TORCH_INDEX_URL  where the CPU torch wheel comes from (PyTorch's CPU index: PyPI's torch is the CUDA build, with
#                    gigabytes of nvidia-* libraries); set it empty to use pip's configured index or find-links.
# Build secret (optional): `pipconf`, a pip configuration file mounted as /etc/pip.conf for the pip steps only (a local
# index, a CA bundle, constraints); it never lands in a layer. scripts/compose.sh passes the host's under podman.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: the venv, and model.onnx exported next to each bundled model ----------------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"
WORKDIR /src
# torch alone first: the largest layer, and the one that changes least.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY training/ training/
COPY exporters/ exporters/
COPY service/ service/
# A regular (non-editable) install: the runtime stage copies only /opt/venv, not the sources. The list of what serving
# needs is kept, so that the exporter's packages (onnx, onnxscript) can leave again after the export below.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    pip install ".[serve]" \
    && pip list --format freeze | cut -d= -f1 | sort > serve-packages.txt
COPY models/ models/
# Export every served model's model.onnx here, where the models folder is writable, by loading and warming up each
# model as the server does (`--check`): the runtime image then needs neither onnx nor a writable filesystem.
RUN --mount=type=cache,target=/root/.cache/pip --mount=type=secret,id=pipconf,target=/etc/pip.conf \
    pip install ".[onnx]" \
    && python -m service --check --backend onnxruntime --models-dir models --max-batch-size 1 \
    && pip list --format freeze | cut -d= -f1 | sort | comm -13 serve-packages.txt - | xargs -r pip uninstall -y \
    && python -c "import onnxruntime, torch, service.main"

# ---- runtime: the venv, the models with their exports, a non-root user ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 onestep \
    && useradd --system --uid 10001 --gid onestep --home-dir /app --no-create-home --shell /usr/sbin/nologin onestep
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY LICENSE NOTICE ./
# Owned by root and read-only to the service: it serves the model.onnx exported above and writes nothing.
COPY --from=build /src/models/ models/
ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ONESTEP_HOST=0.0.0.0 \
    ONESTEP_PORT=8000 \
    ONESTEP_WORKERS=1 \
    ONESTEP_MODELS_DIR=/app/models \
    ONESTEP_DEFAULT_MODEL=fmnist-d2o \
    ONESTEP_BACKEND=onnxruntime
USER 10001:10001
EXPOSE 8000
# No curl in the image: the standard library does the probe. Start period covers model load and warm-up.
# (Under podman, build with `--format docker`: the OCI image format has no HEALTHCHECK.)
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ONESTEP_PORT', '8000') + '/healthz', timeout=2)"]
# Settings come from ONESTEP_* variables (docker run -e / compose environment / a Kubernetes ConfigMap).
CMD ["python", "-m", "service"]
