"""The table ``zsqbench reproduce`` prints (kept apart from the re-running, which needs no rich)."""
from __future__ import annotations

from rich.markup import escape
from rich.table import Table


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def table(report: dict) -> Table:
    t = Table(title=escape(f"reproduce {report['input']} ({report['kind']}); tolerance ±{report['tolerance']:g} "
                           f"points; new records in {report['out']}"), title_justify="left")
    t.add_column("run", overflow="fold")
    t.add_column("threads", justify="right")
    t.add_column("original", justify="right")
    t.add_column("new", justify="right")
    t.add_column("Δ", justify="right")
    t.add_column("verdict")
    t.add_column("what differs", overflow="fold")
    style = {"agrees": "green", "differs": "red", "failed": "red", "not run": "dim"}
    for r in report["results"]:
        new = r.get("new") or {}
        delta = r.get("delta")
        what = r.get("error") or "; ".join(r.get("differs") or []) or ("—" if r["verdict"] != "not run"
                                                                         else r["command"])
        t.add_row(escape(r["label"]), str(r["threads"]), _fmt(r["original"]["final_top1"]),
                  _fmt(new.get("final_top1")), "—" if delta is None else f"{delta:+.2f}",
                  f"[{style.get(r['verdict'], 'bold')}]{r['verdict']}[/]", escape(what))
    return t
