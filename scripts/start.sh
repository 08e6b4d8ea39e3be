#!/usr/bin/env bash
# Install onestep and serve the bundled default model on http://127.0.0.1:8000 (settings: ONESTEP_* env vars).
# Without a bundled model, run a short training demo that writes a sample grid instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh serve,train,onnx
model="${ONESTEP_DEFAULT_MODEL:-fmnist-d2o}"
if [ -f "${ONESTEP_MODELS_DIR:-models}/$model/config.json" ]; then
  exec .venv/bin/python -m service
fi
echo "No bundled model at models/$model: running a short pre-training demo instead." >&2
exec .venv/bin/python -m training.pretrain --data fmnist --arch tiny --batch 32 --duration 1 --tick 0.25 \
  --snap 4 --grid-nfe 7 --desc demo
