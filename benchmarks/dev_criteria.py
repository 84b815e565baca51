"""Whether a candidate table informs, from dev-split records (issue #25 part 3; the criteria in
benchmarks/candidates/README.md, stated before any candidate was measured).

A table is ranked only if, on dev,
1. the floor row (`noise`) is at least 10 points under FP,
2. the best method is at least 1 point under FP (not saturated), and
3. at least two methods' dev means are 3+ points apart.

    python benchmarks/dev_criteria.py sweeps/v5-floor sweeps/v5-dev-ends8

Reads every record.json under the given folders that was scored on the dev split (`eval.split=dev`), groups them by
protocol, teacher and bits, and prints each table's rows (mean, sd, seeds) and the three criteria. The reference
rows are found by the roles their methods declare (`floor`, `ceiling`), not by name.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLOOR_GAP, SATURATION_GAP, SPREAD = 10.0, 1.0, 3.0
CHECKS = ("1 floor >= 10 under FP", "2 best >= 1 under FP", "3 two methods 3+ apart")


def dev_records(folders: list[str]) -> list[dict]:
    out = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("record.json")):
            rec = json.loads(path.read_text())
            if (rec.get("config", {}).get("eval") or {}).get("split") == "dev" and rec.get("status") == "ok":
                out.append(rec)
    return out


def tables(records: list[dict]) -> dict[tuple, dict[str, dict[int, float]]]:
    """(protocol, model@dataset, WxAy, dev images) -> method -> seed -> final top-1."""
    out: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        key = (r["protocol"]["name"], f"{r['model']}@{r['dataset']}", f"W{r['wbits']}A{r['abits']}",
               r["config"]["eval"].get("limit"))
        out[key][r["method"]["name"]][r["seed"]] = r["final_top1"]
    return out


def criteria(rows: dict[str, dict[int, float]], roles: dict[str, str]) -> dict:
    means = {m: statistics.fmean(v.values()) for m, v in rows.items()}
    floor = next((means[m] for m in means if roles.get(m) == "floor"), None)
    fp = next((means[m] for m in means if roles.get(m) == "ceiling"), None)
    methods = {m: v for m, v in means.items() if not roles.get(m)}
    best = max(methods.values(), default=None)
    spread = max(methods.values()) - min(methods.values()) if len(methods) >= 2 else None
    return {
        "floor": floor, "fp": fp, "best": best, "spread": spread,
        CHECKS[0]: None if floor is None or fp is None else fp - floor >= FLOOR_GAP,
        CHECKS[1]: None if best is None or fp is None else fp - best >= SATURATION_GAP,
        CHECKS[2]: None if spread is None else spread >= SPREAD,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="sweep folders (searched recursively for record.json)")
    args = ap.parse_args(argv)
    from zsqbench.spine.registry import get_registry
    reg = get_registry()
    records = dev_records(args.folders)
    if not records:
        sys.exit(f"no dev-split records under {', '.join(args.folders)}")
    roles = {m: e.obj.role for m, e in reg.methods.items() if e.obj.role}
    for (proto, model, bits, limit), rows in sorted(tables(records).items(), key=lambda kv: str(kv[0])):
        print(f"\n{proto} · {model} {bits} · dev split, {limit or 'all'} images")
        for m, by_seed in sorted(rows.items(), key=lambda kv: -statistics.fmean(kv[1].values())):
            vals = [by_seed[s] for s in sorted(by_seed)]
            sd = f"{statistics.stdev(vals):5.2f}" if len(vals) > 1 else "    —"
            role = f" ({roles[m]})" if m in roles else ""
            print(f"  {m + role:18s} {statistics.fmean(vals):6.2f}  sd {sd}  seeds "
                  + " / ".join(f"{s}: {by_seed[s]:.2f}" for s in sorted(by_seed)))
        c = criteria(rows, roles)
        verdict = [f"{k}: {'—' if c[k] is None else 'pass' if c[k] else 'FAIL'}" for k in CHECKS]
        print("  criteria · " + " · ".join(verdict))


if __name__ == "__main__":
    main()
