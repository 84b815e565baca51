#!/bin/sh
# Is the cpu grid faster as two one-thread jobs at once (`sweep --jobs 2`) or one two-thread job at a time
# (`--jobs 1`)? Runs the same short off-protocol job (default: adadfq, ResNet-20 W3A3, 20 warm-up + 200 steps)
#   A: alone, 2 threads   B: alone, 1 thread   C: two copies at once, 1 thread each
# and prints each run's distill step time. Run it on an otherwise idle machine.
#   sh benchmarks/grid_parallelism.sh [METHOD] [MODEL] [BITS]
cd "$(dirname "$0")/.."
method=${1:-adadfq}; model=${2:-resnet20}; bits=${3:-3}
tmp=$(mktemp -d)
one() {  # one(label, threads)
  OMP_NUM_THREADS=$2 MKL_NUM_THREADS=$2 .venv/bin/zsqbench run --method "$method" --model "$model" --bits "$bits" \
    --set train.steps=200 --set train.warmup_steps=20 --cache-dir "$tmp/cache" --out "$tmp/$1" -q > "$tmp/$1.log" 2>&1
  .venv/bin/python -c "import json,glob,sys; r=json.load(open(glob.glob('$tmp/$1/*.json')[0]))['timing']; \
print(f'$1: {r[\"mean_step_s\"]*1000:.0f} ms/step, total {r[\"total_s\"]:.0f} s')"
}
one warm 2 > /dev/null   # fills the cache (synthetic sets, if the method has any)
one A-alone-2-threads 2
one B-alone-1-thread 1
one C1-pair-1-thread 1 & one C2-pair-1-thread 1; wait
rm -rf "$tmp"
