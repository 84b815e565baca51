"""Per-seed figures, synthesis throughput, wall time per phase and the data diagnostics of image-optimisation runs,
from run records (files or directories, e.g. a sweep's): the table issue #4 asks for.

    python benchmarks/imageopt_report.py sweeps/cpu [--methods intraq,hast,zeroq,zeroq-kd,noise]

Prints Markdown. Synthesis throughput and time are taken from the runs that built their set (cache miss); a run that
found its set in the cache shows its load time instead.
"""
from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from zsqbench.leaderboard.collect import collect


def fmt(values, digits=2):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+")
    ap.add_argument("--methods", default="intraq,hast,zeroq,zeroq-kd,noise")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    runs = [r for _, r in collect(args.results).records if r["method"]["name"] in methods]
    rows = defaultdict(list)
    for r in runs:
        rows[(r["model"], r["wbits"], r["abits"], r["method"]["name"])].append(r)

    print("| teacher | bits | method | final top-1 per seed (0/1/2) | mean ± sd | best-on-test mean | wall s | "
          "synthesis s | calib s | distill s (ms/step) | eval s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in sorted(rows, key=lambda k: (k[0], k[1], k[2], methods.index(k[3]))):
        rs = sorted(rows[key], key=lambda r: r["seed"])
        ph = lambda name: fmt([r["timing"]["phases_s"].get(name) for r in rs], 1)  # noqa: E731
        steps = [r["timing"]["mean_step_s"] * 1000 for r in rs if r["timing"]["mean_step_s"]]
        finals = [r["final_top1"] for r in rs]
        print(f"| {key[0]} | W{key[1]}A{key[2]} | {key[3]} | "
              + " / ".join("div." if v is None else f"{v:.2f}" for v in finals)
              + f" | {fmt(finals)} | {fmt([r['best_top1_selected_on_test'] for r in rs])} | "
              f"{fmt([r['timing']['total_s'] for r in rs], 0)} | {ph('synthesis')} | {ph('calibration')} | "
              f"{ph('distill')}" + (f" ({statistics.mean(steps):.0f})" if steps else "") + f" | {ph('evaluation')} |")

    print("\nSynthetic sets (runs that built them) and the data diagnostics (teacher's pooled features):\n")
    print("| teacher | method | sets built | image-iterations/s | synthesis s | final BNS | teacher agrees | "
          "intra-class cos. distance synthetic | real | value range synthetic | real |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    by_set = defaultdict(list)
    for r in runs:
        if "synthesis" in r["diagnostics"]:
            by_set[(r["model"], r["method"]["name"])].append(r)
    for key in sorted(by_set):
        rs = by_set[key]
        built = [r["diagnostics"]["synthesis"] for r in rs if r["diagnostics"]["synthesis"].get("cache") == "miss"]
        data = [r["diagnostics"].get("data", {}) for r in rs]
        syn = [d["synthetic"] for d in data if "synthetic" in d]
        real = [d["real"] for d in data if "real" in d]
        print(f"| {key[0]} | {key[1]} | {len(built)} | {fmt([b['image_iterations_per_s'] for b in built], 0)} | "
              f"{fmt([b['wall_s'] for b in built], 1)} | {fmt([b['final'].get('bns') for b in built], 3)} | "
              f"{fmt([b.get('teacher_agrees') for b in built], 3)} | "
              f"{fmt([s['intra_class_cosine_distance'] for s in syn], 3)} | "
              f"{fmt([s['intra_class_cosine_distance'] for s in real], 3)} | "
              f"[{min(s['value_min'] for s in syn):.2f}, {max(s['value_max'] for s in syn):.2f}] | "
              f"[{min(s['value_min'] for s in real):.2f}, {max(s['value_max'] for s in real):.2f}] |")


if __name__ == "__main__":
    main()
