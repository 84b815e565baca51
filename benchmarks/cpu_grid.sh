#!/bin/sh
# The cpu leaderboard's grid, one method at a time, so that rows finish one by one and a partial grid still gives
# complete rows (`zsqbench leaderboard build --methods ...`). Resumable: run it again and finished jobs are skipped.
#   sh benchmarks/cpu_grid.sh [METHOD ...]        (default: every method, in the order below)
set -e
cd "$(dirname "$0")/.."
methods=${*:-"fp noise zeroq hast adadfq gdfq qimera synq intraq zeroq-kd adasg bag"}
for m in $methods; do
  echo "=== $m $(date -Is)"
  .venv/bin/zsqbench sweep --protocol cpu --methods "$m" --jobs 2 -q
done
echo "=== all done $(date -Is)"
