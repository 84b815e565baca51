"""Rich tables for a leaderboard and for a comparison."""
from __future__ import annotations

from itertools import groupby

from rich.console import Console
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


def leaderboard_table(lb: dict, published: bool = False, console: Console | None = None) -> None:
    console = console or Console()
    if "significance" not in lb:  # built before the adjacent-row tests existed: derive them from the seeds
        import copy
        from zsqbench.leaderboard.build import add_significance
        lb = copy.deepcopy(lb)
        lb["significance"] = add_significance(lb["rows"])
    rows = sorted(lb["rows"], key=lambda r: (_group_key(r), _row_order(r)))
    pub = {}
    if published:
        pub = {id(r): lookup_published(r["method"], r["model"], r["dataset"], r["wbits"], r["abits"], strict=True)
               for r in rows}
    show_pub = any(pub.values())
    p = lb["protocol"]
    t = Table(title=f"leaderboard · protocol {p['name']} v{p['version']} ({p['hash'][:8]}) · headline: final "
                    "top-1, mean ± std over seeds", title_justify="left")
    right = {"justify": "right"}
    columns = [("model", {}), ("bits", {}), ("method", {"style": "bold"}), ("n", right), ("final top-1 %", right),
               ("grp", {}), ("vs next", right),
               ("95 % CI", {}), ("per seed", {}), ("best on test % (legacy)", right)]
    columns += [("published % (best on test)", {})] * show_pub
    columns += [("gap", right), ("FP %", right), ("wall s", right), ("step ms", right), ("flags", {})]
    for name, kw in columns:
        t.add_column(name, **kw)
    for _, group in groupby(rows, key=_group_key):
        group = list(group)
        best_mean = _best([r["mean"] for r in group])
        best_bot = _best([r["best_on_test_mean"] for r in group])
        fastest = _best([r["wall_s_mean"] for r in group], min)
        for i, r in enumerate(group):
            final = "—" if r["mean"] is None else (
                f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] is not None else ""))
            cells = [f"{r['model']}@{r['dataset']}" if i == 0 else "", f"W{r['wbits']}A{r['abits']}" if i == 0 else "",
                     r["method"], str(r["n"]) + (f"/{r['n'] + r['diverged']}" if r["diverged"] else ""),
                     _mark(final, r["mean"] is not None and r["mean"] == best_mean),
                     _group_letter(r.get("group")), _vs_next(r.get("significance")),
                     "—" if r["ci95"] is None else f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
                     " / ".join(f"{v:.2f}" for v in r["final_top1"]) or "—",
                     _mark(_f(r["best_on_test_mean"]), r["best_on_test_mean"] is not None
                           and r["best_on_test_mean"] == best_bot),
                     *([_published_text(pub[id(r)])] if show_pub else []),
                     _f(r["gap_mean"], "{:+.2f}"), _f(r["fp_top1"]),
                     _mark(_f(r["wall_s_mean"], "{:.1f}"), r["wall_s_mean"] is not None
                           and r["wall_s_mean"] == fastest),
                     _f(r["step_s_mean"] and r["step_s_mean"] * 1000, "{:.1f}")]
            cells.append("⚠ " + ", ".join(r["flags"]) if r["flags"] else "")
            t.add_row(*cells, style="red" if r["diverged"] else None, end_section=i == len(group) - 1)
    pv = lb["provenance"]
    commits = ", ".join(c[:7] for c in pv["git_commits"])
    dirty = f" ({pv['dirty_records']} dirty)" if pv["dirty_records"] else ""
    t.caption = (f"{pv['records']} records from {pv['inputs']} input(s) · commits {commits}{dirty} · "
                 f"{'; '.join(pv['devices'])} · runs' wall time {duration(pv['total_wall_s'])} · "
                 f"built {pv['created']}")
    t.caption_justify = "left"
    console.print(t)
    console.print(f"{STAR} best per model and bits (mean final top-1; best on test; fastest). Best on test is "
                  "selected on the test set (legacy, as papers report); the headline is the final student.",
                  style="dim", highlight=False)
    sig = lb["significance"]
    console.print(f"grp: rows sharing a letter are not told apart; vs next: Δ to the next row and its Welch p, "
                  f"{sig['correction'].capitalize()}-corrected over each table's {sig['comparisons']} adjacent pairs "
                  f"in all (* = p < {sig['alpha']}).", style="dim", highlight=False)
    if published and not show_pub:
        console.print("no published numbers for these models/datasets/bits (or the published table is not "
                      "available)", style="dim", highlight=False)


def _group_letter(group: int | None) -> str:
    if not group:
        return ""
    letters = ""
    while group:
        group, rest = divmod(group - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


def _vs_next(sig: dict | None) -> str:
    if not sig:
        return ""
    return f"{sig['delta']:+.2f} p={sig['p_holm']:.2g}" + ("*" if sig["differs"] else " ")


def _side_text(s: dict) -> str:
    if s["mean"] is None:
        return f"— (n={s['n']})"
    return f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if s["std"] is not None else "") + f" (n={s['n']})" + (
        f" [red]{s['diverged']} div.[/]" if s["diverged"] else "")


def comparison_table(result: dict, console: Console | None = None) -> None:
    console = console or Console()
    comps = result["comparisons"]
    baseline = result["mode"] == "baseline"
    several = len({c["input"] for c in comps}) > 1 and not baseline
    show_pub = any(c.get("published") for c in comps)
    what = f"every method vs {result['reference']}" if baseline else f"against {result['reference']}"
    t = Table(title=f"compare · {what} · {result['test']}, alpha {result['alpha']}", title_justify="left")
    for name, kw in [("protocol", {}), ("model", {}), ("bits", {}), ("method", {"style": "bold"})]:
        t.add_column(name, **kw)
    if several:
        t.add_column("input")
    t.add_column(f"{result['reference']} %" if baseline else "reference %", justify="right")
    t.add_column("top-1 %", justify="right")
    for name in ("Δ", "p"):
        t.add_column(name, justify="right")
    t.add_column("")
    if show_pub:
        t.add_column("published % (best on test)")
    t.add_column("note", style="dim")
    for c in comps:
        x = c["mark"] == "x"
        cells = [c["protocol"], f"{c['model']}@{c['dataset']}", f"W{c['wbits']}A{c['abits']}", c["method"]]
        if several:
            cells.append(c["input"])
        cells += ["—" if x else _side_text(c["ref"]), "—" if x else _side_text(c["new"]),
                  _f(c["delta"], "{:+.2f}"), _f(c["p"], "{:.3g}"),
                  f"[{MARK_STYLE[c['mark']]}]{c['mark']}[/]"]
        if show_pub:
            cells.append(_published_text(c.get("published")))
        cells.append(c.get("note") or "")
        t.add_row(*cells)
    console.print(t)
    console.print("+ better / - worse (significant at alpha) · ~ not significant · ? fewer than 2 finished seeds "
                  "on a side · x protocol versions differ (not compared)", style="dim", highlight=False)
    for u in result["unmatched"]:
        console.print(f"not compared: {u['key']} (only in {u['only_in']})" if not baseline else
                      f"not compared: {u['key']} ({u['only_in']})", style="dim", highlight=False)
