"""#31: `zsqbench reproduce`, recorded numerics, progress off a terminal, a CLI that answers without torch,
compare of two labelled sets, validate of every shipped schema, the README's method table."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, zsqbench_cli
from test_leaderboard import compare_json, write_set

from zsqbench.record.io import validation_errors
from zsqbench.spine.progress import LineProgress


@pytest.fixture(scope="module")
def smoke_record(tmp_path_factory):
    """A real smoke run on one thread (its record holds the numerics it ran under)."""
    out = tmp_path_factory.mktemp("smoke")
    proc = zsqbench_cli("run", "--method", "gdfq", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
                        "--threads", "1", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("*.json")
    return path, json.loads(path.read_text())


def test_record_holds_its_numerics(smoke_record):
    _, rec = smoke_record
    assert validation_errors(rec) == []
    num = rec["device"]["numerics"]
    assert rec["device"]["threads"] == num["threads"] == 1
    assert num["cpu_capability"] and isinstance(num["cpu_flags"], list) and num["onednn"]
    assert num["env"].get("OMP_NUM_THREADS") == "1"


def test_reproduce_record_agrees_bit_for_bit(tmp_path, smoke_record):
    path, rec = smoke_record
    proc = zsqbench_cli("reproduce", path, "--out", tmp_path / "re", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (r,) = json.loads(proc.stdout)["results"]
    assert r["verdict"] == "agrees" and r["delta"] == 0 and r["differs"] == []
    assert r["new"]["final_top1"] == rec["final_top1"] and r["threads"] == 1
    new = json.loads(Path(r["record"]).read_text())
    assert new["train_metrics"] == rec["train_metrics"]  # every float of the run, not only the rounded top-1


def test_reproduce_names_what_differs(tmp_path, smoke_record):
    path, rec = smoke_record
    changed = json.loads(json.dumps(rec))
    changed["final_top1"] = round(rec["final_top1"] + 1.0, 4)
    changed["best_top1_selected_on_test"] = max(h["top1"] for h in changed["eval_history"])
    changed["device"]["name"] = "Some Other CPU (2 cpus)"
    changed["device"]["numerics"]["cpu_flags"] = ["avx", "avx2", "avx512f"]
    changed["versions"]["torch"] = "2.12.0+cpu"
    del changed["speed"]  # a record from before the speed switches
    f = tmp_path / "changed.json"
    f.write_text(json.dumps(changed))
    proc = zsqbench_cli("reproduce", f, "--out", tmp_path / "re", "--json")
    assert proc.returncode == 1, proc.stderr
    (r,) = json.loads(proc.stdout)["results"]
    assert r["verdict"] == "differs" and r["delta"] == pytest.approx(-1.0)
    text = "; ".join(r["differs"])
    assert "Some Other CPU" in text and "avx512f" in text and "torch 2.12.0+cpu" in text
    assert "speed switches unrecorded vs" in text
    proc = zsqbench_cli("reproduce", f, "--out", tmp_path / "re", "--tolerance", "1.5")  # the table, agreeing
    assert proc.returncode == 0 and "agrees" in proc.stdout


def test_reproduce_repeats_the_records_speed_switches(tmp_path):
    """A record made with the speed switches off (docs/speed.md) re-runs with them off, whatever the caller's
    environment says, and agrees bit for bit; the hand-typed command carries them too."""
    out = tmp_path / "eager"
    proc = zsqbench_cli("run", "--method", "gdfq", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
                        "--threads", "1", "--out", out, "-q", env={"ZSQBENCH_SPEED": "eager"})
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["speed"] == {"phase_conv": False, "channels_last": False, "fused_fakequant": False}
    proc = zsqbench_cli("reproduce", path, "--out", tmp_path / "re", "--json", env={"ZSQBENCH_SPEED": "fast"})
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (r,) = json.loads(proc.stdout)["results"]
    assert r["verdict"] == "agrees" and r["differs"] == [], r
    assert r["command"].startswith("ZSQBENCH_SPEED=channels_last=0,fused_fakequant=0,phase_conv=0 zsqbench run")
    assert json.loads(Path(r["record"]).read_text())["train_metrics"] == rec["train_metrics"]


def test_reproduce_leaderboard_row(tmp_path, smoke_record):
    path, _ = smoke_record
    d = tmp_path / "sweep" / "job"
    d.mkdir(parents=True)
    (d / "record.json").write_text(path.read_text())
    lb = tmp_path / "smoke.json"
    proc = zsqbench_cli("leaderboard", "build", "--protocol", "smoke", tmp_path / "sweep", "-o", lb)
    assert proc.returncode == 0, proc.stderr
    proc = zsqbench_cli("reproduce", lb, "--rows", "gdfq/resnet20/W4A4", "--out", tmp_path / "re", "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (r,) = json.loads(proc.stdout)["results"]
    assert r["verdict"] == "agrees" and r["label"] == "gdfq resnet20@fmnist W4A4 seed 0"
    assert r["threads"] == 1 and "leaderboard" in r["threads_from"] and "--threads 1" in r["command"]


@pytest.mark.parametrize("args, expected", [
    (["leaderboard/cpu.json", "--rows", "nosuch"], "no finished run matching --rows nosuch"),
    (["leaderboard/cpu.json", "--rows", "a/b/c/d"], "use METHOD, METHOD/MODEL or METHOD/MODEL/WxAy"),
    (["leaderboard/cpu.json", "--rows", "adadfq/resnet20/W3"], "is not WxAy or N"),
    (["leaderboard"], "is a directory"),
    (["no/such.json"], "cannot read no/such.json"),
    (["leaderboard/cpu.notes.json"], "neither a run record nor a zsqbench leaderboard"),
])
def test_reproduce_bad_input_one_line(args, expected):
    proc = zsqbench_cli("reproduce", *args, "--dry-run", cwd=ROOT)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_reproduce_dry_run_of_a_committed_row():
    proc = zsqbench_cli("reproduce", "leaderboard/cpu.json", "--rows", "adadfq/resnet20/W3A3", "--seeds", "0",
                        "--dry-run", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    board = json.loads((ROOT / "leaderboard" / "cpu.json").read_text())
    (row,) = [r for r in board["rows"]
              if (r["method"], r["model"], r["wbits"], r["abits"]) == ("adadfq", "resnet20", 3, 3)]
    seed0 = dict(zip(row["seeds"], row["final_top1"]))[0]
    assert f"adadfq resnet20@fmnist W3A3 seed 0: top-1 {seed0:.2f}" in proc.stdout
    assert "zsqbench run --method adadfq --model resnet20@fmnist --wbits 3 --abits 3 --seed 0 --protocol cpu " \
           "--threads 1" in proc.stdout


def test_line_progress_prints_plain_periodic_lines():
    out = io.StringIO()
    p = LineProgress(out, interval_s=0)
    task = p.add_task("distill", total=4, info="")
    for i in range(4):
        p.update(task, advance=1, info=f"loss {i}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "[progress] distill 0/4 (0 %) started"
    assert re.match(r"\[progress\] distill 1/4 \(25 %\) [\d.]+ (step/s|s/step), elapsed \d+s, ETA \d+s · loss 0",
                    lines[1])
    assert lines[-1].startswith("[progress] distill 4/4 (100 %)") and "done" in lines[-1]
    assert "\x1b" not in out.getvalue()  # no terminal control codes in a log file


def test_run_to_a_file_prints_progress_lines(tmp_path):
    proc = zsqbench_cli("run", "--method", "gdfq", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
                        "--out", tmp_path, env={"ZSQBENCH_PROGRESS_S": "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stdout.splitlines() if x.startswith("[progress]")]
    assert any(x.startswith("[progress] calibration 3/3") for x in lines)
    assert any(re.match(r"\[progress\] distill [1-5]/6 .*ETA", x) for x in lines)


def test_help_and_version_do_not_import_torch():
    code = ("import sys; sys.argv = ['zsqbench', '--help']\nfrom zsqbench.frontends.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NOTORCH')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NOTORCH") and "reproduce" in proc.stdout


def test_compare_two_labelled_sets_of_an_ablation(tmp_path, smoke_record):
    base = smoke_record[1]
    a = write_set(tmp_path / "a", base, "gdfq", [80.0, 80.5, 81.0], off=["overrides: train.steps=12"])
    b = write_set(tmp_path / "b", base, "gdfq", [85.0, 85.5, 86.0], off=["overrides: train.steps=24"])
    proc, res = compare_json(a, b)
    (c,) = res["comparisons"]
    assert c["method"] == "gdfq [train.steps=12] → gdfq [train.steps=24]" and c["mark"] == "+"
    assert c["delta"] == pytest.approx(5.0) and res["unmatched"] == []
    on = write_set(tmp_path / "on", base, "gdfq", [80.0, 80.5, 81.0])
    proc, res = compare_json(on, b)  # on-protocol vs an ablation of the same method
    assert [c["method"] for c in res["comparisons"]] == ["gdfq → gdfq [train.steps=24]"]


def test_validate_knows_every_shipped_schema(tmp_path):
    schemas = sorted(p.name.removesuffix(".schema.json")
                     for p in (ROOT / "zsqbench/record/schema").glob("*.schema.json"))
    assert schemas == ["leaderboard", "leaderboard-notes", "published", "run-record"]
    proc = zsqbench_cli("validate", "leaderboard/cpu.json", "leaderboard/cpu.notes.json", "baselines/published.json",
                        cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(leaderboard notes)" in proc.stdout and "(leaderboard)" in proc.stdout
    bad = tmp_path / "notes.json"
    bad.write_text(json.dumps({"protocol": "cpu", "rows": [{"method": 1}]}))
    proc = zsqbench_cli("validate", bad)
    assert proc.returncode == 1 and "invalid" in proc.stdout and "(leaderboard notes)" in proc.stdout


def method_table(text: str) -> set[str] | None:
    """The names in the first markdown table whose header starts with ``| method |`` (None: no such table)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\|\s*method\s*\|", line):
            names = set()
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                m = re.match(r"\|\s*`([^`]+)`", row)
                if m:
                    names.add(m.group(1))
            return names
    return None


def test_readme_method_table_matches_the_registry():
    """Every built-in method has a row in the README's method table (or the docs page it moved to), and every row
    names a registered method: the table cannot drift from `zsqbench list methods` again."""
    from zsqbench.spine.registry import get_registry
    tables = [method_table(p.read_text()) for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    in_docs = next(t for t in tables if t is not None)
    registered = {name for name, e in get_registry().methods.items() if e.distribution == "zsqbench"}
    assert in_docs == registered, (sorted(registered - in_docs), sorted(in_docs - registered))


def test_list_answers_from_its_catalog_without_torch(tmp_path):
    env = {**os.environ, "ZSQBENCH_CACHE_DIR": str(tmp_path), "COLUMNS": "200"}
    code = ("import sys; sys.argv = ['zsqbench', 'list', 'methods']\nfrom zsqbench.frontends.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NOTORCH')")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert first.returncode == 0 and first.stdout.strip().endswith("TORCH"), first.stderr  # loads, then caches
    assert (tmp_path / "catalog.json").is_file()
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert second.stdout.strip().endswith("NOTORCH"), second.stderr
    assert second.stdout.replace("NOTORCH", "") == first.stdout.replace("TORCH", "")
    # a changed environment (here: a disabled plugin) is a new stamp: the plugins load again
    third = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**env, "ZSQBENCH_DISABLE_PLUGINS": "gdfq"})
    assert third.stdout.strip().endswith("TORCH") and "│ gdfq " not in third.stdout


def test_readme_counts_of_published_entries_are_current():
    entries = json.loads((ROOT / "baselines" / "published.json").read_text())["entries"]
    for m in re.finditer(r"(\d+) entries\)", (ROOT / "README.md").read_text()):
        assert int(m.group(1)) == len(entries), f"README says {m.group(0)}, baselines/published.json has {len(entries)}"


def test_wide_table_is_never_squeezed_into_narrow_columns():
    narrow = zsqbench_cli("leaderboard", "show", "leaderboard/cpu.json", cwd=ROOT, env={"COLUMNS": "80"})
    wide = zsqbench_cli("leaderboard", "show", "leaderboard/cpu.json", "--wide", cwd=ROOT, env={"COLUMNS": "80"})
    assert narrow.returncode == wide.returncode == 0, wide.stderr
    board_part = wide.stdout.split("transfer ·")[0]  # the held-out teachers' tables follow the board
    rows = [line for line in board_part.splitlines() if "adadfq" in line and "│" in line]
    tables = sum(r["method"] == "adadfq" for r in json.loads((ROOT / "leaderboard" / "cpu.json").read_text())["rows"])
    assert len(rows) == tables >= 1  # one line per row (one per table), not folded into 2-3-character columns
    assert len(wide.stdout.splitlines()) < 3 * len(narrow.stdout.splitlines())
    assert all(h in wide.stdout for h in ("95 % CI", "per seed", "step ms"))
