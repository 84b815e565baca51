"""zsqbench.testing, the helpers a plugin's own test suite uses, exercised on built-in methods: real teachers, real
runs, real CLI processes, no mocks."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from zsqbench.spine.errors import UserError
from zsqbench.testing import (assert_one_line_error, check_record, method_components, run_cli, run_method,
                              smoke_context)


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    """One on-protocol smoke run of the `noise` reference (no training steps: seconds) and its record file."""
    out = tmp_path_factory.mktemp("noise")
    record = run_method("noise", out_dir=out)
    (path,) = out.glob("*.json")
    return record, path


def test_smoke_context_is_what_a_run_starts_from():
    ctx = smoke_context()
    assert ctx.model.key == "resnet20@fmnist" and ctx.num_classes == 10 and ctx.image_shape == (1, 32, 32)
    assert ctx.quantizer.name == "minmax-ema" and (ctx.wbits, ctx.abits) == (4, 4)
    assert (ctx.total_steps, ctx.warmup_steps) == (6, 3)  # the smoke protocol's budget
    assert ctx.teacher_hash and len(ctx.teacher_hash) == 64 and ctx.device == torch.device("cpu")
    assert not ctx.teacher.training and not any(p.requires_grad for p in ctx.teacher.parameters())
    assert ctx.student is not ctx.teacher and not ctx.student.training
    assert any(p.requires_grad for p in ctx.student.parameters())
    assert len(ctx.quantizer.uncalibrated(ctx.student)) > 0  # nothing calibrated yet

    # a component can now be driven by hand: noise images, activation calibration, the core kd loss
    parts = method_components("noise")
    synth, distiller = parts["synthesizer"], parts["distiller"]
    synth.prepare(ctx)
    distiller.setup(ctx)
    batch = synth.next_batch(ctx, 8)
    assert batch.images.shape == (8, 1, 32, 32) and batch.labels.shape == (8,)
    ctx.quantizer.set_calibrating(ctx.student, True)
    with torch.no_grad():
        ctx.student(batch.images)
    ctx.quantizer.set_calibrating(ctx.student, False)
    assert ctx.quantizer.uncalibrated(ctx.student) == []
    loss, terms = distiller.loss(ctx, batch)
    assert torch.isfinite(loss) and loss.requires_grad and set(terms) == {"ce", "kl"}


def test_smoke_context_follows_the_method_and_refuses_bad_names():
    fp = smoke_context("fp")  # the FP reference: quantizer "none", student = an unquantized copy
    assert fp.quantizer.name == "none"
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(fp.student(x), fp.teacher(x))
    ctx = smoke_context("gdfq", wbits=3, abits=2, seed=5, overrides={"train.steps": 2})
    assert (ctx.wbits, ctx.abits, ctx.seed, ctx.total_steps, ctx.warmup_steps) == (3, 2, 5, 2, 3)
    assert smoke_context(overrides={"train.warmup_steps": 1}).warmup_steps == 1
    with pytest.raises(UserError, match="unknown method 'nope'"):
        smoke_context("nope")
    with pytest.raises(UserError, match="unknown model"):
        smoke_context(model="resnet99")
    with pytest.raises(UserError, match="only train"):
        smoke_context(overrides={"synthesizer.width": 8})


def test_method_components_resolve_the_methods_settings():
    parts = method_components("gdfq")
    assert [type(p).name for p in parts.values()] == ["gdfq", "kd", "minmax-ema"]
    assert parts["synthesizer"].config["width"] == 32  # plugins/gdfq.json's smoke entry
    assert method_components("gdfq", protocol="cpu")["synthesizer"].config["milestones"] == []
    assert method_components("gdfq", overrides={"distiller.temperature": 4})["distiller"].config["temperature"] == 4
    with pytest.raises(UserError, match=r"bad setting synthesizer\.width=0 \(from --set\)"):
        method_components("gdfq", overrides={"synthesizer.width": 0})


def test_run_method_writes_and_returns_a_valid_record(noise_run, tmp_path):
    record, path = noise_run
    assert check_record(record) is not None
    assert check_record(path) == record == json.loads(path.read_text())
    assert path.name.startswith("noise_resnet20-fmnist_w4a4_smoke_seed0_")
    assert (path.parent / "cache" / "eval").is_dir()  # its own cache, not the user's
    assert record["off_protocol"] == [] and record["protocol"]["name"] == "smoke"
    assert record["config"]["train"]["steps"] == 0 and torch.get_num_threads() == 1

    trained = run_method("gdfq", out_dir=tmp_path, bits=3, seed=1,
                         overrides={"train.steps": 2, "synthesizer.width": 8})
    check_record(trained)
    assert (trained["wbits"], trained["abits"], trained["seed"], trained["timing"]["steps"]) == (3, 3, 1, 2)
    assert trained["off_protocol"] == ["overrides: train.steps=2, synthesizer.width=8",
                                       "W3A3 is not in protocol smoke for resnet20@fmnist",
                                       "seed 1 is not in protocol smoke's seeds (0)"]
    assert {"loss", "ce", "kl", "loss_g", "g_ce", "g_bns"} <= set(trained["train_metrics"])
    with pytest.raises(UserError, match="bad setting train.steps=-1"):
        run_method("gdfq", out_dir=tmp_path / "bad", overrides={"train.steps": -1})
    assert not (tmp_path / "bad").exists()


def test_run_method_is_the_cli_run(tmp_path):
    """The same job in-process and through `zsqbench run` gives the same configuration and the same numbers."""
    args = {"train.steps": 2, "synthesizer.width": 8}
    inproc = run_method("gdfq", out_dir=tmp_path / "a", overrides=args)
    proc = run_cli("run", "--method", "gdfq", "--model", "resnet20@fmnist", "--bits", "4", "--protocol", "smoke",
                   "--device", "cpu", "--out", tmp_path / "b", "--cache-dir", tmp_path / "b" / "cache", "-q",
                   *[x for k, v in args.items() for x in ("--set", f"{k}={v}")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = (tmp_path / "b").glob("*.json")
    cli_record = check_record(path)
    for key in ("config_hash", "config", "final_top1", "fp_top1", "eval_history", "train_metrics", "off_protocol",
                "method"):
        assert inproc[key] == cli_record[key], key
    # the same distributions' code (the digests themselves may differ when a source file is edited in between)
    assert {d: c["files"] for d, c in inproc["code"].items()} == {d: c["files"] for d, c in cli_record["code"].items()}


def test_check_record_names_every_problem(noise_run, tmp_path):
    record, _ = noise_run
    bad = copy.deepcopy(record)
    bad.update(status="diverged", diverged={"phase": "distill", "step": 3, "what": "student loss"}, final_top1=None)
    with pytest.raises(AssertionError) as e:
        check_record(bad)
    msg = str(e.value)
    assert "noise resnet20@fmnist W4A4 seed 0" in msg
    assert "status is 'diverged'" in msg and "final_top1 is None, not a number in [0, 100]" in msg

    for key, value, expect in (("final_top1", 101.5, "final_top1 is 101.5"), ("fp_top1", "93", "fp_top1 is '93'"),
                               ("final_top1", float("nan"), "final_top1 is nan")):
        with pytest.raises(AssertionError, match=expect.replace(".", r"\.")):
            check_record({**record, key: value})
    with pytest.raises(AssertionError, match="schema: .*'seed' is a required property"):
        check_record({k: v for k, v in record.items() if k != "seed"})
    with pytest.raises(AssertionError, match="not the last evaluation's"):
        check_record({**record, "final_top1": record["final_top1"] / 2})
    with pytest.raises(AssertionError, match=r"2 training steps were taken, the configuration asks for 0"):
        check_record({**record, "timing": {**record["timing"], "steps": 2}})
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(AssertionError, match="cannot read run record .*junk.json: JSONDecodeError"):
        check_record(junk)


def test_assert_one_line_error(tmp_path):
    out = tmp_path / "out"
    line = assert_one_line_error("run", "--method", "nope", "--model", "resnet20", "--bits", "4", "--protocol",
                                 "smoke", "--out", out, contains=["unknown method 'nope'", "gdfq"])
    assert line.startswith("error: unknown method 'nope'; valid: ")
    with pytest.raises(AssertionError, match=r"`zsqbench list protocols` exited 0, expected 2"):
        assert_one_line_error("list", "protocols")
    with pytest.raises(AssertionError, match="'no such words' is not in the error line"):
        assert_one_line_error("list", "settings", contains="no such words")
