#!/bin/sh
# The cpu leaderboard's grid in one resumable sweep. The sweep runs method by method, so rows finish one after
# another and a partial grid still gives complete rows (`zsqbench leaderboard build --methods ...`), while both
# job slots stay busy across a row's end. Run it again and finished jobs are skipped.
#   sh benchmarks/cpu_grid.sh [METHOD ...]        (default: every method, in the order below)
set -e
cd "$(dirname "$0")/.."
methods=${*:-"fp noise zeroq hast adadfq gdfq qimera synq intraq zeroq-kd adasg bag"}
echo "=== $methods $(date -Is)"
.venv/bin/zsqbench sweep --protocol cpu --methods "$(echo $methods | tr ' ' ',')" --jobs 2 -q
echo "=== all done $(date -Is)"
