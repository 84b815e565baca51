#!/bin/sh
# The cpu leaderboard's grid in one resumable sweep. The sweep runs method by method, so rows finish one after
# another and a partial grid still gives complete rows (`zsqbench leaderboard build --methods ...`), while both
# job slots stay busy across a row's end; the protocol's seed rule gives each row its seeds. Run it again and
# finished jobs are skipped.
#   sh benchmarks/cpu_grid.sh [METHOD ...]        (default: every method, cheapest first; adadfq early: the
#                                                  README's main job reads its row)
# $PYTHON: the interpreter whose zsqbench runs the grid (default .venv/bin/python), e.g. one installed from a
# separate checkout of the same commit, so that editing this one while the grid runs leaves its records clean.
# $CACHE_DIR: the synthetic-set cache (zeroq-kd reuses zeroq's sets), kept across sessions.
# $OUT: the sweep directory (default sweeps/cpu), e.g. a committed one that carries a grid across sessions.
set -e
cd "$(dirname "$0")/.."
methods=${*:-"fp noise zeroq adadfq zeroq-kd intraq bag adasg hast gdfq qimera synq"}
echo "=== $methods $(date -Is)"
${PYTHON:-.venv/bin/python} -m zsqbench.frontends.cli sweep --protocol cpu --methods "$(echo $methods | tr ' ' ',')" \
    --jobs 2 --threads 1 ${CACHE_DIR:+--cache-dir "$CACHE_DIR"} ${OUT:+--out "$OUT"} -q
echo "=== all done $(date -Is)"
