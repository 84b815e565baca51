"""Bad input gives one clear `error:` line and a non-zero exit, never a traceback, and writes no record;
`zsqbench validate` accepts good records and names the field of a bad one."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zsqbench.evaluation import data as eval_data
from zsqbench.spine.errors import UserError
from zsqbench.spine.loop import RunSpec, run
from zsqbench.teacher import zoo

RUN = ["run", "--model", "resnet20", "--protocol", "smoke", "-q"]


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    (d / "garbage.pt").write_bytes(b"this is not a torch file\n" * 100)
    (d / "empty.pt").write_bytes(b"")  # torch.load raises EOFError() with an empty message
    torch.save([1, 2, 3], d / "list.pt")
    torch.save(zoo.mobilenetv1_32(10, 1).state_dict(), d / "mobilenet.pt")  # valid, but not a resnet20
    return {"{missing}": str(d / "does-not-exist.pt"), "{garbage}": str(d / "garbage.pt"),
            "{empty}": str(d / "empty.pt"), "{list}": str(d / "list.pt"),
            "{wrongarch}": str(d / "mobilenet.pt")}


BAD_INPUT = {
    "unknown-method": (["--method", "nope", "--bits", "4"],
                       ["unknown method 'nope'", "valid:", "gdfq", "fp", "noise"]),
    "unknown-model": (["--method", "gdfq", "--bits", "4", "--model", "resnet99"],
                      ["unknown model 'resnet99'", "resnet20"]),
    "unknown-protocol": (["--method", "gdfq", "--bits", "4", "--protocol", "nope"],
                         ["unknown protocol 'nope'", "smoke"]),
    "unknown-synthesizer": (["--method", "gdfq", "--bits", "4", "--synthesizer", "nope"],
                            ["unknown synthesizer 'nope'", "gdfq", "noise"]),
    "set-without-equals": (["--method", "gdfq", "--bits", "4", "--set", "foo"],
                           ["--set expects KEY=VALUE", "'foo'"]),
    "set-unknown-key": (["--method", "gdfq", "--bits", "4", "--set", "train.nonexistent=1"],
                        ["'train.nonexistent' is not a known setting", "steps"]),
    "missing-bits": (["--method", "gdfq"], ["--bits"]),
    "weights-missing": (["--method", "gdfq", "--bits", "4", "--weights", "{missing}"],
                        ["weights file not found", "does-not-exist.pt"]),
    "weights-garbage": (["--method", "gdfq", "--bits", "4", "--weights", "{garbage}"],
                        ["cannot read weights", "garbage.pt"]),
    "weights-empty-file": (["--method", "gdfq", "--bits", "4", "--weights", "{empty}"],
                           ["cannot read weights", "empty.pt", "EOFError"]),
    "weights-not-a-state-dict": (["--method", "gdfq", "--bits", "4", "--weights", "{list}"],
                                 ["holds a list, not a state_dict"]),
    "weights-wrong-arch": (["--method", "gdfq", "--bits", "4", "--weights", "{wrongarch}"],
                           ["do not fit", "resnet20@fmnist"]),
}


@pytest.mark.parametrize("args, expected", BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_one_line_error(cli, tmp_path, weight_files, args, expected):
    out = tmp_path / "res"
    args = [weight_files.get(a, a) for a in args]
    proc = cli(*RUN, *args, "--out", out)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_corrupt_embedded_weights_sha256_mismatch(tmp_path, monkeypatch):
    spec = next(s for s in zoo.builtin_models() if s.key == "resnet20@fmnist")
    wfile = tmp_path / "resnet20_fmnist.pt"
    torch.save(spec.build().state_dict(), wfile)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({spec.embedded_weights: {"file": wfile.name, "sha256": zoo.sha256_file(wfile),
                                                            "fp_top1": 50.0}}))
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(zoo, "MANIFEST", manifest)

    net, info = zoo.load_teacher(spec)  # intact: loads, and says where from
    assert info["source"] == "embedded" and info["sha256"] == zoo.sha256_file(wfile)

    data = bytearray(wfile.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wfile.write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256 mismatch") as e:
        zoo.load_teacher(spec)
    assert str(wfile) in str(e.value)

    wfile.unlink()
    with pytest.raises(UserError, match="embedded weights file missing"):
        zoo.load_teacher(spec)
    manifest.write_text("{}")
    with pytest.raises(UserError, match="no embedded weights"):
        zoo.load_teacher(spec)


def test_missing_dataset_says_how_to_get_it(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "res"
    monkeypatch.setattr(eval_data, "FMNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.delenv(eval_data.ENV_DATA_ROOT, raising=False)
    with pytest.raises(UserError, match="apt-get") as e:
        run(RunSpec(method="fp", model="resnet20", wbits=4, abits=4, protocol="smoke", data_root=str(empty),
                    out=str(out), quiet=True))
    assert "fmnist data not found" in str(e.value) and str(empty) in str(e.value)
    assert not out.exists() or not any(out.iterdir())


# --- validate ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_engine.ONE_THREAD
    try:
        rec, path = run(RunSpec(method="fp", model="resnet20", wbits=4, abits=4, protocol="smoke", out=str(out),
                                quiet=True))
    finally:
        torch.set_num_threads(before)
    return path


def test_validate_valid_and_invalid_records(cli, fp_record, tmp_path):
    proc = cli("validate", fp_record)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout and "invalid" not in proc.stdout

    rec = json.loads(fp_record.read_text())
    rec["final_top1"] = 150
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rec))
    proc = cli("validate", fp_record, bad)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    bad_lines = [line for line in proc.stdout.splitlines() if line.startswith("invalid")]
    assert len(bad_lines) == 1 and "bad.json" in bad_lines[0] and "final_top1" in bad_lines[0], proc.stdout
    assert "150" in bad_lines[0]


def test_validate_not_json(cli, tmp_path):
    """A file that is not JSON is one "invalid" line among the others (validate goes on), exit 1."""
    f = tmp_path / "notjson.json"
    f.write_text("{ nope")
    proc = cli("validate", f)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("invalid ") and "is not JSON" in lines[0], proc.stdout


def test_validate_detects_kinds_and_searches_directories(cli, fp_record, tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "sweep" / "job1").mkdir(parents=True)
    (tmp_path / "sweep" / "job1" / "record.json").write_text(fp_record.read_text())
    (tmp_path / "sweep" / "job1" / "job.json").write_text("{}")  # not a kind validate knows: skipped in a dir
    proc = cli("validate", tmp_path / "sweep", root / "leaderboard" / "cpu.json", root / "baselines" / "published.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and "(run record)" in lines[0] and "(leaderboard)" in lines[1]
    assert "(published baselines)" in lines[2]


def test_dev_split_run_is_off_protocol_and_says_so(cli, tmp_path):
    proc = cli(*RUN, "--method", "noise", "--wbits", "4", "--abits", "4", "--set", "eval.split=dev",
               "--set", "eval.limit=200", "--out", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "200 dev images" in proc.stdout
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert rec["config"]["eval"]["split"] == "dev" and rec["eval_samples"] == 200
    assert any("eval.split=dev" in o for o in rec["off_protocol"])  # never a leaderboard row
    bad = cli(*RUN, "--method", "noise", "--wbits", "4", "--abits", "4", "--set", "eval.split=val",
              "--out", tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == \
        ["error: bad setting eval.split=\"val\" (from --set): expected 'test' | 'dev'"]
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
    unknown = cli(*RUN, "--method", "noise", "--wbits", "4", "--abits", "4", "--set", "eval.splt=dev")
    assert unknown.returncode == 2 and "not a known setting" in unknown.stderr
