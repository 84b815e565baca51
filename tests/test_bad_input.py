"""The bad-input battery: hostile or mistaken inputs to every command. Each must give exactly one line on stderr
starting with ``error:``, a non-zero exit, no traceback, no record (not even a partial one) and no work done (no
cache entry: the teacher was never evaluated). In-process through click's CliRunner (fast); the signals need a
real process."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from zsqbench.evaluation import data as eval_data
from zsqbench.frontends.cli import cli as zsqbench
from zsqbench.record.check import seal

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "zsqbench" / "teacher" / "weights"
RUN = ["run", "--model", "resnet20", "--bits", "4", "--protocol", "smoke", "-q"]


@pytest.fixture(autouse=True)
def _no_inherited_data_root(monkeypatch):
    monkeypatch.delenv(eval_data.ENV_DATA_ROOT, raising=False)


def invoke(args, env=None):
    result = CliRunner().invoke(zsqbench, [str(a) for a in args], env=env)
    return result


def assert_one_line_error(result, expect: str | list[str], code: int = 2):
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # never an unexpected exception
    text = result.stderr
    assert "Traceback" not in text + result.stdout
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for part in [expect] if isinstance(expect, str) else expect:
        assert part in lines[0], lines[0]
    return lines[0]


def assert_nothing_written(*dirs: Path):
    for d in dirs:
        assert not d.exists() or not any(p for p in d.rglob("*") if p.is_file()), list(d.rglob("*"))


@pytest.fixture
def dirs(tmp_path):
    return tmp_path / "out", tmp_path / "cache"


# --- run: a bad value for every kind of setting -------------------------------------------------------------------

BAD_SETTINGS = {
    # method, KEY=VALUE, what the line must say
    "int-not-a-number": ("gdfq", "train.steps=abc", ['train.steps="abc"', "int ≥ 0", "--set"]),
    "int-negative": ("gdfq", "train.steps=-1", ["train.steps=-1", "int ≥ 0"]),
    "int-given-a-float": ("gdfq", "train.steps=1.5", ["train.steps=1.5", "int"]),
    "float-negative": ("gdfq", "train.lr=-1", ["train.lr=-1", "float > 0"]),
    "float-not-a-number": ("gdfq", "train.lr=abc", ['train.lr="abc"', "float > 0"]),
    "float-nan": ("gdfq", "train.lr=NaN", ["train.lr=NaN", "float > 0"]),
    "float-bool": ("gdfq", "distiller.temperature=true", ["distiller.temperature=true", "float > 0"]),
    "batch-zero": ("gdfq", "train.batch_size=0", ["train.batch_size=0", "int ≥ 1"]),
    "choice-optimizer": ("gdfq", "train.optimizer=rmsprop", ['train.optimizer="rmsprop"', "'sgd' | 'adam'"]),
    "bool-as-int": ("gdfq", "train.nesterov=1", ["train.nesterov=1", "bool"]),
    "list-given-scalar": ("gdfq", "train.milestones=0.5", ["train.milestones=0.5", "list[float > 0, ≤ 1]"]),
    "list-item-out-of-range": ("gdfq", "train.milestones=[2]", ["train.milestones=[2]", "item 0"]),
    "rule-across-settings": ("gdfq", "train.momentum=0", ["nesterov=true needs momentum > 0"]),
    "eval-limit-zero": ("gdfq", "eval.limit=0", ["eval.limit=0", "int ≥ 1 or null"]),
    "eval-split-choice": ("gdfq", "eval.split=val", ['eval.split="val"', "'test' | 'dev'"]),
    "distiller-choice": ("gdfq", "distiller.kl_reduction=sideways", ['kl_reduction="sideways"', "'batchmean'"]),
    "quantizer-choice": ("gdfq", "quantizer.range_rule=nope", ['range_rule="nope"', "'minmax'"]),
    "quantizer-range": ("gdfq", "quantizer.momentum=1.5", ["quantizer.momentum=1.5", "< 1"]),
    "list-length": ("gdfq", "synthesizer.betas=[0.5]", ["synthesizer.betas=[0.5]", "2 items"]),
    "generator-width-zero": ("gdfq", "synthesizer.width=0", ["synthesizer.width=0", "int ≥ 1"]),
    "null-for-required-float": ("gdfq", "synthesizer.lr=null", ["synthesizer.lr=null", "float > 0"]),
    "unknown-component-key": ("gdfq", "synthesizer.nope=1", ["synthesizer.nope is not a setting", "latent_dim"]),
    "crop-scale-out-of-range": ("intraq", "synthesizer.synthesis_crop_scale=[0.9,2]", ["synthesis_crop_scale"]),
    "bool-as-string": ("intraq", "synthesizer.train_augment=yes", ['train_augment="yes"', "bool"]),
    "hast-lambda-eps-choice": ("hast", "distiller.lambda_eps=paper", ['lambda_eps="paper"', "'code' | 'hocon'"]),
    "bag-ranges-choice": ("bag", "synthesizer.g_act_ranges=sometimes", ['g_act_ranges="sometimes"', "'warmup'"]),
    "noise-std-zero": ("noise", "synthesizer.std=0", ["synthesizer.std=0", "float > 0"]),
    "key-without-section": ("gdfq", "train=5", ["must start with train."]),
}


@pytest.mark.parametrize("method, setting, expect", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_run_bad_setting_value(method, setting, expect, dirs):
    out, cache = dirs
    result = invoke([*RUN, "--method", method, "--set", setting, "--out", out, "--cache-dir", cache])
    assert_one_line_error(result, expect)
    assert_nothing_written(out, cache)


def test_bad_value_in_a_plugin_settings_file_names_the_file(tmp_path, dirs):
    """A bad value that comes from a method's settings file (not --set) names that file."""
    from zsqbench.spine.errors import UserError
    from zsqbench.spine.interfaces import Method
    from zsqbench.spine.loop import RunSpec, resolve
    from zsqbench.spine.registry import get_registry
    settings = tmp_path / "broken.json"
    settings.write_text(json.dumps({"smoke": {"train": {"lr": "fast"}}}))
    reg = get_registry()
    reg.methods["broken-settings"] = type(reg.methods["gdfq"])(
        "broken-settings", Method("broken-settings", "gdfq", "kd", settings=str(settings)), "test 0")
    try:
        with pytest.raises(UserError) as e:
            resolve(RunSpec(method="broken-settings", model="resnet20", wbits=4, abits=4, protocol="smoke"), reg)
        assert 'train.lr="fast"' in str(e.value) and str(settings) in str(e.value)
        settings.write_text("{not json")
        with pytest.raises(UserError, match="cannot read method 'broken-settings'"):
            resolve(RunSpec(method="broken-settings", model="resnet20", wbits=4, abits=4, protocol="smoke"), reg)
    finally:
        del reg.methods["broken-settings"]


# --- run: everything else a user can get wrong ---------------------------------------------------------------------

def _hostile_pickle(path: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"conv.weight": Payload()}, path)


@pytest.fixture
def bad_files(tmp_path):
    d = tmp_path / "files"
    d.mkdir()
    (d / "garbage.pt").write_bytes(b"this is not a checkpoint")
    real = (WEIGHTS / "resnet20_fmnist.pt").read_bytes()
    (d / "truncated.pt").write_bytes(real[: len(real) // 2])
    _hostile_pickle(d / "hostile.pt", d / "PWNED")
    (d / "card-not-json.json").write_text("{mean: 0.2")
    (d / "card-zero-std.json").write_text(json.dumps({"mean": [0.2], "std": [0]}))
    (d / "card-rgb.json").write_text(json.dumps({"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}))
    (d / "empty-root").mkdir()
    return d


RUN_CASES = {
    "bits-zero": (["--method", "gdfq", "--bits", "0"], ["bit-width 0 out of range"]),
    "bits-huge": (["--method", "gdfq", "--wbits", "99", "--abits", "4"], ["bit-width 99 out of range"]),
    "unknown-protocol": (["--method", "gdfq", "--protocol", "nope"], ["unknown protocol 'nope'"]),
    "unknown-method": (["--method", "nope"], ["unknown method 'nope'"]),
    "weights-garbage": (["--method", "fp", "--weights", "{d}/garbage.pt"], ["cannot read weights", "garbage.pt"]),
    "weights-truncated": (["--method", "fp", "--weights", "{d}/truncated.pt"], ["cannot read weights", "truncated"]),
    "weights-hostile-pickle": (["--method", "fp", "--weights", "{d}/hostile.pt"], ["cannot read weights"]),
    "weights-wrong-architecture": (["--method", "fp", "--weights", str(WEIGHTS / "mobilenetv1_fmnist.pt")],
                                   ["do not fit resnet20@fmnist"]),
    "data-root-without-data": (["--method", "fp", "--data-root", "{d}/empty-root"],
                               ["fmnist data not found under --data-root", "empty-root", "t10k-images-idx3-ubyte"]),
    "teacher-card-not-json": (["--method", "fp", "--teacher-card", "{d}/card-not-json.json"], ["is not JSON"]),
    "teacher-card-zero-std": (["--method", "fp", "--teacher-card", "{d}/card-zero-std.json"], ["std"]),
    "teacher-card-wrong-channels": (["--method", "fp", "--teacher-card", "{d}/card-rgb.json"],
                                    ["mean has 3 values", "1 channel"]),
    "teacher-card-missing": (["--method", "fp", "--teacher-card", "{d}/no-such-card.json"],
                             ["teacher card not found"]),
}


@pytest.mark.parametrize("args, expect", RUN_CASES.values(), ids=RUN_CASES.keys())
def test_run_bad_input(args, expect, bad_files, dirs):
    out, cache = dirs
    args = [a.replace("{d}", str(bad_files)) for a in args]
    result = invoke([*RUN, *args, "--out", out, "--cache-dir", cache])
    assert_one_line_error(result, expect)
    assert_nothing_written(out, cache)
    assert not (bad_files / "PWNED").exists()  # the hostile pickle's code never ran


def test_env_data_root_without_data(bad_files, dirs):
    out, cache = dirs
    result = invoke([*RUN, "--method", "fp", "--out", out, "--cache-dir", cache],
                    env={eval_data.ENV_DATA_ROOT: str(bad_files / "empty-root")})
    assert_one_line_error(result, ["data not found under $ZSQBENCH_DATA_ROOT", "empty-root"])
    assert_nothing_written(out, cache)


# --- synth and a corrupt synthetic-set cache ----------------------------------------------------------------------

def test_synth_bad_inputs_and_corrupt_cache(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    synth = ["synth", "--model", "resnet20", "--protocol", "smoke", "-q", "--cache-dir", cache]
    assert_one_line_error(invoke([*synth, "--method", "gdfq"]), ["builds no image set"])
    assert_one_line_error(invoke([*synth, "--method", "zeroq", "--set", "synthesizer.iterations=-3"]),
                          ["synthesizer.iterations=-3", "int ≥ 0"])
    assert_one_line_error(invoke([*synth, "--method", "zeroq", "--set", "synthesizer.num_images=many"]),
                          ['synthesizer.num_images="many"'])
    assert not cache.exists()
    built = invoke([*synth, "--method", "zeroq"])
    assert built.exit_code == 0, built.output
    (pt,) = (cache / "synthetic").glob("zeroq_*.pt")
    pt.write_bytes(pt.read_bytes()[:200])  # a set cut short (a full disk, a killed copy)
    line = assert_one_line_error(invoke([*synth, "--method", "zeroq"]), ["delete it"])
    assert str(pt) in line
    assert_one_line_error(invoke([*RUN, "--method", "zeroq", "--out", out, "--cache-dir", cache]), ["delete it"])
    assert_nothing_written(out)


# --- sweep ------------------------------------------------------------------------------------------------------------

SWEEP_CASES = {
    "unknown-protocol": (["--protocol", "nope"], ["unknown protocol 'nope'"]),
    "bad-bits": (["--protocol", "smoke", "--bits", "abc"], ["--bits 'abc'"]),
    "unknown-method": (["--protocol", "smoke", "--methods", "nope"], ["unknown method 'nope'"]),
    "bad-setting-value": (["--protocol", "smoke", "--methods", "gdfq", "--set", "train.steps=abc"],
                          ['train.steps="abc"', "int ≥ 0"]),
    "bad-choice": (["--protocol", "smoke", "--methods", "gdfq", "--set", "distiller.kl_reduction=x"],
                   ['kl_reduction="x"']),
}


@pytest.mark.parametrize("args, expect", SWEEP_CASES.values(), ids=SWEEP_CASES.keys())
def test_sweep_bad_input(args, expect, tmp_path):
    out = tmp_path / "sweep"
    assert_one_line_error(invoke(["sweep", *args, "-o", out, "-q"]), expect)
    assert_nothing_written(out)


# --- records, leaderboards, compare, validate ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def record(tmp_path_factory):
    """One real smoke record (the FP teacher: the fastest run)."""
    out = tmp_path_factory.mktemp("rec")
    torch.set_num_threads(1)
    result = invoke([*RUN, "--method", "fp", "--out", out])
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.json")
    return path


def _copy(record: Path, dest: Path, **changes) -> Path:
    rec = json.loads(record.read_text())
    for key, value in changes.items():
        rec[key] = value
    seal(rec)  # a made-up record carries its own digest, as a real run's does
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(rec))
    return dest


def test_leaderboard_build_refuses_bad_inputs(record, tmp_path):
    board = tmp_path / "board.json"
    truncated = tmp_path / "trunc" / "r.json"
    truncated.parent.mkdir()
    truncated.write_text(record.read_text()[:300])
    build = ["leaderboard", "build", "--protocol", "smoke", "-o", board]
    assert_one_line_error(invoke([*build, truncated]), ["is not JSON", "r.json"])
    assert_one_line_error(invoke([*build, tmp_path / "nowhere"]), ["no such file or directory"])
    assert_one_line_error(invoke(["leaderboard", "build", "--protocol", "cpu", "-o", board, record]),
                          ["not protocol 'cpu'"])
    # two seeds of one row run by different code
    rec = json.loads(record.read_text())
    other_code = {d: {**c, "sha256": "0" * 64} for d, c in rec["code"].items()}
    a = _copy(record, tmp_path / "mix" / "a.json", seed=0)
    b = _copy(record, tmp_path / "mix" / "b.json", seed=1, code=other_code)
    assert_one_line_error(invoke([*build, a, b]), ["mixes code versions", "a.json", "b.json"])
    # a known code version beside records that have none
    c = _copy(record, tmp_path / "mix2" / "c.json", seed=1)
    rec_c = json.loads(c.read_text())
    del rec_c["code"]
    c.write_text(json.dumps(seal(rec_c)))
    assert_one_line_error(invoke([*build, a, c]), ["mixes code versions", "unknown"])
    assert not board.exists()


def test_leaderboard_show_compare_validate_refuse_bad_inputs(record, tmp_path):
    board = tmp_path / "board.json"
    assert invoke(["leaderboard", "build", "--protocol", "smoke", "-o", board, record]).exit_code == 0
    lb = json.loads(board.read_text())
    lb["rows"][0]["mean"] += 5  # a tampered headline
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(lb))
    notjson = tmp_path / "notjson.json"
    notjson.write_text("[1, 2")
    assert_one_line_error(invoke(["leaderboard", "show", record]), ["is not a zsqbench leaderboard"])
    assert_one_line_error(invoke(["leaderboard", "show", tampered]), ["invalid leaderboard", "mean"])
    assert_one_line_error(invoke(["leaderboard", "show", notjson]), ["is not JSON"])
    assert_one_line_error(invoke(["compare", record]), ["compare needs two or more inputs"])
    assert_one_line_error(invoke(["compare", record, tmp_path / "nowhere"]), ["no such file or directory"])
    assert_one_line_error(invoke(["compare", board, tampered]), ["invalid leaderboard"])
    assert_one_line_error(invoke(["validate", tmp_path / "nowhere"]), ["no such file or directory"])
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    (empty / "job.json").write_text("{}")
    assert_one_line_error(invoke(["validate", empty]), ["no run record, leaderboard or published baselines"])
    # validate reports (exit 1) one line per bad file, on stdout: a truncated record and a tampered leaderboard
    truncated = tmp_path / "trunc.json"
    truncated.write_text(record.read_text()[:500])
    result = invoke(["validate", truncated, tampered])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("invalid") and "is not JSON" in lines[0]
    assert lines[1].startswith("invalid") and "(leaderboard)" in lines[1]


# --- Ctrl-C and SIGKILL mid-run: no record, no partial file ---------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)],
                         ids=["ctrl-c", "sigkill"])
def test_signal_mid_run_leaves_no_record(tmp_path, sig, code):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop(eval_data.ENV_DATA_ROOT, None)
    proc = subprocess.Popen([sys.executable, "-m", "zsqbench.frontends.cli", *RUN, "--method", "noise",
                             "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                             "--set", "train.warmup_steps=1000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            # a shell's background job (`pytest &`) inherits SIGINT ignored: give the run the default
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    cache = tmp_path / "cache" / "eval"
    deadline = time.monotonic() + 120
    while not (cache.exists() and any(cache.iterdir())):  # the FP pass is done: it is calibrating now
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, (proc.returncode, stderr)
    assert "Traceback" not in stderr
    if sig == signal.SIGINT:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert lines == ["interrupted (no record written)"], stderr
    assert not out.exists() or not any(out.iterdir())


def test_compare_shows_user_labels_as_written(record, tmp_path):
    """rich markup is escaped: an ablation's label keeps its brackets (it read as plain "gdfq" before)."""
    ablation = _copy(record, tmp_path / "ablation" / "r.json", off_protocol=["overrides: train.steps=200"])
    result = invoke(["compare", record, ablation.parent], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output  # the one row of each side: the method's A and B (#31)
    assert "fp → fp [train.steps=200]" in result.stdout
    result = invoke(["compare", "--baseline", "fp", record, ablation.parent, "--wide"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "fp [train.steps=200]" in result.stdout
