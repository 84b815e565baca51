"""End to end through the one training loop, on the smoke protocol with the embedded ResNet-20 teacher."""
from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn

from zsqbench.quantizer.components import MinMaxEMAQuantizer
from zsqbench.quantizer.fakequant import ActQuantizer, QuantConv2d, QuantLinear
from zsqbench.record.io import validation_errors
from zsqbench.spine.loop import RunSpec, run


# One intra-op thread for the runs: on a loaded 2-core machine (teachers training beside the tests) two threads
# made a smoke run 8x slower (65 s instead of 8 s) through oversubscription; on an idle one it costs little.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def smoke(out, method="gdfq", **kw) -> dict:
    """Run one job on the smoke protocol; return its record after checking the file is the record."""
    kw = {"wbits": 4, "abits": 4, **kw}
    with one_thread():
        rec, path = run(RunSpec(method=method, model="resnet20", protocol="smoke", out=str(out), quiet=True, **kw))
    assert path.parent == out and path.is_file()
    assert json.loads(path.read_text()) == json.loads(json.dumps(rec))
    assert validation_errors(rec) == []
    return rec


@pytest.fixture(scope="module")
def gdfq_seed0(tmp_path_factory):
    return smoke(tmp_path_factory.mktemp("gdfq0"))


def assert_on_protocol(rec: dict, method: str) -> None:
    assert rec["status"] == "ok" and rec["diverged"] is None
    assert rec["method"]["name"] == method
    assert rec["protocol"]["name"] == "smoke"
    assert rec["off_protocol"] == []
    assert rec["model"] == "resnet20" and rec["dataset"] == "fmnist"
    assert rec["wbits"] == 4 and rec["abits"] == 4
    assert rec["teacher"]["source"] == "embedded"
    assert rec["eval_samples"] == 1000
    assert 0 <= rec["final_top1"] <= 100
    assert rec["eval_history"][-1]["top1"] == rec["final_top1"]


def test_gdfq(gdfq_seed0):
    rec = gdfq_seed0
    assert_on_protocol(rec, "gdfq")
    assert rec["method"]["synthesizer"]["name"] == "gdfq"
    assert rec["method"]["synthesizer"]["config"]["width"] == 32  # gdfq.json's smoke setting
    assert rec["timing"]["steps"] == rec["config"]["train"]["steps"] == 6
    assert [h["step"] for h in rec["eval_history"]] == [3, 6]  # eval.every = 3, then the final evaluation
    assert {"loss", "ce", "kl", "loss_g", "g_ce", "g_bns"} <= set(rec["train_metrics"])


def test_noise(tmp_path):
    rec = smoke(tmp_path, "noise")
    assert_on_protocol(rec, "noise")
    assert rec["timing"]["steps"] == 0 and rec["config"]["train"]["steps"] == 0
    assert rec["train_metrics"] == {}
    assert [h["step"] for h in rec["eval_history"]] == [0]


def test_fp(tmp_path):
    rec = smoke(tmp_path, "fp")
    assert_on_protocol(rec, "fp")
    assert rec["method"]["quantizer"]["name"] == "none"
    assert rec["final_top1"] == rec["fp_top1"]
    assert rec["timing"]["steps"] == 0


def test_same_seed_same_result_other_seed_differs(gdfq_seed0, tmp_path):
    again = smoke(tmp_path / "again")
    for key in ("final_top1", "eval_history", "train_metrics", "config_hash", "fp_top1"):
        assert again[key] == gdfq_seed0[key], key
    other = smoke(tmp_path / "other", seed=1)
    assert other["seed"] == 1
    assert other["train_metrics"] != gdfq_seed0["train_metrics"]
    assert other["config_hash"] != gdfq_seed0["config_hash"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    """gdfq with --set train.steps=4 and --synthesizer noise: one off-protocol run."""
    return smoke(tmp_path_factory.mktemp("ablation"), overrides=["train.steps=4"], synthesizer="noise")


def test_set_override_is_off_protocol(ablation):
    rec = ablation
    assert rec["status"] == "ok"
    assert "overrides: train.steps=4" in rec["off_protocol"]
    assert rec["config"]["train"]["steps"] == 4
    assert rec["timing"]["steps"] == 4


def test_synthesizer_swap_is_off_protocol(ablation):
    rec = ablation
    assert "synthesizer noise instead of gdfq" in rec["off_protocol"]
    assert len(rec["off_protocol"]) == 2
    assert rec["method"]["name"] == "gdfq"
    assert rec["method"]["synthesizer"]["name"] == "noise"
    assert rec["method"]["synthesizer"]["config"] == {"mean": 0.0, "std": 1.0}  # noise's own defaults
    assert rec["method"]["distiller"]["name"] == "kd"
    assert "loss_g" not in rec["train_metrics"]


def test_divergence_is_recorded(tmp_path):
    rec = smoke(tmp_path, overrides=["train.lr=1e30"])
    assert rec["status"] == "diverged"
    assert rec["diverged"]["phase"] == "distill"
    assert isinstance(rec["diverged"]["step"], int) and 0 <= rec["diverged"]["step"] < 6
    assert rec["final_top1"] is None
    assert rec["timing"]["steps"] == rec["diverged"]["step"]  # the steps that finished
    assert any(s.startswith("overrides: train.lr=1e30") for s in rec["off_protocol"])
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_divergence_cli_exit_3_with_wbits_abits(cli, tmp_path):
    out = tmp_path / "res"
    proc = cli("run", "--method", "gdfq", "--model", "resnet20", "--protocol", "smoke", "--wbits", "3",
               "--abits", "5", "--set", "train.lr=1e30", "--out", out, "-q",
               env=ONE_THREAD)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "DIVERGED" in proc.stdout
    files = list(out.glob("*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    assert validation_errors(rec) == []
    assert rec["status"] == "diverged" and rec["diverged"]["phase"] == "distill" and rec["final_top1"] is None
    assert (rec["wbits"], rec["abits"]) == (3, 5)
    assert "_w3a5_" in files[0].name
    proc = cli("validate", files[0])
    assert proc.returncode == 0, proc.stdout


def test_wbits_abits_reach_the_student(tmp_path, monkeypatch):
    students = []
    quantize = MinMaxEMAQuantizer.quantize

    def spy(self, model, wbits, abits, **kw):
        net = quantize(self, model, wbits, abits, **kw)
        students.append(net)
        return net

    monkeypatch.setattr(MinMaxEMAQuantizer, "quantize", spy)
    rec = smoke(tmp_path, wbits=3, abits=5)
    assert (rec["wbits"], rec["abits"]) == (3, 5)
    assert rec["status"] == "ok"
    assert rec["off_protocol"] == ["W3A5 is not in protocol smoke for resnet20@fmnist"]
    assert rec["method"]["quantizer"]["name"] == "minmax-ema"

    assert len(students) == 1
    student = students[0]
    modules = list(student.modules())
    convs = [m for m in modules if isinstance(m, (QuantConv2d, QuantLinear))]
    acts = [m for m in modules if isinstance(m, ActQuantizer)]
    assert convs and acts
    assert not [m for m in modules if type(m) in (nn.Conv2d, nn.Linear)], "a layer was left unquantized"
    assert {m.wbits for m in convs} == {3}
    assert {q.bits for q in acts} == {5}
    assert all(q.calibrated and not q.calibrating for q in acts)
