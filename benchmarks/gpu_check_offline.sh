#!/usr/bin/env bash
# benchmarks/gpu_check.sh on a GPU machine that has a CUDA torch but no package index (an air-gapped node, a lent
# device machine): zsqbench's other dependencies come from a folder of wheels made beforehand where an index is
# reachable, and Fashion-MNIST's test split from a folder beside them.
#
#   # where an index is reachable (wheels for the GPU machine's Python and platform):
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
#       "pydantic>=2" "jsonschema>=4.18" pytorchcv==0.0.67
#   mkdir -p .whl/fmnist && cp /usr/share/datasets/fashion-mnist/t10k-* .whl/fmnist/
#   # on the GPU machine, in the repository root (LIMIT: seconds for the whole check; BUDGET: --budget-s):
#   [LIMIT=540] [BUDGET=450] benchmarks/gpu_check_offline.sh [.whl] [SUMMARY.json]
#
# speed.py's baseline commit needs git history; without it, copy its checkout (.speed-baseline/<commit>, made by a
# run of benchmarks/speed.py here) along, and it is found through $ZSQBENCH_SPEED_BASELINE_DIR.
# Exit status: gpu_check.sh's (1 if a stage failed), or pip's if the install failed.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS="${1:-.whl}"
SUMMARY="${2:-${OUT:-.}/gpu_check.json}"
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# pyproject's dependencies: those the image lacks come from the wheels, the rest (torch above all) stay as they are
"$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-build-isolation -e .
[ -d "$WHEELS/fmnist" ] && export ZSQBENCH_DATA_ROOT="$PWD/$WHEELS/fmnist"
commit=$(sed -n 's/^DEFAULT_BASELINE = "\([0-9a-f]*\)".*/\1/p' benchmarks/speed.py)
base=$(ls -d .speed-baseline/"$commit"*/ 2>/dev/null | head -1 || true)
[ -n "$base" ] && export ZSQBENCH_SPEED_BASELINE_DIR="$PWD/$base"
export PYTHONUNBUFFERED=1 PYTHON="$PY"
timeout "${LIMIT:-540}" benchmarks/gpu_check.sh "$SUMMARY" ${BUDGET:+--budget-s $BUDGET} 2>&1 | tee "${SUMMARY%.json}.log"
