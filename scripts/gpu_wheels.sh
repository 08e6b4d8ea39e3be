#!/usr/bin/env bash
# The wheels the GPU machine lacks for `python -m service`, benchmarks.service and the GPU tests, into .whl/
# (git-ignored), for CPython 3.12 on manylinux x86-64. Run it here, where pip can reach the package index; the
# device tool carries .whl/ (carry: [".whl"]) and scripts/gpu_check.sh installs it there without a network.
#
# What the GPU machine already has (KINDS.md: torch, numpy, pillow, safetensors, httpx, prometheus-client, uvloop,
# pytest, pytest-timeout, tqdm, onnx, onnxruntime, click, h11, idna, annotated-doc, ...) is not fetched. Versions
# are the ones installed in this checkout's .venv (what the tests pass with here), else the pins below.
# typing-extensions and anyio are there too but maybe older than pydantic 2.14 and fastapi need: carried, they
# shadow the machine's on PYTHONPATH.
#
#   bash scripts/gpu_wheels.sh            # -> .whl/*.whl, about 4 MiB
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=${WHEEL_DIR:-.whl}

# name=fallback-version
PACKAGES=(
    fastapi=0.165.0
    starlette=1.10.0
    uvicorn=0.54.0
    httptools=0.9.0
    pydantic=2.14.4
    pydantic-core=2.50.5
    pydantic-settings=2.16.3
    typing-inspection=0.4.5
    annotated-types=0.8.0
    python-dotenv=1.2.4
    opentelemetry-api=1.45.2
    typing-extensions=4.16.0
    anyio=4.16.0
)

specs=()
for entry in "${PACKAGES[@]}"; do
    name=${entry%%=*}
    pin=${entry#*=}
    version=$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name" 2>/dev/null || true)
    specs+=("$name==${version:-$pin}")
done

rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${specs[@]}" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# One wheel per package (two versions of one stop the install there), each for CPython 3.12 or pure Python.
count=$(find "$DEST" -type f -name '*.whl' | wc -l)
if [ "$count" -ne "${#PACKAGES[@]}" ]; then
    echo "expected ${#PACKAGES[@]} wheels in $DEST, found $count" >&2
    exit 1
fi
for whl in "$DEST"/*.whl; do
    case "$whl" in
        *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp312-cp312-manylinux*x86_64*.whl) ;;
        *) echo "unexpected wheel tag: $whl" >&2; exit 1 ;;
    esac
done
printf '%s\n' "${specs[@]}" >"$DEST/versions.txt"
du -sh "$DEST" | awk -v n="$count" '{print "wheels: " n ", " $1 " in " $2}'
