"""The example plugin's own tests, written with zsqbench.testing. Run them with the package installed:

    pip install -e . && python -m pytest tests
"""
import pytest
import torch

from zsqbench.api import Batch
from zsqbench.testing import assert_one_line_error, check_record, conformance_test, run_method, smoke_context
from zsqbench_example import BalancedSmoothSynthesizer


def test_conditioning_is_class_balanced_with_smoothed_targets():
    ctx = smoke_context()  # the embedded ResNet-20 Fashion-MNIST teacher: 10 classes
    synth = BalancedSmoothSynthesizer(smoothing=0.2)
    cond = synth.sample_conditioning(ctx, 20)
    assert torch.bincount(cond.labels, minlength=10).tolist() == [2] * 10
    assert torch.equal(cond.soft_labels.argmax(1), cond.labels)
    assert torch.allclose(cond.soft_labels.sum(1), torch.ones(20))
    assert cond.soft_labels.max().item() == pytest.approx(0.8 + 0.2 / 10)
    counts = torch.bincount(synth.sample_conditioning(ctx, 16).labels, minlength=10)
    assert counts.min() == 1 and counts.max() == 2  # 16 images: 6 classes twice, 4 once


def test_one_generator_step_hands_soft_targets_to_the_distiller():
    ctx = smoke_context("balanced-smooth")  # with the method's quantizer and smoke step counts
    synth = BalancedSmoothSynthesizer(width=16, latent_dim=16)
    synth.prepare(ctx)  # builds synth.generator, .optimizer, .scheduler, .bns
    before = [p.detach().clone() for p in synth.generator.parameters()]
    batch = synth.next_batch(ctx, 10)
    assert isinstance(batch, Batch) and batch.images.shape == (10, *ctx.image_shape)
    assert batch.soft_labels is not None and torch.equal(batch.soft_labels.argmax(1), batch.labels)
    assert set(batch.metrics) >= {"loss_g", "g_ce", "g_bns"}
    assert any(not torch.equal(a, b) for a, b in zip(before, synth.generator.parameters()))  # it took a step


def test_runs_end_to_end_under_smoke(tmp_path):
    record = check_record(run_method("balanced-smooth", out_dir=tmp_path))
    assert record["method"]["provider"].startswith("zsqbench-example ")
    assert record["method"]["synthesizer"]["config"]["labels"] == "balanced"
    assert record["method"]["synthesizer"]["config"]["width"] == 32  # from balanced_smooth.json's smoke entry
    assert record["off_protocol"] == []
    assert {"g_ce", "g_bns"} <= set(record["train_metrics"])


def test_a_bad_setting_is_one_line_and_writes_no_record(tmp_path):
    assert_one_line_error("run", "--method", "balanced-smooth", "--model", "resnet20", "--bits", "4",
                          "--protocol", "smoke", "--set", "synthesizer.smoothing=1.5", "--out", tmp_path,
                          contains=["synthesizer.smoothing=1.5", "< 1"])
    assert_one_line_error("run", "--method", "balanced-smooth", "--model", "resnet20", "--bits", "4",
                          "--protocol", "smoke", "--set", "synthesizer.labels=sorted", "--out", tmp_path,
                          contains=["'balanced' | 'uniform'"])


# zsqbench's conformance suite (zsqbench.testing.check_method): the checks every plugin must pass
test_conformance = conformance_test("balanced-smooth")
