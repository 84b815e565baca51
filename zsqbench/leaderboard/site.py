"""``zsqbench leaderboard site``: a self-contained static site (HTML + CSS + SVG/PNG, one small sorting script)
from leaderboard JSONs and, where they are on this machine, the run records they were built from.

The site is a pure function of its inputs: the leaderboards (every table cell, the final-top-1, accuracy-vs-bits
and accuracy-vs-cost plots come from them alone) and the records their rows name (``runs[].record``; learning
curves, synthetic-set diagnostics and the cached synthetic-image previews need them). A record that is missing, or
that no longer matches its leaderboard run (seed, final top-1, protocol hash), is not used and the page says so.
Plots are SVG with a fixed hash salt and no date, so the same inputs give byte-identical files; ``site.json``
holds each leaderboard's sha256, how many records were used and the sha256 of every file.

Bad input (a missing file, JSON that is not a leaderboard, an invalid leaderboard, an output path that is a file
or a folder that is not a zsqbench site) raises UserError; the site is built in a temporary folder beside the
output and moved into place only when complete, so nothing partial is ever left.
"""
from __future__ import annotations

import hashlib
import html
import json
import math
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from io import StringIO
from itertools import groupby
from pathlib import Path

import click

from zsqbench.leaderboard.build import row_cost_s
from zsqbench.leaderboard.show import transfer_notes, validity_line
from zsqbench.spine.errors import UserError

SITE_KIND = "zsqbench-site"
SITE_FORMAT = 1
MANIFEST = "site.json"
ASSETS = ("style.css", "sort.js")
PUBLISHED_HINT = "baselines/published.json"


# --- inputs ----------------------------------------------------------------------------------------------------

@dataclass
class RunView:
    """One leaderboard run and, when found and consistent, its record."""
    run: dict
    record: dict | None = None
    record_path: Path | None = None
    note: str = ""          # why the record is not used ("" when it is)


@dataclass
class Board:
    path: str               # as given on the command line
    sha256: str
    lb: dict
    slug: str = ""
    runs: dict = field(default_factory=dict)  # (row index, seed) -> RunView


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_board(path: str) -> Board:
    from zsqbench.leaderboard.build import check_leaderboard, with_significance
    from zsqbench.leaderboard.collect import looks_like_leaderboard
    p = Path(path)
    if not p.is_file():
        raise UserError(f"no such leaderboard file: {path}" + (" (a folder; give the leaderboard JSON)"
                                                                 if p.is_dir() else ""))
    try:
        data = p.read_bytes()
        obj = json.loads(data.decode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not JSON: {e}") from None
    if not looks_like_leaderboard(obj):
        raise UserError(f"{path} is not a zsqbench leaderboard (build one with `zsqbench leaderboard build`)")
    return Board(path=path, sha256=_sha256(data), lb=with_significance(check_leaderboard(obj, path)))


def record_candidates(run_path: str, board_path: str, records_root: str | None) -> list[Path]:
    """Where a run's record may be: as written when its path is absolute; else under ``records_root`` when given,
    else under the leaderboard's folder, its parent (a repository's ``leaderboard/`` sits one below the folder
    the sweep ran in) and the current folder."""
    p = Path(run_path)
    if p.is_absolute():
        return [p]
    if records_root is not None:
        return [Path(records_root) / p]
    lb_dir = Path(board_path).resolve().parent
    return [lb_dir / p, lb_dir.parent / p, Path.cwd() / p]


def attach_records(board: Board, records_root: str | None, use_records: bool) -> None:
    from zsqbench.record.io import record_errors
    for i, row in enumerate(board.lb["rows"]):
        for run in row["runs"]:
            view = RunView(run)
            board.runs[(i, run["seed"])] = view
            if not use_records:
                view.note = "records not read (--no-records)"
                continue
            found = next((c for c in record_candidates(run["record"], board.path, records_root) if c.is_file()),
                         None)
            if found is None:
                view.note = "record not available when this page was built"
                continue
            try:
                rec = json.loads(found.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                view.note = "record unreadable"
                continue
            if not isinstance(rec, dict) or record_errors(rec):
                view.note = "record fails the run-record checks (schema, consistency or content digest)"
                continue
            if (rec.get("seed"), rec.get("final_top1"), rec["protocol"].get("hash")) != (
                    run["seed"], run["final_top1"], run["protocol_hash"]):
                view.note = "record does not match the leaderboard run (seed, final top-1 or protocol hash)"
                continue
            view.record, view.record_path = rec, found


# --- small formatting helpers ------------------------------------------------------------------------------------

def esc(x) -> str:
    return html.escape(str(x), quote=True)


def slugify(*parts) -> str:
    return re.sub(r"[^a-z0-9]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")


def num(x, fmt="{:.2f}", none="—") -> str:
    return none if x is None else fmt.format(x)


def sort_value(x) -> str:
    """data-sort attribute: numbers sort numerically; missing values sort last either way (empty)."""
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))


def bits_label(w, a) -> str:
    return f"W{w}A{a}"


def teacher_label(row) -> str:
    return f"{row['model']}@{row['dataset']}"


def run_command(proto: dict, row: dict, seed: int) -> str:
    return shlex.join(["zsqbench", "run", "--method", row["method"], "--model", teacher_label(row),
                       "--wbits", str(row["wbits"]), "--abits", str(row["abits"]), "--protocol", proto["name"],
                       "--seed", str(seed)])


def reproduce_command(board_path: str, row: dict, seed: int) -> str:
    """The command that re-runs one leaderboard run from its provenance and compares (frontends/reproduce.py)."""
    return shlex.join(["zsqbench", "reproduce", board_path, "--rows",
                       f"{row['method']}/{teacher_label(row)}/{bits_label(row['wbits'], row['abits'])}",
                       "--seeds", str(seed)])


def _records_used_text(found: int, runs: int) -> str:
    if not found:
        return (f"none of the {runs} run records: this page was built from the leaderboard alone")
    return f"{found} of the {runs} run records were available when this page was built"


def group_key(row) -> tuple:
    return row["model"], row["dataset"], row["wbits"], row["abits"]


def row_order(row) -> tuple:
    return -(row["mean"] if row["mean"] is not None else -1e9), row["method"]


# --- plots -------------------------------------------------------------------------------------------------------

SVG_RC = {"svg.hashsalt": "zsqbench-site", "svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
          "font.family": "DejaVu Sans", "axes.spines.top": False, "axes.spines.right": False}
SVG_METADATA = {"Date": None, "Creator": "zsqbench leaderboard site"}


class Plotter:
    """Writes matplotlib figures as deterministic SVG files under ``img/``."""

    def __init__(self, root: Path, methods: list[str]):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("the site needs matplotlib: pip install matplotlib (a zsqbench dependency)") from None
        self.root = root
        (root / "img").mkdir(parents=True, exist_ok=True)
        from matplotlib import colormaps
        cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
        self.colors = {m: cmap(i % cmap.N) for i, m in enumerate(sorted(methods))}

    def figure(self, w, h):
        from matplotlib.figure import Figure
        return Figure(figsize=(w, h), layout="constrained")

    def save(self, fig, name: str) -> str:
        import matplotlib
        with matplotlib.rc_context(SVG_RC):
            buf = StringIO()
            fig.savefig(buf, format="svg", metadata=SVG_METADATA)
        (self.root / "img" / name).write_text(buf.getvalue(), encoding="utf-8")
        return f"img/{name}"

    def final_top1(self, rows: list[dict], floor: float | None, ceiling: float | None, title: str, name: str):
        import matplotlib
        with matplotlib.rc_context(SVG_RC):
            rows = sorted(rows, key=row_order, reverse=True)  # best at the top
            values = [v for r in rows for v in r["final_top1"]] + [x for x in (floor, ceiling) if x is not None]
            lo = max(0.0, math.floor(min(values, default=0) - 2))
            hi = min(100.0, math.ceil(max(values, default=100) + 2))
            zoom = zoom_rows(rows)
            zlo = zhi = None
            if zoom:
                zvalues = [v for r in zoom for v in r["final_top1"]]
                zlo, zhi = min(zvalues) - 0.3, max(zvalues) + 0.3
                if (hi - lo) < 4 * (zhi - zlo):
                    zoom = []  # the full axis already separates them
            h_main = 0.34 * len(rows) + 1.3
            h_zoom = 0.34 * len(zoom) + 1.1 if zoom else 0
            fig = self.figure(6.8, h_main + h_zoom)
            if zoom:
                ax, zax = fig.subplots(2, 1, gridspec_kw={"height_ratios": [h_main, h_zoom]})
            else:
                ax, zax = fig.add_subplot(), None
            self._final_axes(ax, rows, lo, hi, floor, ceiling)
            ax.set_xlabel("final top-1 % (dots: seeds · bar: 95 % CI, clipped to the axis · |: mean)")
            ax.set_title(title, loc="left")
            if zax is not None:
                self._final_axes(zax, list(reversed(sorted(zoom, key=row_order))), zlo, zhi,
                                 floor if floor is not None and zlo <= floor <= zhi else None,
                                 ceiling if ceiling is not None and zlo <= ceiling <= zhi else None)
                zax.set_title(f"zoom: the {len(zoom)} leading methods, {zlo:.1f}–{zhi:.1f} %", loc="left",
                              fontsize=9)
            return self.save(fig, name)

    def _final_axes(self, ax, rows: list[dict], lo: float, hi: float, floor, ceiling) -> None:
        for y, r in enumerate(rows):
            c = self.colors[r["method"]]
            if r["ci95"]:
                a, b = max(lo, r["ci95"][0]), min(hi, r["ci95"][1])
                ax.plot([a, b], [y, y], color=c, lw=2.2, alpha=0.45, solid_capstyle="butt")
            n = len(r["final_top1"])
            offsets = [(k - (n - 1) / 2) * 0.13 for k in range(n)]
            ax.scatter(r["final_top1"], [y + o for o in offsets], s=16, color=c, zorder=3,
                       edgecolors="white", linewidths=0.5)
            if r["mean"] is not None:
                ax.plot([r["mean"]], [y], marker="|", ms=14, mew=2, color="black", zorder=4)
            if r["diverged"]:
                ax.annotate(f"{r['diverged']} diverged", (lo, y), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=7, color="#b00")
        if floor is not None:
            ax.axvline(floor, color="#666", ls="--", lw=1)
            ax.annotate(f"noise floor {floor:.2f}", (floor, 1), xycoords=("data", "axes fraction"),
                        xytext=(3, -2), textcoords="offset points", fontsize=7, va="top", color="#444")
        if ceiling is not None:
            ax.axvline(ceiling, color="#c0392b", lw=1)
            ax.annotate(f"FP {ceiling:.2f}", (ceiling, 0), xycoords=("data", "axes fraction"),
                        xytext=(-3, 2), textcoords="offset points", fontsize=7, ha="right", color="#c0392b")
        ax.set_yticks(range(len(rows)), [r["method"] for r in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.set_xlim(lo, hi)
        ax.grid(axis="x", alpha=0.3)

    def cost(self, rows: list[dict], floor, ceiling, title: str, name: str):
        import matplotlib
        with matplotlib.rc_context(SVG_RC):
            fig = self.figure(6.8, 3.6)
            ax = fig.add_subplot()
            for r in sorted(rows, key=lambda r: r["method"]):
                runs = [u for u in r["runs"] if u["status"] == "ok" and u["final_top1"] is not None]
                if not runs:
                    continue
                c = self.colors[r["method"]]
                ax.scatter([u["total_s"] for u in runs], [u["final_top1"] for u in runs], s=14, color=c, alpha=0.6)
                ax.scatter([r["wall_s_mean"]], [r["mean"]], s=60, color=c, edgecolors="black", linewidths=0.8,
                           zorder=3, label=r["method"])
                ax.annotate(r["method"], (r["wall_s_mean"], r["mean"]), xytext=(5, 3), textcoords="offset points",
                            fontsize=7)
            if floor is not None:
                ax.axhline(floor, color="#666", ls="--", lw=1)
            if ceiling is not None:
                ax.axhline(ceiling, color="#c0392b", lw=1)
            ax.set_xscale("log")
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("wall time per run, s (log scale; small dots: seeds, large: method mean)")
            ax.set_ylabel("final top-1 %")
            ax.set_title(title, loc="left")
            ax.grid(alpha=0.3)
            return self.save(fig, name)

    def bits(self, rows: list[dict], title: str, name: str):
        import matplotlib
        with matplotlib.rc_context(SVG_RC):
            settings = sorted({(r["wbits"], r["abits"]) for r in rows})
            xs = {s: i for i, s in enumerate(settings)}
            fig = self.figure(6.8, 3.6)
            ax = fig.add_subplot()
            ends = []  # (y at the last bit-width, method, colour): labelled directly, no pale legend
            markers, styles = "osD^vPX*<>hp", ["-", "--", "-.", ":"]
            for k, (method, rs) in enumerate(groupby(sorted(rows, key=lambda r: (r["method"], r["wbits"],
                                                                                  r["abits"])),
                                                     key=lambda r: r["method"])):
                rs = [r for r in rs if r["mean"] is not None]
                if not rs:
                    continue
                x = [xs[(r["wbits"], r["abits"])] for r in rs]
                ax.errorbar(x, [r["mean"] for r in rs], yerr=[r["std"] or 0 for r in rs],
                            marker=markers[k % len(markers)], ms=5, capsize=3, lw=1.4, ls=styles[k % len(styles)],
                            color=self.colors[method], label=method)
                ends.append([rs[-1]["mean"], method, self.colors[method], x[-1]])
            ax.set_xticks(range(len(settings)), [bits_label(*s) for s in settings])
            ax.set_xlim(-0.3, len(settings) - 0.4)
            lo, hi = ax.get_ylim()
            gap = (hi - lo) * 0.045  # labels at least this far apart, in data units
            ends.sort()
            for i in range(1, len(ends)):
                ends[i][0] = max(ends[i][0], ends[i - 1][0] + gap)
            for y, method, color, x in ends:
                ax.annotate(method, (x, y), xytext=(8, 0), textcoords="offset points", va="center",
                            fontsize=7, color=color, annotation_clip=False)
            ax.set_ylabel("final top-1 %, mean ± sd over seeds")
            ax.set_title(title, loc="left")
            ax.grid(alpha=0.3)
            return self.save(fig, name)

    def curves(self, series: dict, floor, ceiling, title: str, name: str):
        """``series``: method -> [(seed, [(step, top1), ...]), ...]"""
        import matplotlib
        with matplotlib.rc_context(SVG_RC):
            methods = list(series)
            ncols = min(3, len(methods))
            nrows = math.ceil(len(methods) / ncols)
            fig = self.figure(6.8, 1.9 * nrows + 0.5)
            axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
            for ax, method in zip(axes.flat, methods):
                for seed, points in series[method]:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, lw=1.2,
                            label=f"seed {seed}")
                for y, style in ((floor, dict(color="#666", ls="--")), (ceiling, dict(color="#c0392b"))):
                    if y is not None:
                        ax.axhline(y, lw=0.8, **style)
                ax.set_title(method, fontsize=9, loc="left")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=6, frameon=False)
            for ax in list(axes.flat)[len(methods):]:
                ax.set_axis_off()
            fig.supxlabel("training step", fontsize=8)
            fig.supylabel("top-1 % on the test set", fontsize=8)
            fig.suptitle(title, fontsize=10, x=0.01, ha="left")
            return self.save(fig, name)


# --- page sections -----------------------------------------------------------------------------------------------

CLASS_NAMES = {
    "fmnist": ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


NUM_CLASSES = {"fmnist": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


def class_names(dataset: str, n: int) -> list[str]:
    """The preview rows' labels: the dataset's class names where known, else "class k"."""
    known = CLASS_NAMES.get(dataset, ())
    return [known[k] if k < len(known) else f"class {k}" for k in range(n)]


def zoom_rows(rows: list[dict], within: float = 3.0) -> list[dict]:
    """The methods (not the FP teacher) whose mean is within ``within`` points of the best one: on a 15-97 % axis
    they sit on top of each other, so the final-top-1 plot adds a panel zoomed on them (none when under two)."""
    ranked = [r for r in rows if r["mean"] is not None and r["method"] != "fp"]
    if not ranked:
        return []
    best = max(r["mean"] for r in ranked)
    top = [r for r in ranked if r["mean"] >= best - within]
    return top if len(top) >= 2 else []


def floor_and_ceiling(rows: list[dict]) -> tuple[float | None, float | None]:
    """The mean of the row whose method declares the role ``floor`` (``ceiling``); without a ceiling row, the
    teacher's FP top-1."""
    from zsqbench.spine.registry import get_registry
    methods = get_registry().methods
    by_role = {methods[r["method"]].obj.role: r for r in rows if r["method"] in methods}
    floor = by_role["floor"]["mean"] if "floor" in by_role else None
    ceiling = by_role["ceiling"]["mean"] if by_role.get("ceiling", {}).get("mean") is not None else max(
        (r["fp_top1"] for r in rows if r["fp_top1"] is not None), default=None)
    return floor, ceiling


def ids(gslug: str, row: dict, seed: int | None = None) -> str:
    base = f"prov-{gslug}-{slugify(row['method'])}"
    return base if seed is None else f"{base}-s{seed}"


def link(text: str, target: str, title: str = "") -> str:
    t = f' title="{esc(title)}"' if title else ""
    return f'<a class="num" href="#{esc(target)}"{t}>{esc(text)}</a>'


def leaderboard_table(board: Board, gslug: str, caption: str, rows: list[tuple[int, dict]]) -> str:
    from zsqbench.export.sizes import human, measured_summary, row_size, table_sizes
    from zsqbench.leaderboard.build import table_name
    has_letters = any(r.get("letters") for _, r in rows)
    sizes = table_sizes(board.lb, table_name(rows[0][1]))
    measured = {id(r): measured_summary(r) for _, r in rows}
    has_saved = any(measured.values())
    has_onnx = any(m and m["onnx_top1"] is not None for m in measured.values())
    has_latency = any(m and m["latency_q_b1"] is not None for m in measured.values())
    cols = [("rank", "#", "num"), ("method", "method", "text"), ("n", "n", "num"),
            ("mean", "final top-1 % (mean ± sd)", "num"), ("ci", "95 % CI", "num"), ("seeds", "per seed", "text")]
    if has_letters:
        cols += [("letters", "group (letters)", "text"), ("rank", "rank (95 %)", "num")]
    cols += [("best", "best on test % (legacy)", "num"), ("gap", "gap", "num"), ("fp", "FP %", "num")]
    cols += [("size", "size KiB", "num")] * (sizes is not None)
    cols += [("saved", "saved student file", "num")] * has_saved
    cols += [("onnx", "onnxruntime top-1 %", "num")] * has_onnx
    cols += [("latency", "latency ms/image, batch 1", "num")] * has_latency
    cols += [("wall", "wall s", "num"), ("step", "step ms", "num"), ("flags", "flags", "text")]
    # one evaluation per run (cpu v4) makes best-on-test the final top-1 in every row: an empty column, hidden
    hidden = set() if any(r["gap_mean"] not in (None, 0) for _, r in rows) else {"best", "gap"}
    head = "".join(f'<th scope="col" data-type="{t}" class="{esc(k)}"><button type="button">{esc(label)}'
                   f'<span class="arrow" aria-hidden="true"></span></button></th>' for k, label, t in cols
                   if k not in hidden)
    noted = [r for _, r in rows if r.get("note")]  # numbered in table order, told below the table
    note_no = {id(r): k for k, r in enumerate(noted, 1)}
    body = []
    for rank, (i, r) in enumerate(rows, 1):
        rid = ids(gslug, r)
        k = note_no.get(id(r))
        mark = f'<sup><a href="#note-{gslug}-{k}" title="note">[{k}]</a></sup>' if k else ""
        mean_txt = "—" if r["mean"] is None else num(r["mean"]) + (f" ± {r['std']:.2f}" if r["std"] is not None
                                                                   else "")
        seeds = " / ".join(link(f"{v:.2f}", ids(gslug, r, s), f"seed {s}: provenance")
                           for s, v in zip(r["seeds"], r["final_top1"])) or "—"
        if r["diverged_seeds"]:
            seeds += " " + " ".join(f'<a class="diverged-seed" href="#{ids(gslug, r, s)}">seed {s} diverged</a>'
                                    for s in r["diverged_seeds"])
        ci = "—" if r["ci95"] is None else f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
        cells = [(sort_value(rank), str(rank)),
                 (esc(r["method"]), f'<th scope="row">{esc(r["method"])}{mark}</th>'),
                 (sort_value(r["n"]), str(r["n"]) + (f"/{r['n'] + r['diverged']}" if r["diverged"] else "")),
                 (sort_value(r["mean"]), link(mean_txt, rid, "provenance of this row")),
                 (sort_value(r["ci95"][0] if r["ci95"] else None), link(ci, rid) if r["ci95"] else "—"),
                 (esc(r["method"]), seeds)]
        if has_letters:
            interval = r.get("rank_interval")
            ungrouped = r["mean"] is None and r["diverged"]  # every seed diverged: shown as such, in no group
            letters = "diverged (not ranked)" if ungrouped else r.get("letters") or "—"
            cells += [("" if ungrouped else esc(r.get("letters") or ""), esc(letters)),
                      (sort_value(interval[0] if interval else None),
                       "—" if not interval else str(interval[0]) if interval[0] == interval[1]
                       else f"{interval[0]}–{interval[1]}")]
        cells += [(sort_value(r["best_on_test_mean"]), link(num(r["best_on_test_mean"]), rid)
                   if r["best_on_test_mean"] is not None else "—"),
                  (sort_value(r["gap_mean"]), link(num(r["gap_mean"], "{:+.2f}"), rid)
                   if r["gap_mean"] is not None else "—"),
                  (sort_value(r["fp_top1"]), link(num(r["fp_top1"]), rid) if r["fp_top1"] is not None else "—")]
        m = measured[id(r)] or {}
        if sizes is not None:
            nbytes, text = row_size(sizes, r["method"])
            share = text.partition(" (")[2].rstrip(")")
            cells.append((sort_value(nbytes), "—" if nbytes is None else f"{nbytes / 1024:.1f}"
                          + (f'<br><span class="note">{esc(share)}</span>' if share else "")))
        if has_saved:
            cells.append((sort_value(m.get("student_file_bytes")), esc(human(m.get("student_file_bytes")))
                          + (f' <span class="note">({m["runs"]} run{"s" * (m["runs"] > 1)})</span>' if m else "")))
        if has_onnx:
            cells.append((sort_value(m.get("onnx_top1")), "—" if m.get("onnx_top1") is None else
                          f'{m["onnx_top1"]:.2f} <span class="note">(fake-quant {m["fake_quant_top1"]:.2f})</span>'))
        if has_latency:
            lat = m.get("latency_q_b1")
            cells.append((sort_value(lat), "—" if lat is None else f"{lat:.3f}" + (
                f' <span class="note">(FP {m["latency_fp_b1"]:.3f})</span>' if m.get("latency_fp_b1") is not None
                else "")))
        row_cost = f'<br><span class="row-cost" title="the row: all its runs">{row_cost_s(r) / 60:.0f} min</span>'
        cells += [(sort_value(r["wall_s_mean"]), (link(num(r["wall_s_mean"], "{:.1f}"), rid)
                                                  if r["wall_s_mean"] is not None else "—") + row_cost),
                  (sort_value(None if r["step_s_mean"] is None else r["step_s_mean"] * 1000),
                   "—" if r["step_s_mean"] is None else link(num(r["step_s_mean"] * 1000, "{:.1f}"), rid)),
                  ("", esc(", ".join(r["flags"])))]
        tds = []
        for (key, _, _), (sv, content) in zip(cols, cells):
            if key in hidden:
                continue
            if content.startswith("<th"):
                tds.append(content.replace("<th ", f'<th data-sort="{sv}" class="{key}" ', 1))
            else:
                tds.append(f'<td data-sort="{sv}" class="{key}">{content}</td>')
        cls = ' class="diverged"' if r["diverged"] else ""
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    why_hidden = ('<p class="note">No "best on test (legacy)" column: every run was evaluated once, at its end, so '
                  "it equals the final top-1 in every row.</p>" if hidden else "")
    why_hidden += size_note(sizes, rows[0][1], has_saved, has_onnx, has_latency)
    return (f'<div class="scroll" role="region" tabindex="0" aria-label="{esc(caption)}">'
            f'<table class="board sortable" id="table-{gslug}"><caption>{esc(caption)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{why_hidden}"
            + ('<ol class="notes">' + "".join(f'<li id="note-{gslug}-{k}"><b>{esc(r["method"])}</b>: '
                                               f'{esc(r["note"])}</li>' for k, r in enumerate(noted, 1)) + "</ol>"
               if noted else ""))


def size_note(sizes: dict | None, row: dict, has_saved: bool, has_onnx: bool, has_latency: bool) -> str:
    """Where the table's size figures come from: computed from the architecture, or measured by the runs."""
    from zsqbench.export.sizes import HOW, size_line
    bits = bits_label(row["wbits"], row["abits"])
    if sizes is None:
        text = ("Size: not computed (the leaderboard has no <code>sizes</code>: its protocol is not the registered "
                "one of the same hash; <code>zsqbench leaderboard restat</code> adds them).")
    else:
        text = (f"{esc(size_line(sizes, bits))}. The <em>size KiB</em> column is the row's student (below it: its share of the FP size): "
                f"{esc(HOW)}; exact bytes in the leaderboard JSON (<code>sizes</code>).")
    if has_saved:
        text += (" <em>Saved student file</em>" + (", <em>onnxruntime top-1</em>" if has_onnx else "")
                 + (" and <em>latency</em> (onnxruntime CPU, one thread, median)" if has_latency else "")
                 + " are measured: the mean over the row's runs whose records saved (<code>--save-student</code>) "
                 "or exported (<code>--export</code>) their student; — where none did.")
    else:
        text += (" No run of this table saved or exported its student (<code>zsqbench run --save-student / "
                 "--export DIR</code>), so no size, onnxruntime top-1 or latency here is measured.")
    return f'<p class="note sizes">{text}</p>'


def provenance_table(board: Board, gslug: str, rows: list[tuple[int, dict]], site_dir: Path) -> str:
    proto = board.lb["protocol"]
    bodies = []
    for i, r in rows:
        trs = []
        for k, run in enumerate(r["runs"]):
            view = board.runs[(i, run["seed"])]
            if view.record_path is not None:  # named, never linked: a sweep's records are not committed
                record = f'<code>{esc(run["record"])}</code> <span class="note">(used for this page)</span>'
            else:
                record = f'<code>{esc(run["record"])}</code> <span class="note">({esc(view.note)})</span>'
            final = num(run["final_top1"]) if run["status"] == "ok" else esc(run["status"])
            method_cell = (f'<th scope="rowgroup" rowspan="{len(r["runs"])}">{esc(r["method"])}</th>'
                           if k == 0 else "")
            trs.append(
                f'<tr id="{ids(gslug, r, run["seed"])}">{method_cell}<td>{run["seed"]}</td><td>{final}</td>'
                f"<td>{num(run['best_top1_selected_on_test'])}</td><td>{num(run['total_s'], '{:.1f}')}</td>"
                f"<td>{record}</td>"
                f'<td><code title="{esc(run["git_commit"] or "")}">{esc((run["git_commit"] or "unknown")[:10])}'
                f"</code></td>"
                f'<td><code title="{esc(run["protocol_hash"])}">v{run["protocol_version"]} '
                f"{esc(run['protocol_hash'][:8])}</code></td>"
                f"<td><code>{esc(reproduce_command(board.path, r, run['seed']))}</code></td></tr>")
        bodies.append(f'<tbody id="{ids(gslug, r)}">{"".join(trs)}</tbody>')
    head = "".join(f'<th scope="col">{h}</th>' for h in ("method", "seed", "final %", "best on test %", "wall s",
                                                         "record", "commit", "protocol", "re-run and compare"))
    return (f'<details class="prov"><summary>Provenance: every run behind these numbers (record, commit, protocol '
            f'hash, the command that re-runs it and compares)</summary><div class="scroll" role="region" tabindex="0" '
            f'aria-label="provenance"><table class="prov"><thead><tr>{head}</tr></thead>{"".join(bodies)}'
            f"</table></div></details>")


PREVIEW_PER_CLASS = 4  # of the cached preview's 8: enough to see a set's look
PREVIEW_LEVELS = 16  # per channel; synthetic tiles are noise-like, so at 256 levels PNG barely compresses them


def reduced_preview(png: Path, out: Path, num_classes: int) -> None:
    """Write the cached set's preview (:func:`zsqbench.synthesizer.preview.class_grid`: one row of square tiles per
    class) cut to its first PREVIEW_PER_CLASS tiles per row and PREVIEW_LEVELS levels: about a third of its bytes, so
    a preview per image method and table keeps the page small. A grid of another layout is copied as it is."""
    import numpy as np
    import torch
    from matplotlib.image import imread

    from zsqbench.synthesizer.preview import GAP, write_png

    pixels = imread(png)  # floats in [0, 1]: (H, W) grey or (H, W, 3|4) colour
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels[..., :3]
    tile = (pixels.shape[0] - GAP) // num_classes - GAP
    width = GAP + PREVIEW_PER_CLASS * (tile + GAP)
    if tile <= 0 or width > pixels.shape[1] or pixels.shape[2] not in (1, 3):
        shutil.copyfile(png, out)
        return
    steps = np.round(pixels[:, :width] * (PREVIEW_LEVELS - 1)) * (255 / (PREVIEW_LEVELS - 1))
    write_png(out, torch.from_numpy(np.round(steps).astype(np.uint8)).permute(2, 0, 1).contiguous())


DIAG_FIELDS = [("images", "images", "{:.0f}"), ("intra_class_cosine_distance", "intra-class distance", "{:.3f}"),
               ("value_mean", "value mean", "{:.2f}"), ("value_std", "value sd", "{:.2f}"),
               ("value_min", "min", "{:.2f}"), ("value_max", "max", "{:.2f}"), ("bns_error", "BNS error", "{:.4g}")]


def diagnostics_section(board: Board, gslug: str, rows: list[tuple[int, dict]], plotter: Plotter,
                        site_dir: Path) -> str:
    lines, real, previews = [], None, []
    for i, r in sorted(rows, key=lambda x: x[1]["method"]):
        preview_done = False
        for run in r["runs"]:
            view = board.runs[(i, run["seed"])]
            if view.record is None:
                continue
            diag = view.record.get("diagnostics") or {}
            data = diag.get("data") or {}
            synth = data.get("synthetic")
            if isinstance(synth, dict):
                real = real or data.get("real")
                agrees = (diag.get("synthesis") or {}).get("teacher_agrees")
                cells = "".join(f"<td>{num(synth.get(k), f)}</td>" for k, _, f in DIAG_FIELDS)
                lines.append(f'<tr><th scope="row">{esc(r["method"])}</th>'
                             f'<td><a href="#{ids(gslug, r, run["seed"])}">{run["seed"]}</a></td>{cells}'
                             f"<td>{num(agrees and 100 * agrees, '{:.1f}')}</td></tr>")
            cache = (diag.get("synthesis") or {}).get("cache_file")
            png = Path(cache).with_suffix(".png") if cache else None
            if not preview_done and png is not None and png.is_file():
                name = f"{slugify(Path(cache).stem)}-preview.png"  # one file per set: bit-widths share a set
                names = class_names(r["dataset"], NUM_CLASSES.get(r["dataset"], 10))
                if not (plotter.root / "img" / name).exists():
                    reduced_preview(png, plotter.root / "img" / name, len(names))
                labels = "".join(f"<li>{esc(n)}</li>" for n in names)
                previews.append(
                    f'<figure class="preview"><div class="grid-labelled"><ol class="classes" start="0" '
                    f'aria-label="classes, one per image row">{labels}</ol><img src="img/{esc(name)}" '
                    f'alt="{esc(r["method"])} synthetic images, seed {run["seed"]}: one row per class, '
                    f'{esc(", ".join(names))}"></div><figcaption>{esc(r["method"])}, seed '
                    f'{run["seed"]} (<a href="#{ids(gslug, r, run["seed"])}">run</a>; cached set '
                    f"<code>{esc(Path(cache).name)}</code>; its first {PREVIEW_PER_CLASS} images per class, "
                    f"{PREVIEW_LEVELS} levels)</figcaption></figure>")
                preview_done = True
    indices = {i for i, _ in rows}
    found = sum(v.record is not None for (i, _), v in board.runs.items() if i in indices)
    if not lines and not previews:
        return (f'<p class="note">Synthetic-data diagnostics and image previews come from the run records '
                f"(<code>diagnostics</code> and the synthetic-set cache); {found} of "
                f"{sum(len(r['runs']) for _, r in rows)} records of this table were available when this page was "
                f"built{' and none has a synthetic set' if found else ''}.</p>")
    head = "".join(f'<th scope="col">{h}</th>' for h in
                   ["method", "seed", *[label for _, label, _ in DIAG_FIELDS], "teacher agrees %"])
    if real:
        cells = "".join(f"<td>{num(real.get(k), f)}</td>" for k, _, f in DIAG_FIELDS)
        lines.append(f'<tr class="real"><th scope="row">real test set</th><td>—</td>{cells}<td>—</td></tr>')
    table = (f'<div class="scroll" role="region" tabindex="0" aria-label="synthetic-data diagnostics">'
             f'<table class="diag"><caption>Synthetic set vs the real test set, as the teacher sees them (values in '
             f"the teacher's normalised input space; BNS error: batch-norm statistics mismatch)</caption>"
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table></div>") if lines else ""
    return table + (f'<div class="previews">{"".join(previews)}</div>' if previews else "")


def published_section(boards: list[Board]) -> str:
    try:
        from zsqbench.leaderboard.published import load_published
        entries = load_published()
    except UserError as e:
        return f'<p class="note">Published figures unavailable: {esc(e)}</p>'
    trs = []
    for b in boards:
        for r in sorted(b.lb["rows"], key=lambda r: (group_key(r), r["method"])):
            for e in entries:
                if (e["method"], e["model"], e["dataset"], e["wbits"], e["abits"]) != (
                        r["method"], r["model"], r["dataset"], r["wbits"], r["abits"]):
                    continue
                src = e["source"]
                where = " ".join(str(s) for s in (src.get("reported_by"), src.get("table") or "README") if s)
                trs.append(f'<tr><th scope="row">{esc(r["method"])}</th><td>{esc(teacher_label(r))}</td>'
                           f"<td>{bits_label(r['wbits'], r['abits'])}</td><td>{e['top1']:.2f}</td>"
                           f"<td>{num(e.get('fp_top1'))}</td><td>{esc(where)}</td>"
                           f"<td>{num(r['best_on_test_mean'])}</td><td>{num(r['mean'])}</td>"
                           f"<td>{num(r['fp_top1'])}</td><td>{esc(b.lb['protocol']['name'])}</td></tr>")
    if not trs:
        covered = sorted({f"{e['model']}@{e['dataset']} {bits_label(e['wbits'], e['abits'])}" for e in entries})
        ours = sorted({f"{teacher_label(r)} {bits_label(r['wbits'], r['abits'])}" for b in boards
                       for r in b.lb["rows"]})
        return (f"<p>No setting here has a published figure: these leaderboards cover {esc(', '.join(ours))}; "
                f"<code>{PUBLISHED_HINT}</code> ({len(entries)} figures) covers {esc(', '.join(covered))}. "
                f"A leaderboard of the <code>paper</code> protocol fills this table.</p>")
    head = "".join(f'<th scope="col">{h}</th>' for h in (
        "method", "teacher", "bits", "published %", "their FP %", "source", "ours: best on test % (legacy)",
        "ours: final %", "our FP %", "protocol"))
    return (f'<p>Published figures are the papers\' best epoch selected on the test set: compare them with our '
            f'legacy best-on-test column; our headline is the final student.</p><div class="scroll" role="region" '
            f'tabindex="0" aria-label="published vs reproduced"><table class="published"><thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(trs)}</tbody></table></div>")


def figure_html(src: str, alt: str, caption: str) -> str:
    return (f'<figure><img src="{esc(src)}" alt="{esc(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def group_section(board: Board, gkey: tuple, rows: list[tuple[int, dict]], plotter: Plotter, command: str,
                  site_dir: Path) -> tuple[str, str]:
    model, dataset, w, a = gkey
    proto = board.lb["protocol"]
    gslug = slugify(board.slug, model, dataset, f"w{w}a{a}")
    title = f"{model}@{dataset} {bits_label(w, a)}"
    plain = [r for _, r in rows]
    floor, ceiling = floor_and_ceiling(plain)
    where = (f"from <code>{esc(board.path)}</code> (sha256 <code>{board.sha256[:12]}</code>); regenerate: "
             f"<code>{esc(command)}</code>")
    parts = [f'<section id="{gslug}" aria-labelledby="h-{gslug}"><h3 id="h-{gslug}">{esc(title)}</h3>',
             leaderboard_table(board, gslug, f"{title}, protocol {proto['name']} v{proto['version']}: final top-1 "
                                             "over seeds (click a column header to sort)", rows)]
    from zsqbench.leaderboard.build import table_name
    parts += [f'<p class="validity">{esc(validity_line(t))}</p>'
              for t in (board.lb.get("significance") or {}).get("tables", []) if t["table"] == table_name(rows[0][1])]
    parts.append('<div class="figs">')
    best = sorted(plain, key=row_order)[0]
    src = plotter.final_top1(plain, floor, ceiling, f"{title} · final top-1 per method", f"{gslug}-final.svg")
    alt = (f"Final top-1 per method on {title}: seed dots, 95 % CI bars and means; best mean {best['method']} "
           f"{num(best['mean'])} %" + (f"; noise floor {floor:.2f} %" if floor is not None else "")
           + (f"; FP ceiling {ceiling:.2f} %" if ceiling is not None else ""))
    parts.append(figure_html(src, alt, f"Final top-1 per method: every seed, the 95 % CI of the mean, against the "
                                       f"<code>noise</code> floor (dashed) and the FP teacher (red). {where}"))
    src = plotter.cost(plain, floor, ceiling, f"{title} · accuracy vs cost", f"{gslug}-cost.svg")
    parts.append(figure_html(src, f"Final top-1 against wall time per run on {title}, one colour per method",
                             f"Accuracy vs cost: each run's final top-1 against its wall time (the whole run: "
                             f"synthesis, calibration, training, evaluation). {where}"))
    series = {}
    for i, r in sorted(rows, key=lambda x: x[1]["method"]):
        curves = []
        for run in r["runs"]:
            rec = board.runs[(i, run["seed"])].record
            hist = rec.get("eval_history") if rec else None
            if hist:
                curves.append((run["seed"], [(h["step"], h["top1"]) for h in hist]))
        if any(len(points) > 1 for _, points in curves):  # one point (the final evaluation) is not a curve
            series[r["method"]] = curves
    n_runs = sum(len(r["runs"]) for r in plain)
    n_found = sum(board.runs[(i, u["seed"])].record is not None for i, r in rows for u in r["runs"])
    if series:
        src = plotter.curves(series, floor, ceiling, f"{title} · learning curves (evaluation history)",
                             f"{gslug}-curves.svg")
        parts.append(figure_html(src, f"Test top-1 at each evaluation point per method and seed on {title}",
                                 f"Learning curves from the records' <code>eval_history</code> ({n_found} of "
                                 f"{n_runs} records available when this page was built). {where}"))
    elif n_found:
        parts.append(f'<p class="note">No learning curves: the {n_found} records of this table used to build this '
                     f"page "
                     f"evaluate the final student only (their <code>eval_history</code> has one point; a protocol "
                     f"sets <code>eval.every</code> to record more).</p>")
    else:
        parts.append(f'<p class="note">Learning curves need the run records\' <code>eval_history</code>: '
                     f"{n_found} of {n_runs} records of this table were available when this page was built (a sweep's "
                     f"records are not in git; run the sweep, then regenerate the site).</p>")
    parts.append("</div>")
    parts.append(f"<h4>Synthetic data</h4>{diagnostics_section(board, gslug, rows, plotter, site_dir)}")
    parts.append(provenance_table(board, gslug, rows, site_dir))
    parts.append("</section>")
    return "".join(parts), f'<li><a href="#{gslug}">{esc(title)}</a></li>'


def board_section(board: Board, plotter: Plotter, command: str, site_dir: Path) -> tuple[str, str]:
    lb, proto, pv = board.lb, board.lb["protocol"], board.lb["provenance"]
    indexed = sorted(enumerate(lb["rows"]), key=lambda x: (group_key(x[1]), row_order(x[1])))
    tables = [(gkey, list(items)) for gkey, items in groupby(indexed, key=lambda x: group_key(x[1]))]
    tables.sort(key=lambda t: -len(set("".join(r.get("letters") or "" for _, r in t[1]))))  # ranked tables first
    sections, toc = [], []
    for gkey, items in tables:
        html_, li = group_section(board, gkey, items, plotter, command, site_dir)
        sections.append(html_)
        toc.append(li)
    bits_figs = []
    teachers = sorted({(r["model"], r["dataset"]) for r in lb["rows"]})
    for model, dataset in teachers:
        rows = [r for r in lb["rows"] if (r["model"], r["dataset"]) == (model, dataset)]
        settings = sorted({(r["wbits"], r["abits"]) for r in rows})
        if len(settings) < 2:
            bits_figs.append(f'<p class="note">{esc(model)}@{esc(dataset)}: one bit-width in this protocol '
                             f"({bits_label(*settings[0])}), so no accuracy-vs-bits plot.</p>")
            continue
        name = f"{slugify(board.slug, model, dataset)}-bits.svg"
        src = plotter.bits(rows, f"{model}@{dataset} · final top-1 vs bit-width", name)
        bits_figs.append(figure_html(src, f"Final top-1 mean and sd per method at {', '.join(bits_label(*s) for s in settings)} "
                                          f"on {model}@{dataset}",
                                     f"Accuracy vs bit-width per method on {esc(model)}@{esc(dataset)} (mean ± sd "
                                     f"over seeds), from <code>{esc(board.path)}</code>."))
    n_found = sum(v.record is not None for v in board.runs.values())
    sig = lb.get("significance") or {}
    commits = ", ".join(f"<code title=\"{esc(c)}\">{esc(c[:7])}</code>" for c in pv["git_commits"])
    dirty = f" ({pv['dirty_records']} dirty)" if pv["dirty_records"] else ""
    head = (f'<section class="board-head" id="{board.slug}" aria-labelledby="h-{board.slug}">'
            f'<h2 id="h-{board.slug}">Protocol <code>{esc(proto["name"])}</code> v{proto["version"]} '
            f'<small>(<code title="{esc(proto["hash"])}">{esc(proto["hash"][:8])}</code>)</small></h2>'
            f'<dl class="facts"><dt>leaderboard</dt><dd><code>{esc(board.path)}</code>, sha256 '
            f'<code class="sha">{board.sha256}</code></dd>'
            f"<dt>built by</dt><dd><code>{esc(pv['command'])}</code> on {esc(pv['created'])}</dd>"
            f"<dt>runs</dt><dd>{pv['records']} records, {pv['total_wall_s'] / 3600:.1f} h of runs in total; commits "
            f"{commits}{dirty}; {esc('; '.join(pv['devices']))}</dd>"
            + (f"<dt>significance</dt><dd>every pair of a table's rows by the Games-Howell test on the per-seed "
               f"final top-1 (no equal variances assumed; family-wise error rate {sig.get('alpha')} per table): rows "
               f"sharing a letter are not separated. Rank: the row's 95 % rank interval over "
               f"{sig['rank_interval']['resamples']} bootstrap resamples of the seeds. Rows with under two finished "
               f"seeds are not placed (—).</dd>" if sig else "")
            + f"<dt>records used</dt><dd>{_records_used_text(n_found, len(board.runs))} "
            f"(the table, the final-top-1, bits and cost plots need only the leaderboard; learning curves, "
            f"diagnostics and previews need the records). Any run re-runs with <code>zsqbench reproduce "
            f"{esc(board.path)} --rows METHOD/MODEL/WxAy --seeds S</code> (its command is in the table's "
            f"provenance), which compares the new figure with this one.</dd></dl></section>")
    bits = (f'<section id="{board.slug}-bits" aria-labelledby="h-{board.slug}-bits">'
            f'<h3 id="h-{board.slug}-bits">Accuracy vs bit-width</h3>{"".join(bits_figs)}</section>')
    toc.append(f'<li><a href="#{board.slug}-bits">accuracy vs bit-width</a></li>')
    if lb.get("transfer"):
        bits += transfer_section(board.slug, lb["transfer"])
        toc.append(f'<li><a href="#{board.slug}-transfer">transfer to held-out teachers</a></li>')
    toc_html = (f'<li><a href="#{board.slug}">{esc(proto["name"])} v{proto["version"]}</a><ul>{"".join(toc)}</ul>'
                f"</li>")
    return head + "".join(sections) + bits, toc_html


def transfer_section(slug: str, block: dict) -> str:
    """The leaderboard's ``transfer`` block: per held-out teacher and bits, each method's mean there beside its
    mean on the teacher the settings were chosen on (show.transfer_tables in HTML)."""
    parts = []
    for k, t in enumerate(block["tables"]):
        floor = t["floor"]
        above = f"above {floor['method']}" if floor else "above floor"
        caption = f"{t['held_out']} (held out from choosing settings) beside {t['chosen_on']}: mean final top-1 %"
        head = "".join(f'<th scope="col">{esc(h)}</th>' for h in ("method", "chosen on", "held out", "change", above))
        body = []
        for r in t["rows"]:
            name = r["method"] + (f" ({r['role']})" if r["role"] else "")
            short = ' class="short"' if r["above_floor"] is not None and r["above_floor"] < block["margin"] else ""
            body.append(f'<tr><th scope="row">{esc(name)}</th><td>{num(r["chosen_on_mean"])}</td>'
                        f'<td>{num(r["held_out_mean"])}</td><td>{num(r["change"], "{:+.2f}")}</td>'
                        f'<td{short}>{num(r["above_floor"], "{:+.2f}")}</td></tr>')
        notes = transfer_notes(block, t)
        parts.append(f'<div class="scroll" role="region" tabindex="0" aria-label="{esc(caption)}">'
                     f'<table class="board transfer" id="transfer-{slug}-{k}"><caption>{esc(caption)}</caption>'
                     f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
                     f'<p class="note">{esc("; ".join(notes))}.</p>')
    return (f'<section id="{slug}-transfer" aria-labelledby="h-{slug}-transfer">'
            f'<h3 id="h-{slug}-transfer">Transfer to held-out teachers</h3><p>The protocol holds these teachers out '
            f"from choosing settings (its <code>transfer</code>): a method whose settings are its own, not one "
            f"teacher's, keeps its place and its margin over the floor on them.</p>{''.join(parts)}</section>")


def render_page(boards: list[Board], plotter: Plotter, command: str, site_dir: Path) -> str:
    bodies, toc = [], []
    for b in boards:
        html_, li = board_section(b, plotter, command, site_dir)
        bodies.append(html_)
        toc.append(li)
    metas = "".join(f'<meta name="zsqbench-leaderboard-sha256" content="{b.sha256}">' for b in boards)
    names = ", ".join(f"{b.lb['protocol']['name']} v{b.lb['protocol']['version']}" for b in boards)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>zsqbench leaderboard · {esc(names)}</title>{metas}
<link rel="stylesheet" href="style.css"><script src="sort.js" defer></script></head>
<body><header><h1>zsqbench leaderboard</h1>
<p>Zero-shot quantization methods under one shared protocol. <strong>Headline: top-1 of the final student on the
real test set</strong>, mean ± sample sd over seeds with the t-based 95 % confidence interval. “Best on test” is the
legacy figure papers report (the best evaluation point selected on the test set) and is shown only for comparison.
Every number links to the runs behind it: record, commit, protocol hash and the command that re-runs it.</p>
<p>This site is generated, never hand-edited: <code>{esc(command)}</code></p>
<nav aria-label="contents"><ul>{''.join(toc)}<li><a href="#published">Published vs reproduced</a></li></ul></nav>
</header><main>{''.join(bodies)}
<section id="published" aria-labelledby="h-published"><h2 id="h-published">Published vs reproduced</h2>
{published_section(boards)}</section></main>
<footer><p>Generated by <code>zsqbench leaderboard site</code> (site format {SITE_FORMAT}) from {len(boards)}
leaderboard(s); <code>{MANIFEST}</code> lists every file with its sha256.</p></footer></body></html>
"""


# --- writing -----------------------------------------------------------------------------------------------------

def _site_files(out: Path) -> set[str] | None:
    """The files a site folder's manifest says this tool wrote (None: no readable manifest)."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        return set(manifest["files"]) if manifest.get("kind") == SITE_KIND else None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        return None


def check_output(out: Path, inputs=()) -> None:
    """The site folder is replaced as a whole: refuse a file, a folder that holds an input or anything this tool did
    not write (zsqbench.spine.safety)."""
    from zsqbench.spine.safety import check_replaced_dir
    check_replaced_dir(out, "--output", MANIFEST, _site_files, inputs, kind="site")


def build_site(tmp: Path, boards: list[Board], command: str) -> dict:
    methods = sorted({r["method"] for b in boards for r in b.lb["rows"]})
    plotter = Plotter(tmp, methods)
    used = {}
    for k, b in enumerate(boards):
        base = slugify(b.lb["protocol"]["name"], f"v{b.lb['protocol']['version']}")
        b.slug = base if base not in used else f"{base}-{k}"
        used[b.slug] = True
    (tmp / "index.html").write_text(render_page(boards, plotter, command, tmp), encoding="utf-8")
    for name in ASSETS:
        (tmp / name).write_bytes(resources.files("zsqbench.leaderboard").joinpath("site_assets", name).read_bytes())
    files = {p.relative_to(tmp).as_posix(): _sha256(p.read_bytes())
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {"kind": SITE_KIND, "format": SITE_FORMAT, "command": command,
                "leaderboards": [{"path": b.path, "sha256": b.sha256, "protocol": b.lb["protocol"],
                                  "runs": len(b.runs),
                                  "records_used": sum(v.record is not None for v in b.runs.values())}
                                 for b in boards],
                "files": files}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def write_site(leaderboards: list[str], output: str | Path, *, records_root: str | None = None,
               use_records: bool = True, command: str | None = None) -> dict:
    """Build the site for ``leaderboards`` into ``output`` (replaced as a whole, atomically); returns the
    manifest."""
    if not leaderboards:
        raise UserError("give one or more leaderboard JSON files")
    out = Path(output)
    check_output(out, [*leaderboards, *([records_root] if records_root else [])])
    boards = [load_board(p) for p in leaderboards]
    for b in boards:
        attach_records(b, records_root, use_records)
    if command is None:
        command = shlex.join(["zsqbench", "leaderboard", "site", *leaderboards, "-o", str(output)]
                             + (["--no-records"] if not use_records else [])
                             + (["--records", records_root] if records_root else []))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the site is for reading
    try:
        manifest = build_site(tmp, boards, command)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@click.command("site")
@click.argument("leaderboards", nargs=-1, required=True)
@click.option("--output", "-o", required=True, type=click.Path(), help="Folder for the site (replaced as a whole).")
@click.option("--records", "records_root", default=None, type=click.Path(file_okay=False),
              help="Folder the leaderboards' relative record paths start from (default: the leaderboard's folder, "
                   "its parent, then the current folder).")
@click.option("--no-records", is_flag=True, help="Use the leaderboards alone, even where records are present.")
def site_command(leaderboards, output, records_root, no_records):
    """Write a static site (HTML, CSS, SVG plots; open index.html, no server) from LEADERBOARDS and, where present,
    the run records they were built from: sortable tables with per-seed values and CIs, plots against the noise
    floor and FP ceiling, learning curves, synthetic-data diagnostics, published vs reproduced, and every number
    linked to its provenance."""
    from rich.console import Console
    manifest = write_site(list(leaderboards), output, records_root=records_root, use_records=not no_records)
    used = sum(b["records_used"] for b in manifest["leaderboards"])
    runs = sum(b["runs"] for b in manifest["leaderboards"])
    size = sum((Path(output) / f).stat().st_size for f in manifest["files"])
    Console().print(f"wrote {Path(output) / 'index.html'}: {len(manifest['files'])} files, {size / 1024:.0f} KiB, "
                    f"{used} of {runs} run records used", highlight=False, soft_wrap=True)
