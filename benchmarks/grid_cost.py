"""What a grid will cost under a seed rule, before it runs (issue #25 part 4).

A seed rule (frontends/seed_rule.py) gives a row seeds until its own 95 % CI half-width meets the table's target or
the cap, so a grid's cost depends on each row's seed spread. This script takes the spread and the run time of each
row from a leaderboard that has them (e.g. the v4 board, kept in tests/data), simulates the rule on each row (seeds
drawn from a normal with the row's mean and sd; the rule's own code decides when to stop) and prints each row's expected
seed count, how often it reaches the cap, and the grid's expected wall time on N parallel jobs.

    python benchmarks/grid_cost.py tests/data/cpu-v4-board.json --first 3 --cap 10 --target 2.0 --jobs 2
    python benchmarks/grid_cost.py tests/data/cpu-v4-board.json --tables "resnet20@fmnist W3A3" --target 2.0 \\
        --target-for "resnet20@fmnist W3A3=1.0"

A plan, not a measurement: a row whose spread changes with the setting (8-bit ends, another teacher) costs what
its new spread says; read the figures for the v4 settings they were measured at.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zsqbench.frontends.seed_rule import SeedRule  # noqa: E402


def expected_seeds(rule: SeedRule, table: str, mean: float, sd: float, draws: int, rng) -> tuple[float, float]:
    """The mean number of seeds the rule gives a row of this spread, and the share of draws that reach the cap."""
    counts = []
    for _ in range(draws):
        finals: list[float] = []
        while rule.wants_more(finals, table):
            finals.append(float(rng.normal(mean, sd)))
        counts.append(len(finals))
    return statistics.fmean(counts), sum(c >= rule.cap for c in counts) / draws


def plan(lb: dict, rule: SeedRule, tables: set[str] | None, draws: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for row in lb["rows"]:
        table = f"{row['model']}@{row['dataset']} W{row['wbits']}A{row['abits']}"
        if tables and table not in tables or row["mean"] is None or row["wall_s_mean"] is None:
            continue
        sd = row["std"] or 0.0
        n, at_cap = expected_seeds(rule, table, row["mean"], sd, draws, rng)
        out.append({"table": table, "method": row["method"], "sd": sd, "wall_s": row["wall_s_mean"],
                    "seeds": n, "at_cap": at_cap, "cost_s": n * row["wall_s_mean"]})
    return out


def per_table(items: list[str], cast) -> dict:
    """``["TABLE=VALUE", ...]`` (a table's name has a space, never an "=") as {table: cast(value)}."""
    return {name: cast(value) for name, _, value in (item.rpartition("=") for item in items)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("leaderboard", help="a leaderboard JSON whose rows give each row's seed spread and run time")
    ap.add_argument("--first", type=int, default=3)
    ap.add_argument("--cap", type=int, default=10)
    ap.add_argument("--target", type=float, default=2.0, help="95 %% CI half-width target (points)")
    ap.add_argument("--target-for", action="append", default=[], metavar="TABLE=POINTS",
                    help='another target for one table, e.g. "resnet20@fmnist W4A4=0.5"')
    ap.add_argument("--cap-for", action="append", default=[], metavar="TABLE=N",
                    help='another cap for one table, e.g. "resnet20-b@fmnist W3A3=3" (the rule\'s cap_by_table)')
    ap.add_argument("--tables", action="append", default=None, help="only these tables (repeatable)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel jobs (the wall time divides by it)")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    by_table = per_table(args.target_for, float)
    caps = per_table(args.cap_for, int)
    rule = SeedRule(args.first, args.cap, args.target, by_table, caps)
    lb = json.loads(Path(args.leaderboard).read_text())
    rows = plan(lb, rule, set(args.tables) if args.tables else None, args.draws, args.seed)
    if not rows:
        sys.exit("no rows with a mean and a wall time in those tables")
    print(f"seed rule: first {rule.first}, cap {rule.cap}, CI half-width target {rule.ci_half_width:g}"
          + "".join(f", {t}: {v:g}" for t, v in by_table.items())
          + "".join(f", {t}: cap {v}" for t, v in caps.items()) + f"; {args.draws} simulated grids")
    print(f"{'table':24s} {'method':10s} {'sd':>6s} {'run s':>7s} {'seeds':>6s} {'at cap':>7s} {'row h':>6s}")
    for r in rows:
        print(f"{r['table']:24s} {r['method']:10s} {r['sd']:6.2f} {r['wall_s']:7.0f} {r['seeds']:6.2f} "
              f"{r['at_cap']:7.0%} {r['cost_s'] / 3600:6.2f}")
    total = sum(r["cost_s"] for r in rows)
    for table in sorted({r["table"] for r in rows}):
        t = sum(r["cost_s"] for r in rows if r["table"] == table)
        print(f"{table}: {t / 3600:.1f} h of runs, {t / 3600 / args.jobs:.1f} h of wall time on {args.jobs} jobs")
    print(f"grid: {total / 3600:.1f} h of runs, {total / 3600 / args.jobs:.1f} h of wall time on {args.jobs} jobs "
          f"(run times from {args.leaderboard}: {'; '.join(lb['provenance']['devices'])})")


if __name__ == "__main__":
    main()
