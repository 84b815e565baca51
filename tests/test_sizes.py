"""Size beside accuracy (issue #30, part 3): the leaderboard's computed sizes are what a real `--save-student` run
writes, runs that saved and exported their student carry the measured figures, and `leaderboard show`, `--json` and
the page (in headless Chromium) show them; a tampered sizes block gets one line."""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest
from conftest import error_line
import torch

from zsqbench.export.sizes import plan_sizes
from zsqbench.frontends.sizes import leaderboard_sizes, with_sizes
from zsqbench.export.student import _digest, read_student
from zsqbench.leaderboard.build import build_leaderboard, validate_leaderboard
from zsqbench.leaderboard.site import write_site
from zsqbench.spine.loop import RunSpec, run
from zsqbench.spine.plan import resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """One real smoke run of embedded ResNet-20 at W4A4 that saves and exports its student (onnxruntime)."""
    pytest.importorskip("onnxruntime")
    d = tmp_path_factory.mktemp("saved")
    spec = RunSpec(method="noise", model="resnet20", wbits=4, abits=4, protocol="smoke", out=str(d / "res"),
                   quiet=True, save_student=True, export_dir=str(d / "onnx"))
    rec, path = run(spec)
    return spec, rec, Path(path), d


def test_computed_size_is_what_a_saved_student_holds(saved_run):
    spec, rec, path, _ = saved_run
    s = plan_sizes(resolve(RunSpec(method=spec.method, model=spec.model, wbits=4, abits=4, protocol="smoke")))
    student = rec["student"]
    # the same figures the run measured, to the byte
    assert s["integer"] and s["weight_code_bytes"] == student["weight_code_bytes"]
    assert s["fp_state_dict_bytes"] == student["fp_state_dict_bytes"]
    # the computed student is the saved file less the run's metadata, to the byte
    obj = read_student(path.parent / student["file"])
    tensors = (obj["codes"].numel() + 4 * obj["scales"].numel() + 4 * obj["zero_points"].numel()
               + 4 * obj["floats"].numel() + 8 * obj["ints"].numel())
    assert s["bytes"] - s["index_bytes"] == tensors
    obj["meta"] = {}
    obj["digest"] = _digest(obj)
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert s["bytes"] == len(buf.getvalue())
    assert s["bytes"] < student["bytes"] < s["bytes"] + 4 * 1024  # the run's metadata
    assert s["fraction_of_fp"] == round(s["bytes"] / s["fp_state_dict_bytes"], 4)
    assert student["bytes"] <= student["fp_state_dict_bytes"] / 6  # the W4A4 target, on the real file
    print(f"resnet20@fmnist W4A4: computed {s}; saved file {student['bytes']} B")


@pytest.fixture(scope="module")
def board(saved_run, tmp_path_factory):
    """A leaderboard built from the saved run's record (its row carries the measured figures) and an fp row."""
    _, rec, path, _ = saved_run
    fp = copy.deepcopy(rec)
    fp["method"]["name"] = "fp"
    for k in ("student", "export"):
        fp.pop(k, None)
    lb = with_sizes(build_leaderboard([(str(path), rec), ("fp.json", fp)], "smoke", 1, command="zsqbench leaderboard build X"))
    out = tmp_path_factory.mktemp("board") / "smoke.json"
    out.write_text(json.dumps(lb))
    return lb, out


def test_leaderboard_carries_sizes_and_measured_figures(board, saved_run):
    lb, _ = board
    _, rec, _, _ = saved_run
    assert validate_leaderboard(lb) == []
    (entry,) = lb["sizes"]["tables"]
    assert entry["table"] == "resnet20@fmnist W4A4" and lb["sizes"]["source"] == "computed"
    packed, fp = entry["students"]
    assert packed["methods"] == ["noise"] and packed["integer"]
    assert packed["weight_code_bytes"] == rec["student"]["weight_code_bytes"]
    assert fp == {"methods": ["fp"], "integer": False, "bytes": entry["fp_state_dict_bytes"]}
    (noise,) = [r for r in lb["rows"] if r["method"] == "noise"]
    saved = noise["runs"][0]["saved"]
    assert saved["student_file_bytes"] == rec["student"]["bytes"]
    assert saved["onnx_top1"] == rec["export"]["measured"]["student_onnx_top1"]
    assert saved["fake_quant_top1"] == rec["final_top1"]
    assert saved["latency_ms"]["quantized"]["batch1"] == rec["export"]["measured"]["latency"]["quantized"]["batch1"]
    (fp_row,) = [r for r in lb["rows"] if r["method"] == "fp"]
    assert "saved" not in fp_row["runs"][0]


def test_show_and_json_carry_the_sizes(board, cli):
    lb, path = board
    proc = cli("leaderboard", "show", path, "--wide")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    packed = lb["sizes"]["tables"][0]["students"][0]
    assert "size · resnet20@fmnist W4A4: FP teacher 1.09 MiB (state dict); packed W4A4 student" in out
    assert f"{packed['bytes'] / 1024:.1f} KiB (1/{1 / packed['fraction_of_fp']:.1f})" in out  # the size column
    assert "computed from the architecture (zsqbench.export.sizes), not measured" in out
    assert "measured · noise resnet20@fmnist W4A4: saved student file" in out and "onnxruntime top-1" in out
    proc = cli("leaderboard", "show", path, "--json")
    assert proc.returncode == 0, proc.stderr
    shown = json.loads(proc.stdout)
    assert shown["sizes"] == lb["sizes"]
    assert [r["runs"][0].get("saved") for r in shown["rows"]] == [r["runs"][0].get("saved") for r in lb["rows"]]


def test_page_shows_size_beside_accuracy_in_chromium(board, tmp_path):
    pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[test]')")
    from chromium_cdp import Browser, find_chromium
    binary = find_chromium()
    if not binary:
        pytest.skip("no Chromium here (setup.sh installs Debian's `chromium`; or set ZSQBENCH_CHROMIUM)")
    lb, path = board
    write_site([str(path)], tmp_path / "site", command="CMD", use_records=False)
    packed = lb["sizes"]["tables"][0]["students"][0]
    committed = json.loads((ROOT / "leaderboard" / "cpu.json").read_text())
    cells = """(() => { const t = document.querySelector('table.board');
        const heads = Array.from(t.tHead.rows[0].cells).map(c => c.textContent);
        const rows = Array.from(t.tBodies[0].rows).map(r => [r.querySelector('th[scope=row]').firstChild.textContent,
            Object.fromEntries(Array.from(r.cells).map(c => [c.className, c.innerText]))]);
        return {heads, rows: Object.fromEntries(rows),
                note: document.querySelector('p.sizes').innerText}; })()"""
    with Browser(binary, width=1280, height=900) as b:
        b.open((tmp_path / "site" / "index.html").as_uri())
        page = b.eval(cells)
        heads = page["heads"]
        # size and the measured export figures sit beside the accuracy columns
        assert heads.index("size KiB") == heads.index("FP %") + 1
        assert {"saved student file", "onnxruntime top-1 %", "latency ms/image, batch 1"} <= set(heads)
        noise, fp = page["rows"]["noise"], page["rows"]["fp"]
        assert noise["size"].split() == [f"{packed['bytes'] / 1024:.1f}", f"1/{1 / packed['fraction_of_fp']:.1f}"]
        assert fp["size"].split() == [f"{lb['sizes']['tables'][0]['fp_state_dict_bytes'] / 1024:.1f}", "FP"]
        saved = lb["rows"][[r["method"] for r in lb["rows"]].index("noise")]["runs"][0]["saved"]
        assert noise["saved"].startswith(f"{saved['student_file_bytes'] / 1024:.1f} KiB")
        assert noise["onnx"].startswith(f"{saved['onnx_top1']:.2f}") and "fake-quant" in noise["onnx"]
        assert fp["saved"] == fp["onnx"] == fp["latency"] == "—"
        assert "computed from the architecture" in page["note"] and "are measured" in page["note"]
        assert b.errors() == []
        # the committed page: every table shows the computed size of its students, and says no figure is measured
        b.open((ROOT / "leaderboard" / "site" / "index.html").as_uri())
        got = b.eval("""Array.from(document.querySelectorAll('table.board:not(.transfer)')).map(t => [
            t.caption.textContent,
            Array.from(t.tBodies[0].rows).map(r => [r.querySelector('th[scope=row]').firstChild.textContent,
                                                    r.querySelector('td.size').innerText])])""")
        assert len(got) == len(committed["sizes"]["tables"])
        for caption, rows in got:
            (entry,) = [t for t in committed["sizes"]["tables"] if caption.startswith(t["table"])]
            want = {m: f"{g['bytes'] / 1024:.1f}" for g in entry["students"] for m in g["methods"]}
            assert rows and all(text.startswith(want[m]) for m, text in rows), (caption, rows)
        notes = b.eval("Array.from(document.querySelectorAll('p.sizes')).map(p => p.innerText)")
        assert len(notes) == len(got) and all("no size, onnxruntime top-1 or latency here is measured" in n
                                              for n in notes)
        fits = b.eval("Array.from(document.querySelectorAll('table.board')).map(t => "
                      "[t.id, t.getBoundingClientRect().width, t.parentElement.clientWidth])")
        assert all(w <= c + 1 for _, w, c in fits), fits
        assert b.errors() == []


def test_committed_leaderboard_sizes_are_current():
    """leaderboard/cpu.json's sizes are what the code computes today (`zsqbench leaderboard restat` refreshes them)."""
    committed = json.loads((ROOT / "leaderboard" / "cpu.json").read_text())
    assert committed.get("sizes") == leaderboard_sizes(committed), \
        "leaderboard/cpu.json's sizes are stale: run `zsqbench leaderboard restat leaderboard/cpu.json`"
    for table in committed["sizes"]["tables"]:  # every table's students are packed integers at <= 4 bits
        packed = table["students"][0]
        assert packed["integer"] and packed["fraction_of_fp"] <= 1 / 4, table["table"]
        if table["table"].startswith("resnet20@"):  # the target on ResNet-20 (MobileNetV2 W4A3: 1/4.9, its
            assert packed["fraction_of_fp"] <= 1 / 6, table["table"]  # BN, biases and 8-bit ends weigh more)


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s["tables"][0]["students"][0].update(bytes=s["tables"][0]["students"][0]["bytes"] + 1),
     "not the sum of their parts"),
    (lambda s: s["tables"][0].update(table="resnet20@fmnist W2A2"), "no such table"),
    (lambda s: s["tables"][0]["students"][0]["methods"].append("bag"), "methods the table lacks"),
    (lambda s: s["tables"][0].pop("fp_state_dict_bytes"), "fp_state_dict_bytes"),
    (lambda s: s.update(source="measured"), "computed"),
], ids=["parts", "table", "method", "missing", "source"])
def test_tampered_sizes_one_line(board, cli, tmp_path, edit, expected):
    lb, _ = board
    bad = copy.deepcopy(lb)
    edit(bad["sizes"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    line = error_line(cli("leaderboard", "show", path))
    assert "invalid leaderboard" in line and expected in line
    proc = cli("validate", path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and expected in proc.stdout
    line = error_line(cli("leaderboard", "site", path, "-o", tmp_path / "site"))
    assert expected in line and not (tmp_path / "site").exists()


def test_sizes_only_for_the_registered_protocol_and_known_methods(board):
    lb, _ = board
    other = copy.deepcopy(lb)
    other["protocol"]["hash"] = "0" * 64  # another version of the protocol: its sizes would not be this one's
    assert leaderboard_sizes(other) is None
    unknown = copy.deepcopy(lb)
    (row,) = [r for r in unknown["rows"] if r["method"] == "fp"]
    row["method"] = "not-registered"
    (entry,) = leaderboard_sizes(unknown)["tables"]
    assert entry["unsized"] == ["not-registered"] and [g["methods"] for g in entry["students"]] == [["noise"]]
    unknown["sizes"] = leaderboard_sizes(unknown)
    assert validate_leaderboard(unknown) == []
