"""`zsqbench leaderboard site`: the static site from leaderboards (+ records where present), its refusals, that the
committed `leaderboard/site/` is current with `leaderboard/cpu.json`, and what a person sees in headless Chromium.

Records come from two real `--protocol smoke` runs (`zeroq`, whose synthetic set is cached with its preview PNG,
and `noise`, seconds each); the other rows are copies of them that still validate (as in test_leaderboard.py)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from zsqbench.frontends.cli import Group
from zsqbench.frontends.leaderboard_commands import leaderboard
from zsqbench.frontends.sizes import with_sizes
from zsqbench.leaderboard.build import build_leaderboard, validate_leaderboard
from zsqbench.leaderboard.site import MANIFEST, PREVIEW_LEVELS, PREVIEW_PER_CLASS, write_site
from zsqbench.record.check import seal
from zsqbench.record.io import validation_errors
from zsqbench.synthesizer.preview import GAP

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "leaderboard" / "site"
CPU = ROOT / "leaderboard" / "cpu.json"
REGENERATE = "zsqbench leaderboard site leaderboard/cpu.json -o leaderboard/site"
MAX_SITE_BYTES = 1024 * 1024  # with a synthetic-set preview per image method and table (~25 KiB each)


@click.group(cls=Group)
def group():
    """zsqbench's group class: UserError -> one line, exit 2."""


group.add_command(leaderboard)


def invoke(*args):
    return CliRunner().invoke(group, [str(a) for a in args])


@pytest.fixture(scope="module")
def smoke_records(tmp_path_factory):
    """Two real smoke records (zeroq with its cached set and preview, noise), run side by side."""
    from conftest import ONE_THREAD
    tmp = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, **ONE_THREAD, "COLUMNS": "200"}
    procs = [subprocess.Popen([sys.executable, "-m", "zsqbench.frontends.cli", "run", "--method", m,
                               "--model", "resnet20", "--bits", "4", "--protocol", "smoke", "-q", "--out", str(tmp / m),
                               "--seed", "0", "--cache-dir", str(tmp / "cache")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m in ("zeroq", "noise")]
    out = {}
    for m, p in zip(("zeroq", "noise"), procs):
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        (path,) = (tmp / m).glob("*.json")
        out[m] = json.loads(path.read_text())
    return out


def variant(base, seed, final, history, wbits=4, total_s=20.0, status="ok", method=None):
    r = copy.deepcopy(base)
    r["seed"], r["wbits"], r["abits"], r["status"] = seed, wbits, wbits, status
    if method:
        r["method"]["name"] = method
    if status == "diverged":
        r["final_top1"] = r["best_top1_selected_on_test"] = None
        r["eval_history"], r["diverged"] = [], {"phase": "distill", "step": 2, "what": "loss"}
    else:
        r["eval_history"] = [{"step": s, "top1": v} for s, v in history]
        r["final_top1"], r["best_top1_selected_on_test"] = final, max(v for _, v in history)
    r["timing"].update(total_s=total_s)
    if history:  # a consistent record: the run's steps end at its last evaluation
        r["config"]["train"]["steps"] = r["timing"]["steps"] = history[-1][0]
    seal(r)  # a made-up record carries its own digest, as a real run's does
    assert validation_errors(r) == []
    return r


@pytest.fixture(scope="module")
def board(smoke_records, tmp_path_factory):
    """A smoke leaderboard (zeroq, noise, a diverging 'gdfq' copy; W3A3 and W4A4) with its records on disk."""
    d = tmp_path_factory.mktemp("board")
    z, n = smoke_records["zeroq"], smoke_records["noise"]
    recs = []
    for w in (3, 4):
        for seed in range(3):
            recs.append(variant(z, seed, 60.0 + 3 * seed + 4 * w, [(2, 50.0 + w), (4, 60.0 + 3 * seed + 4 * w)], w,
                                total_s=30 + seed))
            recs.append(variant(n, seed, 30.0 + seed + 5 * w, [(0, 30.0 + seed + 5 * w)], w, total_s=5 + seed))
            recs.append(variant(z, seed, 50.0 + 2 * seed + w, [(2, 55.0), (4, 50.0 + 2 * seed + w)], w,
                                total_s=50 + seed, method="gdfq"))
        recs.append(variant(z, 3, None, [], w, status="diverged", method="gdfq"))
    pairs = []
    for k, r in enumerate(recs):
        p = d / "sweep" / f"job{k}" / "record.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(r))
        pairs.append((str(p), r))
    lb = with_sizes(build_leaderboard(pairs, "smoke", 1, command="zsqbench leaderboard build --protocol smoke sweep"))
    assert validate_leaderboard(lb) == []
    path = d / "smoke.json"
    path.write_text(json.dumps(lb, indent=1))
    return path, lb


def page(site: Path) -> str:
    return (site / "index.html").read_text()


def test_site_with_records_has_curves_diagnostics_previews_and_provenance(board, smoke_records, tmp_path):
    path, lb = board
    m = write_site([str(path)], tmp_path / "site", command="CMD")
    site = tmp_path / "site"
    assert m["leaderboards"][0]["records_used"] == m["leaderboards"][0]["runs"] == 20
    files = set(m["files"])
    assert {"index.html", "style.css", "sort.js"} <= files
    html = page(site)
    for w in (3, 4):
        slug = f"smoke-v{lb['protocol']['version']}-resnet20-fmnist-w{w}a{w}"
        for kind in ("final", "cost", "curves"):
            assert f"img/{slug}-{kind}.svg" in files
    # the cached synthetic sets' previews, copied once per set (both bit-widths use the same zeroq set)
    previews = sorted(f for f in files if f.endswith("-preview.png"))
    assert len(previews) == 1 and previews[0].startswith("img/zeroq-resnet20-fmnist-seed0-"), previews
    assert (site / previews[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # ... cut to the first PREVIEW_PER_CLASS tiles of each class row, at PREVIEW_LEVELS levels, to keep the page small
    cached = imread(Path(smoke_records["zeroq"]["diagnostics"]["synthesis"]["cache_file"]).with_suffix(".png"))
    shown = imread(site / previews[0])
    tile = (cached.shape[0] - GAP) // 10 - GAP
    assert shown.shape[0] == cached.shape[0] and shown.shape[1] == GAP + PREVIEW_PER_CLASS * (tile + GAP)
    assert len(np.unique(shown)) <= PREVIEW_LEVELS
    assert abs(shown - cached[:, :shown.shape[1]]).max() <= 0.5 / (PREVIEW_LEVELS - 1) + 1e-6
    assert page(site).count(f'src="{previews[0]}"') >= 2  # W3A3 and W4A4 (and zeroq-kd, same set)
    assert "<li>T-shirt/top</li>" in html and "<li>ankle boot</li>" in html  # every preview row is labelled
    assert "img/smoke-v{}-resnet20-fmnist-bits.svg".format(lb["protocol"]["version"]) in files
    assert "real test set" in html and "intra-class distance" in html and "BNS error" in html
    # the table statistics: letters and rank intervals per row, the test named in the head
    assert "group (letters)" in html and "rank (95 %)" in html and "Games-Howell" in html
    # every per-seed value links to a provenance row that exists, with the record linked and the command
    import re
    targets = set(re.findall(r'href="#(prov-[^"]+)"', html))
    anchors = set(re.findall(r'id="(prov-[^"]+)"', html))
    assert targets and targets <= anchors
    assert html.count("sweep/job") >= 20 and 'href="../sweep' not in html  # named, never linked (not committed)
    assert f"zsqbench reproduce {path} --rows zeroq/resnet20@fmnist/W3A3 --seeds 2" in html
    assert "seed 3 diverged" in html
    # every number on the page comes from the inputs: the per-seed finals of the leaderboard are all there
    for row in lb["rows"]:
        for v in row["final_top1"]:
            assert f">{v:.2f}<" in html


def test_site_is_deterministic_and_leaderboard_only_mode(board, tmp_path):
    path, _ = board
    a = write_site([str(path)], tmp_path / "a", command="CMD")
    b = write_site([str(path)], tmp_path / "b", command="CMD")
    assert a == b
    for f in a["files"]:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    c = write_site([str(path)], tmp_path / "c", use_records=False, command="CMD")
    assert c["leaderboards"][0]["records_used"] == 0
    assert not any("curves" in f or "preview" in f for f in c["files"])
    html = page(tmp_path / "c")
    assert "Learning curves need the run records" in html and "records not read (--no-records)" in html
    # a rebuild replaces the old site as a whole; nothing partial stays beside it
    write_site([str(path)], tmp_path / "a", use_records=False, command="CMD")
    assert not (tmp_path / "a" / "img" / "smoke-v{}-resnet20-fmnist-w3a3-curves.svg".format(
        json.loads(path.read_text())["protocol"]["version"])).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_records_that_evaluate_once_draw_no_curves(smoke_records, tmp_path):
    """A protocol that scores only the final student (cpu v4) leaves one point per run: no curve figure, and the
    page says why."""
    z, n = smoke_records["zeroq"], smoke_records["noise"]
    pairs = []
    for k, r in enumerate(variant(base, seed, 40.0 + seed + 10 * i, [(9, 40.0 + seed + 10 * i)], 3)
                          for i, base in enumerate((z, n)) for seed in range(3)):
        p = tmp_path / "sweep" / f"job{k}" / "record.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps(r))
        pairs.append((str(p), r))
    path = tmp_path / "once.json"
    path.write_text(json.dumps(with_sizes(build_leaderboard(pairs, "smoke", 1, command="CMD"))))
    m = write_site([str(path)], tmp_path / "site", command="CMD")
    assert m["leaderboards"][0]["records_used"] == 6
    assert not any("curves" in f for f in m["files"])
    assert "No learning curves: the 6 records of this table used to build this page evaluate the final student only" in \
        page(tmp_path / "site")


def test_records_that_do_not_match_their_run_are_not_used(board, tmp_path):
    path, lb = board
    lb = copy.deepcopy(lb)
    moved = tmp_path / "elsewhere.json"
    rec_path = Path(lb["rows"][0]["runs"][0]["record"])
    rec = json.loads(rec_path.read_text())
    rec["final_top1"] = rec["eval_history"][-1]["top1"] = 1.0  # a re-run over the same path: not the run the
    rec["best_top1_selected_on_test"] = max(h["top1"] for h in rec["eval_history"])  # leaderboard holds
    seal(rec)
    fake = tmp_path / "fake" / "record.json"
    fake.parent.mkdir()
    fake.write_text(json.dumps(rec))
    lb["rows"][0]["runs"][0]["record"] = str(fake)
    moved.write_text(json.dumps(lb))
    m = write_site([str(moved)], tmp_path / "site", command="CMD")
    assert m["leaderboards"][0]["records_used"] == 19
    assert "record does not match the leaderboard run" in page(tmp_path / "site")


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such leaderboard file"),
    ("not_json", "is not JSON"),
    ("record", "is not a zsqbench leaderboard"),
    ("invalid", "invalid leaderboard"),
    ("out_is_file", "is a file; give a folder"),
    ("out_not_site", "not a zsqbench site"),
])
def test_bad_input_one_line_exit_2_nothing_written(board, tmp_path, case, expected):
    path, lb = board
    out = tmp_path / "out"
    src = str(path)
    if case == "missing":
        src = str(tmp_path / "nope.json")
    elif case == "not_json":
        (tmp_path / "x.json").write_bytes(b"\xff\x00 not json")
        src = str(tmp_path / "x.json")
    elif case == "record":
        src = lb["rows"][0]["runs"][0]["record"]
    elif case == "invalid":
        bad = copy.deepcopy(lb)
        bad["rows"][0]["mean"] += 1
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        src = str(tmp_path / "bad.json")
    elif case == "out_is_file":
        out.write_text("mine")
    elif case == "out_not_site":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = invoke("leaderboard", "site", src, "-o", out)
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing partial, nothing replaced


def test_failure_while_building_leaves_the_old_site(board, tmp_path, monkeypatch):
    path, _ = board
    out = tmp_path / "site"
    write_site([str(path)], out, use_records=False, command="CMD")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    from zsqbench.leaderboard import site as site_mod

    def boom(*a, **k):
        raise RuntimeError("plot failed")
    monkeypatch.setattr(site_mod.Plotter, "cost", boom)
    with pytest.raises(RuntimeError):
        write_site([str(path)], out, command="CMD")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_cli_writes_the_site(board, tmp_path):
    path, _ = board
    r = invoke("leaderboard", "site", path, "-o", tmp_path / "s", "--no-records")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and "0 of 20 run records used" in r.output
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["command"].endswith("--no-records")


def test_committed_site_is_current(tmp_path, monkeypatch):
    """leaderboard/site/ is what `zsqbench leaderboard site leaderboard/cpu.json -o leaderboard/site` gives today."""
    manifest = json.loads((COMMITTED / MANIFEST).read_text())
    (entry,) = manifest["leaderboards"]
    sha = hashlib.sha256(CPU.read_bytes()).hexdigest()
    assert entry["sha256"] == sha, f"leaderboard/site was built from another cpu.json: regenerate with `{REGENERATE}`"
    assert manifest["command"] == REGENERATE
    monkeypatch.chdir(ROOT)
    # built beside the committed site, so that its relative links to the run records are the same
    check_dir = COMMITTED.parent / f".site-check-{os.getpid()}"
    try:
        fresh = write_site([entry["path"]], check_dir, command=manifest["command"])
    finally:
        shutil.rmtree(check_dir, ignore_errors=True)
    found = fresh["leaderboards"][0]["records_used"]
    if found != entry["records_used"]:  # the site is a function of the leaderboard and the records present
        pytest.skip(f"the committed site used {entry['records_used']} sweep records, this machine has {found}: "
                    "cannot rebuild it byte for byte here (its leaderboard sha256 matches)")
    previews = sorted(f for f in manifest["files"] if f.endswith("-preview.png"))
    here = sorted(f for f in fresh["files"] if f.endswith("-preview.png"))
    if here != previews:  # ... and of the synthetic sets in the cache the records name (not committed)
        pytest.skip(f"the committed site shows {len(previews)} synthetic-set previews from the cache its records "
                    f"name, this machine has {len(here)} of those sets: cannot rebuild it byte for byte here")
    stale = sorted(set(fresh["files"]) ^ set(manifest["files"])) + sorted(
        f for f in fresh["files"] if fresh["files"][f] != manifest["files"].get(f, fresh["files"][f]))
    assert not stale, f"leaderboard/site is stale ({', '.join(stale[:5])}): regenerate with `{REGENERATE}`"
    for f, digest in manifest["files"].items():
        assert hashlib.sha256((COMMITTED / f).read_bytes()).hexdigest() == digest, f"{f} was edited by hand"
    assert sum((COMMITTED / f).stat().st_size for f in manifest["files"]) < MAX_SITE_BYTES


# --- in a real browser ------------------------------------------------------------------------------------------

def chromium_or_skip():
    pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[test]')")
    from chromium_cdp import find_chromium
    binary = find_chromium()
    if not binary:
        pytest.skip("no Chromium here (setup.sh installs Debian's `chromium`; or set ZSQBENCH_CHROMIUM)")
    return binary


IMAGES = """Array.from(document.images).map(i => ({src: i.getAttribute('src'), alt: i.alt,
    ok: i.complete && i.naturalWidth > 0, width: i.getBoundingClientRect().width}))"""
TABLES = """Array.from(document.querySelectorAll('table.board:not(.transfer)')).map(t => ({id: t.id,
    methods: Array.from(t.tBodies[0].rows).map(r => r.querySelector('th[scope=row]').firstChild.textContent),
    headers: Array.from(t.tHead.rows[0].cells).map(c => c.textContent)}))"""


def column_values(table_id: str, header: str) -> str:
    return f"""(() => {{ const t = document.getElementById('{table_id}');
        const col = Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.startsWith('{header}'));
        return Array.from(t.tBodies[0].rows).map(r => r.cells[col].dataset.sort); }})()"""


def click_header(table_id: str, header: str) -> str:
    return f"""(() => {{ const t = document.getElementById('{table_id}');
        const th = Array.from(t.tHead.rows[0].cells).find(c => c.textContent.startsWith('{header}'));
        th.querySelector('button').click(); return th.getAttribute('aria-sort'); }})()"""


@pytest.mark.slow
def test_committed_site_in_headless_chromium(tmp_path, board):
    binary = chromium_or_skip()
    from chromium_cdp import Browser
    cpu = json.loads(CPU.read_text())
    with Browser(binary, width=1280, height=900) as b:
        b.open((COMMITTED / "index.html").as_uri())
        assert b.eval("document.title").startswith("zsqbench leaderboard")
        # the tables a person sees: one per model and bits, one row per leaderboard row, best mean first
        tables = b.eval(TABLES)
        groups = {}
        for r in cpu["rows"]:
            groups.setdefault(f"{r['model']}-{r['dataset']}-w{r['wbits']}a{r['abits']}", []).append(r)
        assert len(tables) == len(groups)
        for t in tables:
            (key,) = [k for k in groups if t["id"].endswith(k)]
            # a row whose every seed diverged has no mean: last
            rows = sorted(groups[key], key=lambda r: (r["mean"] is None, -(r["mean"] or 0), r["method"]))
            assert t["methods"] == [r["method"] for r in rows]
        # sorting by a column: final top-1 (descending, then ascending), then method names
        tid = tables[0]["id"]
        def numbers_then_missing(column):  # missing values (an all-diverged row) sort last either way
            raw = b.eval(column_values(tid, column))
            present = [v for v in raw if v != ""]
            assert raw == present + [""] * (len(raw) - len(present))
            return [float(v) for v in present]
        assert b.eval(click_header(tid, "final top-1")) == "descending"
        values = numbers_then_missing("final top-1")
        assert values == sorted(values, reverse=True)
        assert b.eval(click_header(tid, "final top-1")) == "ascending"
        values = numbers_then_missing("final top-1")
        assert values == sorted(values)
        assert b.eval(click_header(tid, "method")) == "ascending"
        names = b.eval(f"Array.from(document.getElementById('{tid}').tBodies[0].rows)"
                       ".map(r => r.querySelector('th[scope=row]').firstChild.textContent)")
        assert names == sorted(names)
        assert b.eval(click_header(tid, "wall s")) == "descending"
        walls = numbers_then_missing("wall s")
        assert walls == sorted(walls, reverse=True)
        # every image loads and says what it shows; no console errors
        images = b.eval(IMAGES)
        assert images and all(i["ok"] for i in images), [i["src"] for i in images if not i["ok"]]
        assert all(len(i["alt"]) > 20 for i in images)
        assert b.eval("document.querySelectorAll('th[scope=col]').length") > 0
        assert b.errors() == []
        # what the page says is true (#31): every table fits its container, no interval leaves [0, 100], no link
        # leaves the site (a sweep's records are not committed), no claim about the reader's machine, a table
        # that ranks something comes first
        fits = b.eval("Array.from(document.querySelectorAll('table.board')).map(t => "
                      "[t.id, t.getBoundingClientRect().width, t.parentElement.clientWidth])")
        assert all(w <= c + 1 for _, w, c in fits), fits
        cis = b.eval("Array.from(document.querySelectorAll('table.board td.ci')).map(c => c.textContent)")
        bounds = [float(x) for c in cis for x in re.findall(r"-?\d+\.\d+", c)]
        assert bounds and all(0 <= x <= 100 for x in bounds)
        hrefs = b.eval("Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
        assert all(h.startswith("#") or h.startswith("img/") for h in hrefs), sorted(
            {h for h in hrefs if not h.startswith("#")})
        text = b.eval("document.body.innerText")
        runs = sum(len(r["runs"]) for r in cpu["rows"])
        used = json.loads((COMMITTED / MANIFEST).read_text())["leaderboards"][0]["records_used"]
        says = (f"{used} of the {runs} run records were available when this page was built" if used
                else "this page was built from the leaderboard alone")
        assert "this machine" not in text and says in text
        first = b.eval("Array.from(document.querySelectorAll('table.board')[0].querySelectorAll('td.letters'))"
                       ".map(c => c.dataset.sort).join('')")
        assert len(set(first)) > 1
        b.screenshot(tmp_path / "site-1280.png")
        # a narrow window: the page does not scroll sideways (wide tables scroll inside their own region)
        b.set_width(400, 900)
        b.open((COMMITTED / "index.html").as_uri())
        assert b.eval("document.documentElement.scrollWidth") <= 400
        assert all(i["width"] <= 400 for i in b.eval(IMAGES))
        b.screenshot(tmp_path / "site-400.png")
        assert b.errors() == []
        # the records-rich site (learning curves, previews, diagnostics) loads too
        rich = tmp_path / "rich"
        write_site([str(board[0])], rich, command="CMD")
        b.set_width(1280, 900)
        b.open((rich / "index.html").as_uri())
        images = b.eval(IMAGES)
        assert any("preview" in i["src"] for i in images) and any("curves" in i["src"] for i in images)
        assert all(i["ok"] for i in images), [i["src"] for i in images if not i["ok"]]
        assert b.errors() == []
        # the checks can fail: a page with a missing image is caught
        (rich / "broken.html").write_text('<!doctype html><title>x</title><img src="img/missing.svg" alt="gone">')
        b.open((rich / "broken.html").as_uri())
        assert not all(i["ok"] for i in b.eval(IMAGES))
        assert any("missing.svg" in e for e in b.errors())
    for name in ("site-1280.png", "site-400.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_published_vs_reproduced_where_both_exist(smoke_records, tmp_path):
    """A cifar10 row of a method with a published figure gets it, with both teachers' FP beside it."""
    from zsqbench.leaderboard.published import published_rows
    (pub,) = [e for e in published_rows("gdfq", "resnet20@cifar10", wbits=4) if e["source"]["reported_by"] == "adadfq"]
    pairs = []
    for seed in range(2):
        r = variant(smoke_records["zeroq"], seed, 85.0 + seed, [(4, 86.0 + seed)], 4, method="gdfq")
        r["dataset"] = "cifar10"
        p = tmp_path / f"r{seed}.json"
        p.write_text(json.dumps(r))
        pairs.append((str(p), r))
    lb = with_sizes(build_leaderboard(pairs, "smoke", 1, command="build"))
    (tmp_path / "lb.json").write_text(json.dumps(lb))
    write_site([str(tmp_path / "lb.json")], tmp_path / "site", command="CMD")
    html = page(tmp_path / "site")
    section = html[html.index('id="published"'):]
    assert 'table class="published"' in section
    row = next(tr for tr in section.split("<tr>") if tr.startswith('<th scope="row">gdfq</th><td>resnet20@cifar10'))
    for value in (f"{pub['top1']:.2f}", f"{pub['fp_top1']:.2f}", "86.50", "85.50", f"{lb['rows'][0]['fp_top1']:.2f}"):
        assert f"<td>{value}</td>" in row, (value, row)


def test_floor_and_ceiling_come_from_the_roles_methods_declare(monkeypatch):
    """The page's floor and ceiling lines are the rows of the methods declaring role floor / ceiling, not names."""
    from zsqbench.leaderboard.site import floor_and_ceiling
    from zsqbench.spine.registry import get_registry
    methods = get_registry().methods
    rows = [{"method": m, "mean": mean, "fp_top1": 94.0} for m, mean in (("noise", 20.0), ("fp", 93.5), ("gdfq", 80.0))]
    assert floor_and_ceiling(rows) == (20.0, 93.5)
    monkeypatch.setattr(methods["noise"].obj, "role", "")
    monkeypatch.setattr(methods["gdfq"].obj, "role", "floor")
    monkeypatch.setattr(methods["fp"].obj, "role", "")
    assert floor_and_ceiling(rows) == (80.0, 94.0)  # no ceiling row: the teacher's FP top-1
