"""Aggregate run records into a leaderboard: one row per (model@dataset, WxAy, method) over seeds.

The headline is ``final_top1`` (the final student); ``best_top1_selected_on_test`` is carried beside it as the
legacy figure. Records of another protocol, of mixed protocol versions/hashes, off-protocol records and
duplicate seeds within a row are refused (UserError, one line naming the files).
"""
from __future__ import annotations

import json
import math
import statistics
import shlex
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from zsqbench.export.sizes import saved_figures
from zsqbench.leaderboard.collect import LEADERBOARD_KIND
from zsqbench.leaderboard.stats import ci_half_width, kendall_tau, mean, summarize, table_statistics
from zsqbench.record.io import validation_errors
from zsqbench.spine.errors import UserError
from zsqbench.spine.provenance import code_version

SCHEMA_VERSION = 2  # 2: all-pairs Games-Howell, letters and rank intervals (1: adjacent rows, Welch + Holm)
ALPHA = 0.05  # family-wise error rate of each table's pairwise comparisons


def name_files(paths, limit: int = 4) -> str:
    paths = list(paths)
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def row_key(rec: dict, label: str | None = None) -> tuple:
    return (rec["model"], rec["dataset"], rec["wbits"], rec["abits"], label or rec["method"]["name"])


def run_entry(path: str, rec: dict) -> dict:
    return {"seed": rec["seed"], "status": rec["status"], "final_top1": rec["final_top1"],
            "best_top1_selected_on_test": rec["best_top1_selected_on_test"], "fp_top1": rec["fp_top1"],
            "total_s": rec["timing"]["total_s"], "mean_step_s": rec["timing"]["mean_step_s"],
            "protocol_version": rec["protocol"]["version"], "protocol_hash": rec["protocol"]["hash"],
            "git_commit": rec["git"]["commit"], "teacher_sha256": rec["teacher"].get("sha256"), "record": path,
            **({"code": rec["code"]} if rec.get("code") else {}),
            **({"threads": rec["device"]["threads"]} if (rec.get("device") or {}).get("threads") else {}),
            **({"saved": saved} if (saved := saved_figures(rec)) else {})}


def make_row(key: tuple, items: list[tuple[str, dict]]) -> dict:
    """One row from the (path, record) pairs that share ``key``; refuses duplicate seeds."""
    runs = sorted((run_entry(p, r) for p, r in items), key=lambda r: r["seed"])
    check_seeds(key, runs)
    check_teacher(key, runs)
    check_code(key, runs)
    return row_from_runs(key, runs)


def code_versions(runs: list[dict]) -> dict[str, list[str]]:
    """code version -> the runs' record paths (records without code fingerprints share one version, "unknown")."""
    by_code = defaultdict(list)
    for r in runs:
        by_code[code_version(r.get("code"))].append(r["record"])
    return dict(by_code)


def check_code(key: tuple, runs: list[dict]) -> None:
    """One row, one code version: seeds run by different method code are not one result."""
    by_code = code_versions(runs)
    if len(by_code) > 1:
        model, dataset, w, a, method = key
        parts = [f"{version}: {name_files(ps, 2)}" for version, ps in sorted(by_code.items())]
        raise UserError(f"{method} on {model}@{dataset} W{w}A{a} mixes code versions ({' | '.join(parts)}): keep "
                        "the records of one code version (re-run the others, e.g. `zsqbench sweep`)")


def teacher_weights(runs: list[dict]) -> set:
    """The teacher weights' sha256 values of a row's runs (optional in the schema: older leaderboards lack it)."""
    return {r["teacher_sha256"] for r in runs if r.get("teacher_sha256")}


def check_teacher(key: tuple, runs: list[dict]) -> None:
    """One row, one teacher: seeds run on different weights of the same model are not one result."""
    by_sha = defaultdict(list)
    for r in runs:
        if r.get("teacher_sha256"):
            by_sha[r["teacher_sha256"]].append(r["record"])
    if len(by_sha) > 1:
        model, dataset, w, a, method = key
        parts = [f"{sha[:8]}: {name_files(ps, 2)}" for sha, ps in sorted(by_sha.items())]
        raise UserError(f"{method} on {model}@{dataset} W{w}A{a} mixes teacher weights ({'; '.join(parts)}): "
                        "keep the records of one teacher (re-run the others)")


def check_seeds(key: tuple, runs: list[dict]) -> None:
    by_seed = defaultdict(list)
    for r in runs:
        by_seed[r["seed"]].append(r["record"])
    dups = {s: ps for s, ps in by_seed.items() if len(ps) > 1}
    if dups:
        model, dataset, w, a, method = key
        s, ps = sorted(dups.items())[0]
        raise UserError(f"duplicate seed {s} for {method} on {model}@{dataset} W{w}A{a}: {name_files(ps)} "
                        "(keep one record per seed)")


def row_from_runs(key: tuple, runs: list[dict]) -> dict:
    model, dataset, w, a, method = key
    ok = [r for r in runs if r["status"] == "ok" and r["final_top1"] is not None]
    bad = [r for r in runs if not (r["status"] == "ok" and r["final_top1"] is not None)]
    finals = [r["final_top1"] for r in ok]
    best = [r["best_top1_selected_on_test"] for r in ok if r["best_top1_selected_on_test"] is not None]
    gaps = [r["best_top1_selected_on_test"] - r["final_top1"] for r in ok
            if r["best_top1_selected_on_test"] is not None]
    steps = [r["mean_step_s"] for r in ok if r["mean_step_s"] is not None]
    flags = [f"diverged {len(bad)}/{len(runs)}"] if bad else []
    return {"model": model, "dataset": dataset, "wbits": w, "abits": a, "method": method,
            "n": len(ok), "seeds": [r["seed"] for r in ok], "final_top1": finals, **summarize(finals),
            "best_on_test_mean": mean(best), "gap_mean": mean(gaps),
            "fp_top1": mean([r["fp_top1"] for r in runs]),
            "wall_s_mean": mean([r["total_s"] for r in ok]), "step_s_mean": mean(steps),
            "diverged": len(bad), "diverged_seeds": [r["seed"] for r in bad], "flags": flags, "runs": runs}


def row_cost_s(row: dict) -> float:
    """What a row cost: the wall time of all its runs, diverged ones included (a seed rule gives rows different
    numbers of seeds, so rows of one table cost differently)."""
    return sum(r["total_s"] or 0.0 for r in row["runs"])


def check_records(records: list[tuple[str, dict]], protocol: str) -> dict:
    """Refusals; returns the one protocol block the records share."""
    other = [p for p, r in records if r["protocol"]["name"] != protocol]
    if other:
        names = sorted({r["protocol"]["name"] for _, r in records if r["protocol"]["name"] != protocol})
        raise UserError(f"{len(other)} record(s) are not protocol {protocol!r} (found {', '.join(names)}): "
                        f"{name_files(other)}")
    versions = defaultdict(list)
    for p, r in records:
        versions[(r["protocol"]["version"], r["protocol"]["hash"])].append(p)
    if len(versions) > 1:
        parts = [f"v{v} {h[:8]}: {name_files(ps, 2)}" for (v, h), ps in sorted(versions.items())]
        raise UserError(f"mixed versions of protocol {protocol!r} (never compare them; build one leaderboard "
                        f"per version): {'; '.join(parts)}")
    off = [p for p, r in records if r["off_protocol"]]
    if off:
        raise UserError(f"{len(off)} off-protocol record(s) (overrides or swapped components) cannot enter a "
                        f"leaderboard: {name_files(off)}")
    (version, hsh), = versions
    return {"name": protocol, "version": version, "hash": hsh}


def build_leaderboard(records: list[tuple[str, dict]], protocol: str, n_inputs: int,
                      command: str | None = None) -> dict:
    if not records:
        raise UserError("no run records to build a leaderboard from")
    proto = check_records(records, protocol)
    groups = defaultdict(list)
    for p, r in records:
        groups[row_key(r)].append((p, r))
    rows = [make_row(k, items) for k, items in groups.items()]
    rows.sort(key=rank_order)
    significance = add_significance(rows)
    recs = [r for _, r in records]
    import zsqbench
    lb = {
        "schema_version": SCHEMA_VERSION,
        "kind": LEADERBOARD_KIND,
        "headline": "final_top1",
        "protocol": proto,
        "provenance": {
            "zsqbench_version": zsqbench.__version__,
            "record_zsqbench_versions": sorted({r["versions"]["zsqbench"] for r in recs}),
            "git_commits": sorted({r["git"]["commit"] or "unknown" for r in recs}),
            "dirty_records": sum(bool(r["git"]["dirty"]) for r in recs),
            "devices": sorted({device_label(r["device"]) for r in recs}),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command if command is not None else shlex.join(["zsqbench", *sys.argv[1:]]),
            "inputs": n_inputs,
            "records": len(recs),
            "total_wall_s": sum(r["timing"]["total_s"] for r in recs),
        },
        "significance": significance,
        "rows": rows,
    }
    return lb


# --- notes: power targets and row notes (hand-written input, `leaderboard build --notes FILE`) ------------------

def table_name(row: dict) -> str:
    """The name a notes file gives a row's table: "model@dataset WxAy"."""
    return f"{row['model']}@{row['dataset']} W{row['wbits']}A{row['abits']}"


def read_notes(path: str, protocol: str) -> dict:
    """A notes file, validated against its JSON Schema; UserError (one line) on bad input."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"notes file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"notes file {path} is not JSON ({e}); see zsqbench/record/schema/"
                        "leaderboard-notes.schema.json") from None
    errors = validation_errors(obj, "leaderboard-notes")
    if errors:
        raise UserError(f"invalid notes file {path}: " + "; ".join(errors[:3]))
    if obj["protocol"] != protocol:
        raise UserError(f"notes file {path} is about protocol {obj['protocol']!r}, not {protocol!r}")
    return obj


def power_of(row: dict, target: float) -> dict:
    """The row's 95 % CI half-width against a target (its statistical power, as the reader needs it)."""
    half = ci_half_width(row["final_top1"])  # of the uncut t interval: the [0, 100] cut is not precision
    return {"target": target, "half_width": half, "met": half is not None and half <= target}


def power_flag(power: dict) -> str:
    half = "?" if power["half_width"] is None else f"±{power['half_width']:.1f}"
    return f"CI {half} > {power['target']:g}"


def apply_notes(lb: dict, notes: dict, path: str) -> dict:
    """Give each row of a table with a target its ``power`` (and a flag when it misses), and each noted row its
    ``note``. A target or note naming a table or row the leaderboard lacks is refused: notes never dangle."""
    targets = notes.get("ci_half_width_target", {})
    tables = {table_name(r) for r in lb["rows"]}
    rows = {(r["method"], f"{r['model']}@{r['dataset']}", f"W{r['wbits']}A{r['abits']}"): r for r in lb["rows"]}
    missing = [t for t in targets if t not in tables]
    missing += [" ".join(k) for k in ((n["method"], n["model"], n["bits"]) for n in notes["rows"]) if k not in rows]
    if missing:
        raise UserError(f"notes file {path} names what the leaderboard does not have: {name_files(missing)} "
                        f"(tables there: {', '.join(sorted(tables))})")
    for n in notes["rows"]:
        rows[(n["method"], n["model"], n["bits"])]["note"] = n["note"]
    for row in lb["rows"]:
        target = targets.get(table_name(row))
        if target is not None:
            row["power"] = power_of(row, target)
            if not row["power"]["met"]:
                row["flags"] = [*row["flags"], power_flag(row["power"])]
    lb["provenance"]["notes"] = path
    return lb


def rank_order(row: dict) -> tuple:
    """Rows of one model and bit-width together, best mean first (rows without a mean last)."""
    return (row["model"], row["dataset"], row["wbits"], row["abits"],
            -(row["mean"] if row["mean"] is not None else -math.inf), row["method"])


BOOTSTRAP_RESAMPLES = 2000  # rank intervals: resamples of each row's seeds (seeded: the validator gets the same)
BOOTSTRAP_SEED = 0


def table_rows(rows: list[dict]) -> dict[tuple, list[dict]]:
    """The rows of each table (model, dataset and bits), best mean first."""
    tables = defaultdict(list)
    for row in sorted(rows, key=rank_order):
        tables[(row["model"], row["dataset"], row["wbits"], row["abits"])].append(row)
    return dict(tables)


def add_significance(rows: list[dict], alpha: float = ALPHA) -> dict:
    """Every pair of rows within a table (one family per model and bits: each table is one ranking question) by
    the Games-Howell test on the per-seed final top-1; each row's compact letters (rows sharing a letter are not
    separated at ``alpha``, family-wise) and its 95 % rank interval from a bootstrap over its seeds. Rows with fewer
    than two finished seeds (every seed diverged, or one seed) get neither: nothing can place them. Sets
    ``letters`` and ``rank_interval`` on every row; returns the leaderboard's ``significance`` block, which holds
    every pair's p-value."""
    tables = []
    for key, ranked in table_rows(rows).items():
        result = table_statistics({r["method"]: r["final_top1"] for r in ranked}, alpha, BOOTSTRAP_RESAMPLES,
                                  BOOTSTRAP_SEED)
        for row in ranked:
            row["letters"] = result["letters"].get(row["method"])
            row["rank_interval"] = result["rank_intervals"].get(row["method"])
        tables.append({"table": table_name(ranked[0]), "rows": result["rows"], "pairs": result["pairs"],
                       "validity": {"rank_stability": result["rank_stability"],
                                    "kendall_tau_vs_papers": tau_against_papers(ranked),
                                    "best_on_test_gap": best_on_test_gap(ranked)}})
    return {"test": "games-howell", "alpha": alpha, "comparisons": sum(len(t["pairs"]) for t in tables),
            "rank_interval": {"method": "bootstrap over seeds", "level": 0.95, "resamples": BOOTSTRAP_RESAMPLES,
                              "seed": BOOTSTRAP_SEED},
            "tables": tables}


def papers_setting(model: str, dataset: str, wbits: int, abits: int, entries: list[dict]) -> str | None:
    """The published setting a table is read against: the same architecture and bits on the table's own dataset
    where the papers report it, else on the dataset they report most methods on (Fashion-MNIST teachers: CIFAR)."""
    counts = defaultdict(set)
    for e in entries:
        if (e["model"], e["wbits"], e["abits"]) == (model, wbits, abits):
            counts[e["dataset"]].add(e["method"])
    if not counts:
        return None
    return dataset if dataset in counts else max(sorted(counts), key=lambda d: len(counts[d]))


def tau_against_papers(ranked: list[dict]) -> dict | None:
    """Kendall tau between the table's mean final top-1 and the papers' figures (the median of the published
    entries per method, baselines/published.json) over the methods both have. A statistic to report, never a target
    to tune to: the papers' figures are best-on-test, on other datasets, at other budgets. None when fewer than
    three methods are shared or the published table is unavailable."""
    from zsqbench.leaderboard.published import load_published
    try:
        entries = load_published()
    except UserError:
        return None
    first = ranked[0]
    dataset = papers_setting(first["model"], first["dataset"], first["wbits"], first["abits"], entries)
    if dataset is None:
        return None
    published = defaultdict(list)
    for e in entries:
        if (e["model"], e["dataset"], e["wbits"], e["abits"]) == (first["model"], dataset, first["wbits"],
                                                                    first["abits"]):
            published[e["method"]].append(e["top1"])
    shared = [r for r in ranked if r["mean"] is not None and r["method"] in published]
    tau = kendall_tau([r["mean"] for r in shared], [statistics.median(published[r["method"]]) for r in shared])
    if tau is None:
        return None
    return {**tau, "against": f"{first['model']}@{dataset} W{first['wbits']}A{first['abits']}",
            "methods": [r["method"] for r in shared]}


def best_on_test_gap(ranked: list[dict]) -> dict | None:
    """How much choosing the best evaluation on the test set (as the papers do) would flatter the table's rows:
    the mean and largest gap between best-on-test and final top-1 over its rows. 0 when a run is evaluated once."""
    gaps = [r["gap_mean"] for r in ranked if r.get("gap_mean") is not None]
    return {"mean": statistics.fmean(gaps), "max": max(gaps)} if gaps else None


TRANSFER_MARGIN = 20.0  # points above the floor row a method must keep on a held-out teacher (issue #25)


def transfer_block(rows: list[dict], pairs: dict[str, str], roles: dict[str, str]) -> dict | None:
    """Each held-out teacher's table beside the table of the teacher its settings were chosen on, at the same bits
    (``pairs``: the protocol's ``transfer``, held-out model -> chosen-on model, both "model@dataset"; ``roles``: the
    methods with a role, e.g. ``{"noise": "floor", "fp": "ceiling"}``). Per method on both tables: both means and
    the change; per held-out table: its floor, each method's margin over it, and Kendall tau between the two
    tables' rankings of the methods without a role. None when no pair has a table on both sides."""
    tables = table_rows(rows)
    by_model = defaultdict(dict)
    for (model, dataset, w, a), ranked in tables.items():
        by_model[f"{model}@{dataset}"][(w, a)] = ranked
    out = []
    for held, chosen in sorted(pairs.items()):
        for bits in sorted(set(by_model.get(held, {})) & set(by_model.get(chosen, {}))):
            h = {r["method"]: r for r in by_model[held][bits]}
            c = {r["method"]: r for r in by_model[chosen][bits]}
            floors = [m for m in h if roles.get(m) == "floor" and h[m]["mean"] is not None]
            floor = h[floors[0]]["mean"] if floors else None
            entries = []
            for m in [r["method"] for r in by_model[held][bits]]:  # the held-out table's order: best first
                if m not in c:
                    continue
                hm, cm = h[m]["mean"], c[m]["mean"]
                entries.append({"method": m, "role": roles.get(m, ""), "chosen_on_mean": cm, "held_out_mean": hm,
                                "change": None if hm is None or cm is None else hm - cm,
                                "above_floor": None if hm is None or floor is None or roles.get(m) else hm - floor})
            ranked = [e for e in entries if not e["role"] and e["held_out_mean"] is not None
                      and e["chosen_on_mean"] is not None]
            tau = kendall_tau([e["held_out_mean"] for e in ranked], [e["chosen_on_mean"] for e in ranked])
            margins = [e["above_floor"] for e in entries if e["above_floor"] is not None]
            w, a = bits
            out.append({"held_out": f"{held} W{w}A{a}", "chosen_on": f"{chosen} W{w}A{a}",
                        "floor": {"method": floors[0], "mean": floor} if floors else None,
                        "rows": entries, "kendall_tau": tau,
                        "below_margin": sorted(e["method"] for e in entries
                                               if e["above_floor"] is not None and e["above_floor"] < TRANSFER_MARGIN),
                        "only_held_out": sorted(set(h) - set(c)), "only_chosen_on": sorted(set(c) - set(h)),
                        **({"worst_margin": min(margins)} if margins else {})})
    if not out:
        return None
    return {"pairs": dict(sorted(pairs.items())), "roles": dict(sorted(roles.items())), "margin": TRANSFER_MARGIN,
            "tables": out}


def transfer_errors(obj: dict) -> list[str]:
    """The ``transfer`` block recomputed from the rows, its pairs and roles."""
    t = obj["transfer"]
    want = transfer_block(obj["rows"], t["pairs"], t["roles"])
    if want is None:
        return ["transfer: no held-out teacher of its pairs has a table beside its chosen-on teacher's"]
    if t["margin"] != TRANSFER_MARGIN or not _same(t["tables"], want["tables"]):
        return ["transfer: the tables do not match the rows (recompute: `zsqbench leaderboard restat`)"]
    return []


def with_significance(lb: dict) -> dict:
    """The leaderboard with its table statistics: as built, or derived from the per-seed values (a copy; the file
    is not changed)."""
    if "significance" in lb:
        return lb
    import copy
    lb = copy.deepcopy(lb)
    lb["significance"] = add_significance(lb["rows"])
    return lb


def restat(lb: dict, command: str) -> dict:
    """Every derived figure of a leaderboard recomputed from the runs it holds (no run records needed): the rows'
    summaries, power against the targets they carry, and the table statistics. For a leaderboard built by an
    older zsqbench whose statistics have since changed; the runs, notes and provenance are kept."""
    import zsqbench
    rows = []
    for old in lb["rows"]:
        key = (old["model"], old["dataset"], old["wbits"], old["abits"], old["method"])
        row = row_from_runs(key, old["runs"])
        if "note" in old:
            row["note"] = old["note"]
        if "power" in old:
            row["power"] = power_of(row, old["power"]["target"])
            if not row["power"]["met"]:
                row["flags"] = [*row["flags"], power_flag(row["power"])]
        rows.append(row)
    rows.sort(key=rank_order)
    provenance = {**lb["provenance"], "statistics": f"recomputed by zsqbench {zsqbench.__version__} "
                                                   f"({command}) on {datetime.now(timezone.utc).isoformat(timespec='seconds')}"}
    out = {**lb, "schema_version": SCHEMA_VERSION, "provenance": provenance, "rows": rows}
    out["significance"] = add_significance(rows, (lb.get("significance") or {}).get("alpha", ALPHA))
    return out


def device_label(d: dict) -> str:
    threads = d.get("threads")
    return f"{d.get('type')}: {d.get('name')}" + (f", {threads} thread{'s' * (threads != 1)}" if threads else "")


# --- validation: syntax (JSON Schema) then semantics ---------------------------------------------------------

def _close(a, b, tol=1e-6) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def validate_leaderboard(obj) -> list[str]:
    """Errors of a leaderboard: JSON Schema first; if that passes, the semantic rules."""
    if isinstance(obj, dict) and obj.get("schema_version") == 1:
        return ["schema version 1 (adjacent-row statistics, before all-pairs tests): upgrade it with "
                "`zsqbench leaderboard restat FILE`"]
    errors = validation_errors(obj, "leaderboard")
    if errors:
        return errors
    proto = obj["protocol"]
    seen = set()
    for i, row in enumerate(obj["rows"]):
        where = f"rows/{i} ({row['method']} {row['model']}@{row['dataset']} W{row['wbits']}A{row['abits']})"
        key = (row["model"], row["dataset"], row["wbits"], row["abits"], row["method"])
        if key in seen:
            errors.append(f"{where}: duplicate row")
        seen.add(key)
        runs = row["runs"]
        mixed = {(r["protocol_version"], r["protocol_hash"]) for r in runs} - {(proto["version"], proto["hash"])}
        if mixed:
            errors.append(f"{where}: runs of another protocol version/hash than the leaderboard's "
                          f"(v{proto['version']} {proto['hash'][:8]}): "
                          + ", ".join(f"v{v} {h[:8]}" for v, h in sorted(mixed)))
        shas = teacher_weights(runs)
        if len(shas) > 1:
            errors.append(f"{where}: runs on different teacher weights " + ", ".join(s[:8] for s in sorted(shas)))
        codes = code_versions(runs)
        if len(codes) > 1:
            errors.append(f"{where}: runs of different code versions " + " | ".join(sorted(codes)))
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            errors.append(f"{where}: duplicate seeds {sorted(s for s in set(seeds) if seeds.count(s) > 1)}")
        if row["n"] != len(row["seeds"]) or row["n"] != len(row["final_top1"]):
            errors.append(f"{where}: n = {row['n']} but {len(row['seeds'])} seeds and "
                          f"{len(row['final_top1'])} final values")
        expect = row_from_runs(key, runs)
        for field in ("seeds", "final_top1", "diverged", "diverged_seeds"):
            if row[field] != expect[field]:
                errors.append(f"{where}: {field} {row[field]} does not match its runs ({expect[field]})")
        stats = summarize(row["final_top1"])
        for field in ("mean", "std"):
            if not _close(row[field], stats[field]):
                errors.append(f"{where}: {field} {row[field]} is not the {field} of final_top1 {row['final_top1']} "
                              f"({stats[field]})")
        if "power" in row:
            want = power_of(row, row["power"]["target"])
            if row["power"]["met"] != want["met"] or not _close(row["power"]["half_width"], want["half_width"]):
                errors.append(f"{where}: power {row['power']} does not match ci95 {row['ci95']} ({want})")
        if (row["ci95"] is None) != (stats["ci95"] is None) or (
                row["ci95"] and not all(_close(x, y) for x, y in zip(row["ci95"], stats["ci95"]))):
            errors.append(f"{where}: ci95 {row['ci95']} does not match final_top1 ({stats['ci95']})")
    if "significance" in obj:
        errors += significance_errors(obj)
    if "sizes" in obj:
        errors += size_errors(obj)
    if "transfer" in obj:
        errors += transfer_errors(obj)
    n_runs = sum(len(r["runs"]) for r in obj["rows"])
    if n_runs != obj["provenance"]["records"]:
        errors.append(f"provenance/records: {obj['provenance']['records']} but the rows hold {n_runs} runs")
    return errors


def size_errors(obj: dict) -> list[str]:
    """The ``sizes`` block agrees with itself and with the rows: each entry names a table of the leaderboard and
    only methods of that table, each method once; a packed student's bytes are the sum of its parts and its
    fraction of FP their ratio. (That the figures are what the code computes today: `leaderboard restat`.)"""
    errors = []
    tables = defaultdict(set)
    for r in obj["rows"]:
        tables[table_name(r)].add(r["method"])
    seen = set()
    for t in obj["sizes"]["tables"]:
        where = f"sizes ({t['table']})"
        if t["table"] not in tables:
            errors.append(f"{where}: no such table in the leaderboard")
            continue
        if t["table"] in seen:
            errors.append(f"{where}: duplicate table")
        seen.add(t["table"])
        named = [m for g in t["students"] for m in g["methods"]] + list(t["unsized"])
        if len(named) != len(set(named)):
            errors.append(f"{where}: a method is named twice")
        extra = set(named) - tables[t["table"]]
        if extra:
            errors.append(f"{where}: methods the table lacks: {', '.join(sorted(extra))}")
        for g in t["students"]:
            if not g["integer"]:
                continue
            parts = g["weight_code_bytes"] + g["scale_zero_point_bytes"] + g["other_bytes"] + g["index_bytes"]
            if g["bytes"] != parts:
                errors.append(f"{where}: packed bytes {g['bytes']} are not the sum of their parts ({parts})")
            if abs(g["fraction_of_fp"] - round(g["bytes"] / t["fp_state_dict_bytes"], 4)) > 1e-9:
                errors.append(f"{where}: fraction_of_fp {g['fraction_of_fp']} is not bytes / fp_state_dict_bytes")
    return errors


def significance_errors(obj: dict) -> list[str]:
    """The table statistics recomputed from the per-seed values: pairs, letters, rank intervals."""
    import copy
    rows = copy.deepcopy(obj["rows"])
    expect = add_significance(rows, obj["significance"]["alpha"])
    errors = []
    if not _same(obj["significance"], expect):
        errors.append("significance: the pairwise tests or validity do not match the per-seed values (recompute: "
                      "`zsqbench leaderboard restat`)")
    for row, want in zip(obj["rows"], rows):
        for field in ("letters", "rank_interval"):
            if row.get(field) != want[field]:
                errors.append(f"rows ({row['method']} {table_name(row)}): {field} {row.get(field)} does not match "
                              f"the per-seed values ({want[field]})")
    return errors


def _same(a, b) -> bool:
    """Equal, with floats compared to a relative 1e-6 (p-values recomputed by another scipy build)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and _close(a, b)
    return a == b


def check_leaderboard(obj, path) -> dict:
    errors = validate_leaderboard(obj)
    if errors:
        raise UserError(f"invalid leaderboard {path}: " + "; ".join(errors[:3])
                        + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""))
    return obj
