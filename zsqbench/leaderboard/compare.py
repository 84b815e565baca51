"""Compare results across seeds: input against input (the first is the reference) or every method against a
baseline method. An input is a run record, a directory of records, or a leaderboard (its rows keep the per-seed
values). Marks: ``+`` better / ``-`` worse (significant at alpha after Holm's correction over the comparisons of
one table: the same model, dataset and bits, against one reference), ``~`` not significant, ``?`` fewer than two
finished seeds on a side (no test), ``x`` protocol versions/hashes or teacher weights differ, or a side's row mixes
code versions (never compared, as asv does)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from zsqbench.spine.errors import UserError
from zsqbench.leaderboard.build import (check_leaderboard, check_seeds, check_teacher, code_versions, name_files,
                                        row_from_runs, run_entry, teacher_weights)
from zsqbench.leaderboard.collect import collect, require_clean
from zsqbench.leaderboard.stats import holm, min_pvalue, pvalue


@dataclass
class Side:
    label: str
    rows: dict = field(default_factory=dict)  # (protocol, model, dataset, wbits, abits, method) -> row


def method_label(rec: dict) -> str:
    """Off-protocol runs (ablations) are compared under their own label, e.g. ``gdfq [train.steps=200]``."""
    name = rec["method"]["name"]
    if not rec["off_protocol"]:
        return name
    return f"{name} [" + "; ".join(r.removeprefix("overrides: ") for r in rec["off_protocol"]) + "]"


def load_side(paths) -> Side:
    entries = defaultdict(list)
    for p in paths:
        c = collect([p], allow_leaderboards=True)
        require_clean(c, [p])
        for path, rec in c.records:
            entries[(rec["protocol"]["name"], rec["model"], rec["dataset"], rec["wbits"], rec["abits"],
                     method_label(rec))].append(run_entry(path, rec))
        for path, lb in c.leaderboards:
            check_leaderboard(lb, path)
            for row in lb["rows"]:
                entries[(lb["protocol"]["name"], row["model"], row["dataset"], row["wbits"], row["abits"],
                         row["method"])].extend(row["runs"])
    side = Side(" + ".join(map(str, paths)))
    for key, runs in entries.items():
        versions = defaultdict(list)
        for r in runs:
            versions[(r["protocol_version"], r["protocol_hash"])].append(r["record"])
        if len(versions) > 1:
            parts = [f"v{v} {h[:8]}: {name_files(ps, 2)}" for (v, h), ps in sorted(versions.items())]
            raise UserError(f"{side.label} mixes versions of protocol {key[0]!r} for {key[5]} on "
                            f"{key[1]}@{key[2]} W{key[3]}A{key[4]}: {'; '.join(parts)}")
        runs = sorted(runs, key=lambda r: r["seed"])
        check_seeds(key[1:], runs)
        check_teacher(key[1:], runs)
        (version, hsh), = versions
        side.rows[key] = {**row_from_runs(key[1:], runs), "protocol": {"name": key[0], "version": version,
                                                                       "hash": hsh},
                          "code_versions": sorted(code_versions(runs))}
    return side


def _summary(row: dict) -> dict:
    return {k: row[k] for k in ("n", "seeds", "final_top1", "mean", "std", "diverged")} | {
        "protocol_version": row["protocol"]["version"], "protocol_hash": row["protocol"]["hash"]}


def compare_rows(a: dict, b: dict, test: str, alpha: float) -> dict:
    out = {"ref": _summary(a), "new": _summary(b), "delta": None, "p": None}
    if (a["protocol"]["version"], a["protocol"]["hash"]) != (b["protocol"]["version"], b["protocol"]["hash"]):
        return out | {"mark": "x", "note": f"protocol v{a['protocol']['version']} {a['protocol']['hash'][:8]} vs "
                                           f"v{b['protocol']['version']} {b['protocol']['hash'][:8]}"}
    mixed = [f"{side} mixes code versions ({' | '.join(row['code_versions'])})"
             for side, row in (("reference", a), ("new", b)) if len(row.get("code_versions", [])) > 1]
    if mixed:  # seeds run by different code are not one sample: never tested as one
        return out | {"mark": "x", "note": "; ".join(mixed)}
    ta, tb = teacher_weights(a["runs"]), teacher_weights(b["runs"])
    if ta and tb and ta != tb:
        return out | {"mark": "x", "note": f"teacher weights {'/'.join(t[:8] for t in sorted(ta))} vs "
                                           f"{'/'.join(t[:8] for t in sorted(tb))}"}
    if a["mean"] is not None and b["mean"] is not None:
        out["delta"] = b["mean"] - a["mean"]
    p = pvalue(a["final_top1"], b["final_top1"], test)
    if p is None:
        return out | {"mark": "?", "note": "fewer than 2 finished seeds on a side"}
    note = None
    if min_pvalue(a["n"], b["n"], test) >= alpha:
        note = f"{test} cannot reach p < {alpha} with {a['n']} vs {b['n']} seeds"
    return out | {"p": p, "mark": None, "note": note}  # the mark waits for the family's correction (_result)


def _entry(key: tuple, ref_label: str, new_label: str, a: dict, b: dict, test: str, alpha: float) -> dict:
    protocol, model, dataset, w, a_bits, method = key
    return {"protocol": protocol, "model": model, "dataset": dataset, "wbits": w, "abits": a_bits,
            "method": method, "reference": ref_label, "input": new_label,
            **compare_rows(a, b, test, alpha)}


def base_method(label: str) -> str:
    """``gdfq [train.steps=200]`` -> ``gdfq`` (an ablation's label -> its method)."""
    return label.split(" [", 1)[0]


def labelled_pairs(ref_keys, new_keys) -> dict:
    """An A/B ablation made with ``--set`` labels each side's rows by its settings (``gdfq`` vs ``gdfq
    [train.steps=200]``), so no key is shared. Where a table (protocol, model, dataset, bits) holds exactly one
    unshared row of a method on each side, the two are that method's A and B: {ref key: new key}."""
    def by_cell(keys):
        cells = defaultdict(list)
        for k in keys:
            cells[k[:5] + (base_method(k[5]),)].append(k)
        return cells
    ref_cells, new_cells = by_cell(ref_keys), by_cell(new_keys)
    return {ref_cells[c][0]: new_cells[c][0] for c in ref_cells
            if len(ref_cells[c]) == 1 and len(new_cells.get(c, ())) == 1}


def compare_inputs(sides: list[Side], test: str, alpha: float, correction: str = "holm") -> dict:
    ref, *others = sides
    comps, unmatched = [], []
    for side in others:
        shared = set(ref.rows) & set(side.rows)
        pairs = labelled_pairs(set(ref.rows) - shared, set(side.rows) - shared)
        paired_new = set(pairs.values())
        for key in sorted(set(ref.rows) | set(side.rows), key=_sort_key):
            if key in shared:
                comps.append(_entry(key, ref.label, side.label, ref.rows[key], side.rows[key], test, alpha))
            elif key in pairs:  # the same method under two labels: an A/B of settings
                entry = _entry(key, ref.label, side.label, ref.rows[key], side.rows[pairs[key]], test, alpha)
                if key[5] != pairs[key][5]:
                    entry["method"] = f"{key[5]} → {pairs[key][5]}"
                comps.append(entry)
            elif key not in paired_new:
                unmatched.append({"key": _key_text(key), "only_in": ref.label if key in ref.rows else side.label})
    return _result("inputs", ref.label, comps, unmatched, test, alpha, correction)


def compare_baseline(side: Side, baseline: str, test: str, alpha: float, correction: str = "holm") -> dict:
    if not any(k[5] == baseline for k in side.rows):
        methods = sorted({k[5] for k in side.rows})
        raise UserError(f"baseline method {baseline!r} is not in the inputs (found: {', '.join(methods)})")
    comps, unmatched = [], []
    for key in sorted(side.rows, key=_sort_key):
        if key[5] == baseline:
            continue
        base_key = key[:5] + (baseline,)
        if base_key in side.rows:
            comps.append(_entry(key, baseline, side.label, side.rows[base_key], side.rows[key], test, alpha))
        else:
            unmatched.append({"key": _key_text(key), "only_in": f"no {baseline} run for this model and bits"})
    return _result("baseline", baseline, comps, unmatched, test, alpha, correction)


def correct(comps: list[dict], alpha: float, correction: str) -> None:
    """``p_adj`` and the mark of every tested comparison. One family per table (protocol, model, dataset, bits) and
    reference input: the question "which rows of this table changed" is asked once, so its false alarms are
    bounded at alpha as the leaderboard's letters are (``correction="none"`` keeps each p as it is)."""
    families = defaultdict(list)
    for c in comps:
        if c["p"] is not None:
            families[(c["protocol"], c["model"], c["dataset"], c["wbits"], c["abits"], c["input"])].append(c)
    for family in families.values():
        adjusted = holm([c["p"] for c in family]) if correction == "holm" else [c["p"] for c in family]
        for c, p_adj in zip(family, adjusted):
            c["p_adj"] = p_adj
            c["mark"] = "~" if p_adj >= alpha else "+" if c["delta"] > 0 else "-" if c["delta"] < 0 else "~"
    for c in comps:
        c.setdefault("p_adj", None)


def _result(mode, reference, comps, unmatched, test, alpha, correction="holm") -> dict:
    correct(comps, alpha, correction)
    for c in comps:
        c["published"] = published_for(c)
    return {"mode": mode, "reference": reference, "test": test, "correction": correction, "alpha": alpha,
            "comparisons": comps, "unmatched": unmatched, "worse": sum(c["mark"] == "-" for c in comps)}


def _sort_key(key):
    return key[0], key[1], key[2], key[3], key[4], key[5]


def _key_text(key) -> str:
    protocol, model, dataset, w, a, method = key
    return f"{method} {model}@{dataset} W{w}A{a} ({protocol})"


def published_for(c: dict) -> list[dict] | None:
    """Published paper numbers for a comparison row of the ``paper`` protocol (None where there are none)."""
    if c["protocol"] != "paper":
        return None
    return lookup_published(c["method"], c["model"], c["dataset"], c["wbits"], c["abits"])


def lookup_published(method, model, dataset, wbits, abits, strict: bool = False) -> list[dict] | None:
    """The papers' figures for one row (their best epoch on the test set), or None. Without ``strict`` a missing
    or invalid published table gives None instead of an error."""
    try:
        from zsqbench.leaderboard.published import published_rows
    except ImportError:
        return None
    try:
        rows = published_rows(method, model, dataset, wbits, abits)
    except UserError:
        if strict:
            raise
        return None
    return list(rows) or None
