"""Rich tables for a leaderboard and for a comparison."""
from __future__ import annotations

from itertools import groupby

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zsqbench.leaderboard.compare import lookup_published

STAR = "★"
MARK_STYLE = {"+": "bold green", "-": "bold red", "~": "dim", "?": "yellow", "x": "magenta"}


def _f(x, fmt="{:.2f}", none="—"):
    return none if x is None else fmt.format(x)


def duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _published_text(rows) -> str:
    if not rows:
        return "—"
    out = []
    for p in rows:
        src = p.get("source") or {}
        table = src.get("table") or ("README" if src.get("readme") else None)
        where = " ".join(str(s) for s in (src.get("reported_by") or src.get("paper"), table) if s)
        out.append(f"{p['top1']:.2f}" + (f" ({where})" if where else ""))
    return "\n".join(out)


def _best(values, pick=max):
    """The best value, or None when there is nothing to single out (no values, or all equal)."""
    vals = [v for v in values if v is not None]
    return pick(vals) if len(set(vals)) > 1 else None


def _mark(text: str, is_best: bool) -> str:
    return f"[bold]{text} {STAR}[/]" if is_best else text


def _group_key(r):
    return r["model"], r["dataset"], r["wbits"], r["abits"]


def _row_order(r):
    return -(r["mean"] if r["mean"] is not None else -1e9), r["method"]


# the columns a leaderboard shows without --wide: what fits 80 columns (the rest: --wide or --json)
NARROW_LEADERBOARD = ("model", "bits", "method", "n", "final top-1 %", "grp", "rank", "best on test % (legacy)")


def leaderboard_table(lb: dict, published: bool = False, console: Console | None = None, wide: bool = False) -> None:
    console = console or Console()
    from zsqbench.leaderboard.build import with_significance
    lb = with_significance(lb)
    rows = sorted(lb["rows"], key=lambda r: (_group_key(r), _row_order(r)))
    pub = {}
    if published:
        pub = {id(r): lookup_published(r["method"], r["model"], r["dataset"], r["wbits"], r["abits"], strict=True)
               for r in rows}
    show_pub = any(pub.values())
    p = lb["protocol"]
    t = Table(title=escape(f"leaderboard · protocol {p['name']} v{p['version']} ({p['hash'][:8]}) · headline: final "
                           "top-1, mean ± std over seeds"), title_justify="left",
              box=None if not wide else box.HEAVY_HEAD, padding=(0, 1))
    right = {"justify": "right"}
    columns = [("model", {}), ("bits", {}), ("method", {"style": "bold"}), ("n", right), ("final top-1 %", right),
               ("grp", {}), ("rank", right),
               ("95 % CI", {}), ("per seed", {}), ("best on test % (legacy)", right)]
    columns += [("published % (best on test)", {})] * show_pub
    columns += [("gap", right), ("FP %", right), ("size", right), ("wall s", right), ("row cost", right),
                ("step ms", right), ("flags", {})]
    shown = [i for i, (name, _) in enumerate(columns) if wide or name in NARROW_LEADERBOARD]
    for i in shown:
        name, kw = columns[i]
        t.add_column(name, overflow="fold", **kw)  # fold, never cut a cell to "resne…"
    noted = [r for r in rows if r.get("note")]  # numbered in table order, told below the table
    note_no = {id(r): k for k, r in enumerate(noted, 1)}
    from zsqbench.export.sizes import measured_line, row_size, size_line, table_sizes
    from zsqbench.leaderboard.build import row_cost_s, table_name
    for _, group in groupby(rows, key=_group_key):
        group = list(group)
        sizes = table_sizes(lb, table_name(group[0]))
        best_mean = _best([r["mean"] for r in group])
        best_bot = _best([r["best_on_test_mean"] for r in group])
        fastest = _best([r["wall_s_mean"] for r in group], min)
        for i, r in enumerate(group):
            final = "—" if r["mean"] is None else (
                f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] is not None else ""))
            cells = [escape(f"{r['model']}@{r['dataset']}") if i == 0 else "",
                     f"W{r['wbits']}A{r['abits']}" if i == 0 else "",
                     escape(r["method"]) + (f" [{note_no[id(r)]}]" if id(r) in note_no else ""),
                     str(r["n"]) + (f"/{r['n'] + r['diverged']}" if r["diverged"] else ""),
                     _mark(final, r["mean"] is not None and r["mean"] == best_mean),
                     r.get("letters") or "—", _rank_text(r.get("rank_interval")),
                     "—" if r["ci95"] is None else f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
                     " / ".join(f"{v:.2f}" for v in r["final_top1"]) or "—",
                     _mark(_f(r["best_on_test_mean"]), r["best_on_test_mean"] is not None
                           and r["best_on_test_mean"] == best_bot),
                     *([_published_text(pub[id(r)])] if show_pub else []),
                     _f(r["gap_mean"], "{:+.2f}"), _f(r["fp_top1"]), row_size(sizes, r["method"])[1],
                     _mark(_f(r["wall_s_mean"], "{:.1f}"), r["wall_s_mean"] is not None
                           and r["wall_s_mean"] == fastest), duration(row_cost_s(r)),
                     _f(r["step_s_mean"] and r["step_s_mean"] * 1000, "{:.1f}")]
            cells.append(escape("⚠ " + ", ".join(r["flags"])) if r["flags"] else "")
            t.add_row(*(cells[c] for c in shown), style="red" if r["diverged"] else None,
                      end_section=i == len(group) - 1)
    pv = lb["provenance"]
    commits = ", ".join(c[:7] for c in pv["git_commits"])
    dirty = f" ({pv['dirty_records']} dirty)" if pv["dirty_records"] else ""
    t.caption = escape(f"{pv['records']} records from {pv['inputs']} input(s) · commits {commits}{dirty} · "
                 f"{'; '.join(pv['devices'])} · runs' wall time {duration(pv['total_wall_s'])} · "
                 f"built {pv['created']}")
    t.caption_justify = "left"
    if wide:
        from zsqbench.leaderboard.wide import fit
        fit(console, t)
    console.print(t)
    for k, r in enumerate(noted, 1):
        console.print(escape(f"[{k}] {r['method']} {r['model']}@{r['dataset']} W{r['wbits']}A{r['abits']}: "
                             f"{r['note']}"), highlight=False)
    if not wide:
        console.print("more columns (95 % CI, per seed, gap, FP, model size, wall time per run and per row, step time, flags): --wide; "
                      "everything: --json", style="dim", highlight=False)
    console.print(f"{STAR} best per model and bits (mean final top-1; best on test; fastest). Best on test is "
                  "selected on the test set (legacy, as papers report); the headline is the final student.",
                  style="dim", highlight=False)
    sig = lb["significance"]
    boot = sig["rank_interval"]
    console.print(f"grp: rows sharing a letter are not separated (Games-Howell over every pair of a table's rows, "
                  f"family-wise alpha {sig['alpha']}; {sig['comparisons']} pairs in all; — : under 2 finished seeds); "
                  f"rank: the row's {boot['level']:.0%} rank interval over {boot['resamples']} bootstrap resamples of "
                  f"the seeds (docs/statistics.md).", style="dim", highlight=False)
    for table in sig.get("tables", []):
        console.print(escape(validity_line(table)), style="dim", highlight=False)
    if lb.get("transfer"):
        transfer_tables(lb["transfer"], console, wide)
    for entry in (lb.get("sizes") or {}).get("tables", []):
        bits = entry["table"].rsplit(" ", 1)[-1]
        console.print(escape(size_line(entry, bits)), style="dim", highlight=False)
    for r in rows:
        line = measured_line(r)
        if line:
            console.print(escape(line), highlight=False)
    if wide and any("power" in r for r in rows):
        console.print(f"CI ±h > t (flags): the row's 95 % CI half-width h misses the target t its table has in the "
                      f"notes file ({lb['provenance'].get('notes', '?')}); \\[k]: a note on the row, above.",
                      style="dim", highlight=False)
    if published and not show_pub:
        console.print("no published numbers for these models/datasets/bits (or the published table is not "
                      "available)", style="dim", highlight=False)


def transfer_tables(block: dict, console: Console, wide: bool = False) -> None:
    """The ``transfer`` block: per held-out teacher and bits, each method's mean there beside its mean on the
    teacher the settings were chosen on."""
    for t in block["tables"]:
        floor = t["floor"]
        title = (f"transfer · {t['held_out']}, held out from choosing settings, beside {t['chosen_on']} (mean final "
                 "top-1 %)")
        console.print(escape(title), highlight=False, soft_wrap=True)
        table = Table(box=None if not wide else box.HEAVY_HEAD, padding=(0, 1))
        right = {"justify": "right"}
        for name, kw in [("method", {"style": "bold"}), ("chosen on", right), ("held out", right), ("change", right),
                         (f"above {floor['method']}" if floor else "above floor", right)]:
            table.add_column(escape(name), overflow="fold", **kw)
        for r in t["rows"]:
            short = r["above_floor"] is not None and r["above_floor"] < block["margin"]
            table.add_row(escape(r["method"]) + (f" ({r['role']})" if r["role"] else ""), _f(r["chosen_on_mean"]),
                          _f(r["held_out_mean"]), _f(r["change"], "{:+.2f}"),
                          ("[red]" + _f(r["above_floor"], "{:+.2f}") + "[/]") if short
                          else _f(r["above_floor"], "{:+.2f}"))
        console.print(table)
        console.print(escape("; ".join(transfer_notes(block, t))), style="dim", highlight=False)


def transfer_notes(block: dict, t: dict) -> list[str]:
    """What one transfer table says below its rows (the terminal and the page): the rank correlation, who keeps
    the margin over the floor, and the methods only one teacher has."""
    tau, floor = t["kendall_tau"], t["floor"]
    notes = [f"the two rankings' Kendall τ {tau['tau']:+.2f} (p {tau['p']:.2g}, {tau['n']} methods)" if tau
             else "too few methods on both teachers for a rank correlation"]
    if floor:
        margin = f"{block['margin']:g} points above {floor['method']} on the held-out teacher"
        measured = [r for r in t["rows"] if not r["role"] and r["above_floor"] is not None]
        notes.append(f"under {margin}: {', '.join(t['below_margin'])}" if t["below_margin"]
                     else f"every method keeps {margin}" if measured
                     else f"no method but the floor and the ceiling on both teachers yet, so none is held to {margin}")
    notes += [f"only on {t['held_out']}: {', '.join(t['only_held_out'])}"] * bool(t["only_held_out"])
    notes += [f"only on {t['chosen_on']}: {', '.join(t['only_chosen_on'])}"] * bool(t["only_chosen_on"])
    return notes


def validity_line(table: dict) -> str:
    """What one table's ranking is worth (reported, never tuned to; docs/statistics.md), from its entry in the
    leaderboard's ``significance.tables``."""
    v = table.get("validity") or {}
    parts = []
    if v.get("rank_stability") is not None:
        parts.append(f"rank stability τ {v['rank_stability']:.2f} over bootstrap resamples")
    tau = v.get("kendall_tau_vs_papers")
    parts.append(f"vs the papers ({tau['against']}, {tau['n']} methods) τ {tau['tau']:+.2f} (p {tau['p']:.2g})"
                 if tau else "no paper ranking to compare with")
    gap = v.get("best_on_test_gap")
    if gap is not None:
        parts.append(f"best-on-test gap {gap['mean']:.2f} (max {gap['max']:.2f})"
                     + (": one evaluation per run" if gap["max"] == 0 else ""))
    return f"validity · {table['table']}: " + "; ".join(parts)


def _rank_text(interval: list[int] | None) -> str:
    if not interval:
        return "—"
    lo, hi = interval
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _side_text(s: dict) -> str:
    if s["mean"] is None:
        return f"— (n={s['n']})"
    return f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "") + f" (n={s['n']})" + (
        f" [red]{s['diverged']} div.[/]" if s["diverged"] else "")


def _mean_text(s: dict) -> str:
    return "—" if s["mean"] is None else f"{s['mean']:.2f}" + (" [red]div.[/]" if s["diverged"] else "")


def comparison_table(result: dict, console: Console | None = None, wide: bool = False) -> None:
    """The comparison as a table. Narrow (default) fits 80 columns: means only, one protocol column only when the
    rows span several, notes as numbered lines below; ``wide`` shows std, n, inputs and notes in the table."""
    console = console or Console()
    comps = result["comparisons"]
    baseline = result["mode"] == "baseline"
    several = len({c["input"] for c in comps}) > 1 and not baseline
    protocols = sorted({c["protocol"] for c in comps})
    show_protocol = wide or len(protocols) > 1
    show_pub = wide and any(c.get("published") for c in comps)
    what = f"every method vs {result['reference']}" if baseline else f"against {result['reference']}"
    on = "" if show_protocol else f" · protocol {protocols[0]}"
    corrected = result.get("correction", "none") != "none"
    t = Table(title=escape(f"compare · {what}{on} · {result['test']}"
                           + (f", {result['correction'].capitalize()} per table" if corrected else "")
                           + f", alpha {result['alpha']}"), title_justify="left",
              box=None if not wide else box.HEAVY_HEAD, padding=(0, 1))
    columns = [("protocol", {})] * show_protocol + [("model", {}), ("bits", {}), ("method", {"style": "bold"})]
    columns += [("input", {})] * (several and wide)
    columns += [(f"{result['reference']} %" if baseline else "reference %", {"justify": "right"}),
                ("top-1 %", {"justify": "right"}), ("Δ", {"justify": "right"}),
                (f"p ({result['correction']})" if corrected else "p", {"justify": "right"}),
                ("", {})]
    columns += [("published % (best on test)", {})] * show_pub + [("note", {"style": "dim"})] * wide
    for name, kw in columns:
        t.add_column(escape(name), overflow="fold", **kw)
    side = _side_text if wide else _mean_text
    notes = []
    for c in comps:
        x = c["mark"] == "x"
        cells = [escape(c["protocol"])] * show_protocol + [escape(f"{c['model']}@{c['dataset']}"),
                                                           f"W{c['wbits']}A{c['abits']}", escape(c["method"])]
        if several and wide:
            cells.append(escape(c["input"]))
        mark = f"[{MARK_STYLE[c['mark']]}]{c['mark']}[/]"
        if c.get("note") and not wide:
            notes.append(f"({len(notes) + 1}) {c['method']} {c['model']}@{c['dataset']} W{c['wbits']}A{c['abits']}"
                         + (f" [{c['input']}]" if several else "") + f": {c['note']}")
            mark += f" ({len(notes)})"
        cells += ["—" if x else side(c["ref"]), "—" if x else side(c["new"]),
                  _f(c["delta"], "{:+.2f}"), _f(c.get("p_adj", c["p"]), "{:.3g}"), mark]
        if show_pub:
            cells.append(escape(_published_text(c.get("published"))))
        if wide:
            cells.append(escape(c.get("note") or ""))
        t.add_row(*cells)
    if wide:
        from zsqbench.leaderboard.wide import fit
        fit(console, t)
    console.print(t)
    for note in notes:
        console.print(escape(note), style="dim", highlight=False, soft_wrap=True)
    console.print("+ better / - worse (significant at alpha" + (", p corrected over each table's comparisons"
                                                              if corrected else "") + ") · ~ not significant · "
                  "? fewer than 2 finished seeds "
                  "on a side · x protocol versions or teacher weights differ, or a side mixes code versions (not "
                  "compared)" + ("" if wide else " · more columns: --wide, everything: --json"), style="dim",
                  highlight=False)
    for u in result["unmatched"]:
        console.print(escape(f"not compared: {u['key']} (only in {u['only_in']})" if not baseline else
                             f"not compared: {u['key']} ({u['only_in']})"), style="dim", highlight=False)
