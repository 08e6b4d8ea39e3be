# syntax=docker/dockerfile:1.7
# onestep serving image, CPU. GPU variant: Dockerfile.gpu (CUDA base, TensorRT). See docs/deploy.md.
#
#   docker build -t onestep:cpu .
#   docker run --rm -p 8000:8000 onestep:cpu
#
# Build arguments:
#   PYTHON_IMAGE     base image of both stages (slim Debian with CPython 3.11)
#   TORCH_VERSION    must match the pin in pyproject.toml
#   TORCH_INDEX_URL  where the CPU torch wheel comes from; set it empty to use pip's configured index
#                    (a local mirror, say). tests/deploy/test_image_steps.py runs these steps outside Docker.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment holding the project and its serving dependencies -------------------------
FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:$PATH"
WORKDIR /src
# torch alone first: the largest layer, and the one that changes least.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md LICENSE NOTICE ./
COPY training/ training/
COPY exporters/ exporters/
COPY service/ service/
# A regular (non-editable) install: the runtime stage copies only /opt/venv, not the sources.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install ".[serve]"

# ---- runtime: the venv, the bundled model, a non-root user ---------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 onestep \
    && useradd --system --uid 10001 --gid onestep --home-dir /app --no-create-home --shell /usr/sbin/nologin onestep
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY LICENSE NOTICE ./
COPY --chown=10001:10001 models/ models/
ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    ONESTEP_HOST=0.0.0.0 \
    ONESTEP_PORT=8000 \
    ONESTEP_WORKERS=1 \
    ONESTEP_MODELS_DIR=/app/models \
    ONESTEP_DEFAULT_MODEL=fmnist-d2o \
    ONESTEP_BACKEND=torch
USER 10001:10001
EXPOSE 8000
# No curl in the slim image: the standard library does the probe. Start period covers model load and warm-up.
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('ONESTEP_PORT', '8000') + '/healthz', timeout=2)"]
# Settings come from ONESTEP_* variables (docker run -e / compose environment / a Kubernetes ConfigMap).
CMD ["python", "-m", "service"]
