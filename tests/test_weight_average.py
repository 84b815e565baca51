"""train.average_from: the scored student is the average of its weights over the last part of the run."""
from __future__ import annotations

import json

import pytest
import torch

from zsqbench.spine.loop import WeightAverage


def test_weight_average_by_hand():
    p = torch.nn.Parameter(torch.tensor([0.0, 10.0]))
    avg = WeightAverage([p], average_from=0.5, steps=4)  # averages steps 2 and 3
    values = [[1.0, 1.0], [2.0, 2.0], [3.0, 5.0], [5.0, 9.0]]
    for step, v in enumerate(values):
        with torch.no_grad():
            p.copy_(torch.tensor(v))
        avg.update(step)
    assert avg.count == 2 and avg.marker() == {"averaged_steps": 2}
    with avg.swapped_in():
        assert p.tolist() == [4.0, 7.0]
    assert p.tolist() == [5.0, 9.0]  # restored after a mid-run evaluation
    avg.finish()
    assert p.tolist() == [4.0, 7.0]


def test_weight_average_off_is_a_no_op():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    avg = WeightAverage([p], average_from=None, steps=10)
    for step in range(10):
        avg.update(step)
    with avg.swapped_in():
        assert p.item() == 1.0
    avg.finish()
    assert p.item() == 1.0 and avg.marker() == {}


def test_bad_average_from_is_one_line(cli, tmp_path):
    proc = cli("run", "--method", "noise", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
               "--set", "train.average_from=1.5", "--record-file", tmp_path / "r.json")
    assert proc.returncode == 2 and "train.average_from" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()


def test_run_scores_the_averaged_student(cli, tmp_path):
    out = tmp_path / "r.json"
    proc = cli("run", "--method", "gdfq", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
               "--set", "train.average_from=0.5", "--record-file", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(out.read_text())
    steps = rec["config"]["train"]["steps"]
    last = rec["eval_history"][-1]
    assert last["averaged_steps"] == steps - round(0.5 * steps) and rec["final_top1"] == pytest.approx(last["top1"])
    assert rec["config"]["train"]["average_from"] == 0.5
