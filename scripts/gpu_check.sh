#!/usr/bin/env bash
# The GPU check, run on a CUDA machine from the repository root in one call of at most 8 minutes:
#
#   bash scripts/gpu_check.sh              # writes $OUT/gpu_report.json and $OUT/gpu_check.log
#
# With the device tool (see docs/benchmarks.md, "GPU check"): first `bash scripts/gpu_wheels.sh` here, then
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# It installs the carried wheels (.whl/, no network) into a temporary target on PYTHONPATH, prints the GPU and
# versions, then runs the steps of `python -m benchmarks.gpu` in order, each under `timeout`: pytest -m gpu, raw
# generator throughput and latency, the HTTP service, 60 s each of bf16 pre-training and fine-tuning, and
# torch.compile under the CUDA graphs. Every step merges what it measured into the report as it goes, so a step
# that fails or runs out of time leaves the others' figures (and its own so far); the last lines judge the targets.
#
# GPU_CHECK_DRY_RUN=1 runs the same steps on a CPU with tiny sizes (the CPU tests use it).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
REPORT=$OUT/gpu_report.json
LOG=$OUT/gpu_check.log
PY=${PYTHON:-python3}
DRY=()
if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
    DRY=(--dry-run)
fi
export PYTHONUNBUFFERED=1
START=$(date +%s)

# step NAME SECONDS [ARGS...]: one step of benchmarks.gpu under `timeout`; a failure or a timeout is recorded.
step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (at most ${limit} s; $(($(date +%s) - START)) s so far)"
    timeout -k 10 "$limit" "$PY" -m benchmarks.gpu "$name" --report "$REPORT" "${DRY[@]}" "$@"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        local why="exit $rc"
        [ "$rc" -eq 124 ] && why="timed out after ${limit} s"
        [ "$rc" -eq 137 ] && why="killed after ${limit} s"
        echo "-- $name: $why"
        "$PY" -m benchmarks.gpu mark "$name" --report "$REPORT" --status "$why"
    fi
}

setup() {
echo "== onestep GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=$(mktemp -d /tmp/onestep-site.XXXXXX)
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl; then
        export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
        echo "installed $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE"
    else
        echo "installing .whl/ failed: the service steps will fail where fastapi/uvicorn are missing"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    fi
else
    echo "no .whl/ here (run scripts/gpu_wheels.sh where pip works, and carry .whl)"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi 2>/dev/null || echo "nvidia-smi: not available"
"$PY" - <<'EOF'
import importlib.metadata as m, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
for name in ("fastapi", "uvicorn", "pydantic", "pydantic-settings", "httptools", "onnxruntime", "triton"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "missing")
EOF

}

main() {
    setup
    step env 30
    step pytest 90 --budget 80 --test-timeout 60
    step raw 95
    step service 75 --level-seconds 5
    step training 150 --train-seconds 60
    step compile 30
    echo
    "$PY" -m benchmarks.gpu summary --report "$REPORT"
    echo "== done in $(($(date +%s) - START)) s: $REPORT, $LOG"
}

main 2>&1 | tee -a "$LOG"
