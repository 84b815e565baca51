#!/bin/sh
# Time README's main job the way a newcomer meets it: a fresh --cache-dir (no synthetic set, no cached features),
# every thread of the box, nothing else running. Writes the run records into benchmarks/main_job/ (their
# timing.total_s is what tests/test_leaderboard.py checks against the 10-minute promise) and prints the wall time
# around the CLI. Other methods at the same setting: sh benchmarks/main_job.sh hast
set -e
cd "$(dirname "$0")/.."
line=$(grep -A1 '^# the main job' README.md | tail -1)
model=$(echo "$line" | sed -n 's/.*--model \([^ ]*\).*/\1/p'); bits=$(echo "$line" | sed -n 's/.*--bits \([0-9]*\).*/\1/p')
methods=${*:-$(echo "$line" | sed -n 's/.*--method \([^ ]*\).*/\1/p')}
for m in $methods; do
  tmp=$(mktemp -d)
  rm -f benchmarks/main_job/${m}_*.json
  load=$(cut -d" " -f1-3 /proc/loadavg); start=$(date +%s)
  .venv/bin/zsqbench run --method "$m" --model "$model" --bits "$bits" --cache-dir "$tmp" --out benchmarks/main_job -q \
    > "$tmp/log.txt" 2>&1 || { cat "$tmp/log.txt"; exit 1; }
  echo "$m $model W${bits}A${bits}: $(( $(date +%s) - start )) s wall from an empty cache; load before: $load"
  rm -rf "$tmp"
done
