#!/usr/bin/env bash
# The CUDA check (issue 16), one command, <= 8 minutes on one GPU: every method under `smoke`, one `cpu`-protocol
# job per method family, the step-time benchmarks on GPU and CPU (ratios), and the `paper` protocol's first steps
# for every method on ResNet-20@cifar100 (random-initialised teacher, fabricated CIFAR-100 test set: no download).
# Writes a JSON summary to the given path, else $OUT/gpu_check.json, else ./gpu_check.json.
#
#   benchmarks/gpu_check.sh [SUMMARY.json]          # on a GPU machine (a CUDA build of torch, zsqbench installed)
#   benchmarks/gpu_check.sh --dry [SUMMARY.json]    # the same stages on the CPU, tiny budgets (CI keeps it working)
#
# Python: $PYTHON, else .venv/bin/python, else python3. Exit 1 if any stage or run failed (the summary says which).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
