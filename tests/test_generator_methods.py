"""AdaDFQ/AdaSG, BAG and the shared channel-attention KD: losses against hand-computed values, the quantized
generator, and smoke runs through the real CLI."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zsqbench.distiller.attention import ChannelAttentionKD, attention_loss, channel_attention
from zsqbench.quantizer.components import MinMaxEMAQuantizer
from zsqbench.spine.interfaces import Batch, Method, RunContext
from zsqbench.teacher.taps import FeatureTap
from zsqbench.quantizer.fakequant import (ActQuantizer, QuantConv2d, QuantizedInput, QuantLinear, act_quantizers,
                                          quantize_weight)
from zsqbench.frontends.train_teacher import neutralize_dead_bn_channels
from zsqbench.spine.registry import get_registry
from zsqbench.spine.registry import dataset_info
from zsqbench.synthesizer.bns import BNStatHooks
from zsqbench.synthesizer.generator import Conditioning
from zsqbench.teacher.zoo import load_teacher
from zsqbench_plugins.adadfq import AdaDFQSynthesizer, LogitEntropyDistiller, entropy, margin_loss
from zsqbench_plugins.bag import BitwidthAwareSynthesizer

LN2, LN3 = math.log(2), math.log(3)


def _entropy_by_hand(probs):
    return -sum(p * math.log(p) for p in probs)


# rows of t - q whose softmaxes are (1/3,1/3,1/3), (1/2,1/4,1/4), (3/4,1/8,1/8)
DIFF = torch.tensor([[0.0, 0.0, 0.0], [LN2, 0.0, 0.0], [math.log(6), 0.0, 0.0]], dtype=torch.float64)


def test_entropy_by_hand():
    h = entropy(DIFF)
    for got, probs in zip(h.tolist(), ([1 / 3] * 3, [.5, .25, .25], [.75, .125, .125])):
        assert got == pytest.approx(_entropy_by_hand(probs), rel=1e-12)
    # with temperature 2: softmax([ln 2, 0, 0]/2) = (sqrt2, 1, 1)/(sqrt2 + 2)
    s = math.sqrt(2)
    assert entropy(DIFF[1:2], 2.0).item() == pytest.approx(_entropy_by_hand([s / (s + 2), 1 / (s + 2), 1 / (s + 2)]))


def test_margin_loss_by_hand_any_batch_size():
    t = DIFF.clone()
    q = torch.zeros_like(t)
    h = [LN3, _entropy_by_hand([.5, .25, .25]), _entropy_by_hand([.75, .125, .125])]
    lo = min(h)
    hn = [(v - lo) / (LN3 - lo) for v in h]  # 1, 0.8378, 0
    expected = sum(max(0, 0.1 - v) for v in hn) / 3 + sum(max(0, v - 0.8) for v in hn) / 3
    assert margin_loss(t, q, 0.1, 0.8).item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.1 / 3 + (0.2 + (hn[1] - 0.8)) / 3)
    # the official code only runs at batch 16; here any batch size works
    for n in (1, 5, 16, 33):
        assert torch.isfinite(margin_loss(torch.randn(n, 10), torch.randn(n, 10), 0.3, 0.8))


def test_adadfq_generator_loss_composition():
    """L_G = margin + beta*(alpha_ds*CE(t-q) + alpha_as*CE(t+q)) + bns_weight*BNS, with a real BNS hook."""
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2)).eval()
    synth = AdaDFQSynthesizer(alpha_ds=0.2, alpha_as=0.1, beta=1.5, bns_weight=0.7, lambda_l=0.1, lambda_u=0.8)
    synth.bns = BNStatHooks(net)
    with synth.bns.recording():
        net(torch.randn(4, 1, 3, 3))
    bns = synth.bns.loss().item()
    t = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    q = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 2])

    def ce(logits, labels):  # by hand
        return sum(-(row[c] - math.log(sum(math.exp(v) for v in row)))
                   for row, c in zip(logits.tolist(), labels.tolist())) / len(labels)
    expected = (margin_loss(t, q, 0.1, 0.8).item() + 1.5 * (0.2 * ce(t - q, y) + 0.1 * ce(t + q, y)) + 0.7 * bns)
    loss, parts = synth.generator_loss(None, None, Conditioning(y), t, q)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["g_ds"] == pytest.approx(ce(t - q, y), rel=1e-9)
    assert parts["g_as"] == pytest.approx(ce(t + q, y), rel=1e-9)


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.logits[: x.shape[0]] * 1


def test_logit_entropy_student_loss_by_hand():
    temp = 4.0
    t = torch.tensor([[temp * LN2, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    ctx = SimpleNamespace(student=_Fixed(torch.zeros(2, 3, dtype=torch.float64)), teacher=_Fixed(t))
    loss, parts = LogitEntropyDistiller(temperature=temp).loss(
        ctx, Batch(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])))
    h = (_entropy_by_hand([.5, .25, .25]) + LN3) / 2
    assert loss.item() == pytest.approx(-temp ** 2 * h, rel=1e-12)
    assert parts["entropy"] == pytest.approx(h)
    loss.backward()  # trains the student only
    assert ctx.student.logits.grad is not None and ctx.teacher.logits.grad is None


def test_channel_attention_and_loss_by_hand():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 2.0]]]])  # (1, 2, 2, 2)
    assert channel_attention(f).tolist() == [[7.5, 1.0]]
    n = math.sqrt(7.5 ** 2 + 1)
    assert channel_attention(f, normalize=True)[0].tolist() == pytest.approx([7.5 / n, 1 / n])
    g = torch.zeros_like(f)
    g[0, 0] = 1.0  # attention (1, 0)
    # BAG form: (1/L) sum_l ||a_t - a_s||^2 over channels, mean over samples
    sq = (7.5 - 1) ** 2 + 1 ** 2
    assert attention_loss([f], [g]).item() == pytest.approx(sq)
    assert attention_loss([f, g], [g, g]).item() == pytest.approx(sq / 2)
    # HAST form: sum over layers of the mean over samples x channels
    assert attention_loss([f, f], [g, g], channel_reduction="mean", layer_reduction="sum").item() == \
        pytest.approx(2 * sq / 2)
    # normalised
    expected = (7.5 / n - 1) ** 2 + (1 / n) ** 2
    assert attention_loss([f], [g], normalize=True).item() == pytest.approx(expected)
    # gradient reaches the student features only
    fs = f.clone().requires_grad_(True)
    gt = g.clone().requires_grad_(True)
    attention_loss([fs], [gt]).backward()
    assert fs.grad is not None and gt.grad is None


@pytest.fixture(scope="module")
def r20_ctx():
    reg = get_registry()
    spec = reg.get("models", "resnet20@fmnist")
    quantizer = MinMaxEMAQuantizer()

    def make(wbits=3, abits=3, warmup=2):
        teacher, _ = load_teacher(spec)  # a fresh one: components leave hooks on the teacher they were given
        torch.manual_seed(0)
        student = quantizer.quantize(teacher, wbits, abits).eval()
        return RunContext(teacher=teacher, student=student, model=spec, dataset=dataset_info("fmnist"), wbits=wbits,
                          abits=abits, quantizer=quantizer, device=torch.device("cpu"), seed=0, total_steps=4,
                          warmup_steps=warmup)
    return make


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_bag_generator_is_quantized(r20_ctx, bits):
    ctx = r20_ctx(bits, bits)
    synth = BitwidthAwareSynthesizer(width=32)
    synth.prepare(ctx)
    layers = [m for m in synth.generator.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert len(layers) == 4  # the linear and the three convs
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in synth.generator.modules())
    for layer in layers:
        w = quantize_weight(layer.weight, layer.wbits).detach().reshape(layer.weight.shape[0], -1)
        assert layer.wbits == bits
        assert max(len(torch.unique(row)) for row in w) <= 2 ** bits
    wrappers = [m for m in synth.generator.modules() if isinstance(m, QuantizedInput)]
    assert len(wrappers) == 4 and all(isinstance(w[0], ActQuantizer) and w[0].bits == bits for w in wrappers)
    qs = act_quantizers(synth.generator)
    assert len(qs) == 4 and not any(q.calibrated for q in qs)
    batch = synth.next_batch(ctx, 8)
    assert all(q.calibrated for q in qs)  # calibrated on the first generator step
    # layer inputs really sit on a 2^k-level grid: capture the conv2 input after quantization (the quantizer's
    # output: with the phase_conv speed switch the conv module's own forward is not called)
    seen = {}
    h = wrappers[2][0].register_forward_hook(lambda m, i, o: seen.update(x=o.detach()))
    synth.next_batch(ctx, 8)
    h.remove()
    assert len(torch.unique(seen["x"])) <= 2 ** bits
    assert batch.images.shape == (8, 1, 32, 32) and batch.teacher_logits is not None


def test_bag_generator_ranges_track_or_freeze(r20_ctx):
    ctx = r20_ctx(warmup=2)
    track, warm = BitwidthAwareSynthesizer(width=32), BitwidthAwareSynthesizer(width=32, g_act_ranges="warmup")
    for s in (track, warm):
        s.prepare(ctx)
        for _ in range(4):
            s.next_batch(ctx, 4)
    assert {int(q.steps) for q in act_quantizers(track.generator)} == {4}
    assert {int(q.steps) for q in act_quantizers(warm.generator)} == {2}


def test_adadfq_feedback_leaves_student_ranges_and_grads_alone(r20_ctx):
    ctx = r20_ctx()
    synth = AdaDFQSynthesizer(width=32)
    synth.prepare(ctx)
    ctx.quantizer.set_calibrating(ctx.student, True)
    synth.next_batch(ctx, 4)
    assert not any(q.calibrated for q in act_quantizers(ctx.student))  # the feedback pass did not calibrate
    assert all(p.grad is None for p in ctx.student.parameters())
    assert all(p.requires_grad for p in ctx.student.parameters())
    assert any(p.grad is not None for p in synth.generator.parameters())


def test_kd_ca_reuses_the_generator_teacher_pass(r20_ctx):
    from zsqbench_plugins.gdfq import GDFQSynthesizer
    ctx = r20_ctx()
    synth, distiller = GDFQSynthesizer(width=32), ChannelAttentionKD()
    synth.prepare(ctx)
    distiller.setup(ctx)
    calls = []
    h = ctx.teacher.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        ctx.quantizer.set_calibrating(ctx.student, True)
        batch = synth.next_batch(ctx, 4)
        loss, parts = distiller.loss(ctx, batch)
        assert len(calls) == 1  # the generator step's pass only
        # a batch the teacher did not see: the distiller runs it itself, and gets the same features as a fresh pass
        other = Batch(batch.images + 0.5, batch.labels, teacher_logits=batch.teacher_logits)
        distiller.loss(ctx, other)
        assert len(calls) == 2
    finally:
        h.remove()
    assert len(distiller.teacher_tap.names) == 9 and distiller.teacher_tap.names[0] == "features.stage1.unit1.body"
    assert parts["ca"] > 0 and torch.isfinite(loss)


def test_feature_tap_needs_blocks():
    with pytest.raises(ValueError):
        FeatureTap(nn.Linear(2, 2), [])


def test_settings_merge_per_dataset():
    m = Method("x", "s", "d", settings={"paper": {"train": {"lr": 1e-4, "steps": 10},
                                                  "datasets": {"imagenet": {"train": {"lr": 1e-5}}}}})
    assert m.settings_for("paper") == {"train": {"lr": 1e-4, "steps": 10}}
    assert m.settings_for("paper", "cifar100") == {"train": {"lr": 1e-4, "steps": 10}}
    assert m.settings_for("paper", "imagenet") == {"train": {"lr": 1e-5, "steps": 10}}
    from zsqbench.spine.plan import RunSpec, resolve

    def settings(method, model, protocol):
        return resolve(RunSpec(method=method, model=model, wbits=4, abits=4, protocol=protocol)).components
    assert settings("adadfq", "resnet18@imagenet", "paper")["distiller"].settings.temperature == 5.0
    assert settings("adadfq", "resnet20@cifar100", "paper")["distiller"].settings.temperature == 20.0
    sg = settings("adasg", "resnet20@fmnist", "cpu")["synthesizer"].settings
    assert (sg.lambda_l, sg.lambda_u, sg.alpha_ds, sg.alpha_as, sg.bns_weight) == (0.3, 0.8, .1, .1, 1)


def test_dead_bn_channels_neutralized():
    bn = nn.BatchNorm2d(3).eval()
    bn.running_var.copy_(torch.tensor([1.0, 5e-45, 2.0]))
    bn.running_mean.copy_(torch.tensor([0.0, 0.7, 0.0]))
    bn.bias.data.copy_(torch.tensor([0.1, 0.2, 0.3]))
    at_mean = torch.zeros(1, 3, 1, 1)
    at_mean[0, 1] = 0.7
    before = bn(at_mean).detach()
    assert neutralize_dead_bn_channels(bn) == 1
    assert bn.weight.tolist() == [1.0, 0.0, 1.0]
    assert torch.allclose(bn(at_mean), before, atol=1e-5)  # unchanged where the channel's input sat in training
    off = at_mean.clone()
    off[0, 1] = 5.0
    assert bn(off)[0, 1].item() == pytest.approx(0.2)  # no 1/sqrt(eps) amplification any more
    # the embedded teachers carry the step
    for key in ("resnet20@fmnist", "mobilenetv1@fmnist"):
        net, _ = load_teacher(get_registry().get("models", key))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert not ((m.running_var < 1e-6) & (m.weight != 0)).any()


@pytest.mark.parametrize("method", ["adadfq", "adasg", "bag"])
def test_smoke_run_writes_valid_record(cli, tmp_path, method):
    res = cli("run", "--method", method, "--model", "resnet20", "--bits", "3", "--wbits", "4", "--protocol",
              "smoke", "--out", tmp_path, "-q")
    assert res.returncode == 0, res.stderr
    (path,) = tmp_path.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["method"]["name"] == method
    assert rec["wbits"] == 4 and rec["abits"] == 3
    comp = rec["method"]
    if method == "bag":
        assert comp["synthesizer"]["name"] == "bag" and comp["distiller"]["name"] == "kd-ca"
        assert comp["distiller"]["config"]["ca_weight"] == 30.0 and "ca" in rec["train_metrics"]
    else:
        assert comp["synthesizer"]["name"] == "adadfq" and comp["distiller"]["name"] == "logit-entropy"
        assert {"g_margin", "g_ds", "g_as", "g_bns", "entropy"} <= set(rec["train_metrics"])
    if method == "adasg":
        assert comp["synthesizer"]["config"]["lambda_l"] == 0.3
    assert cli("validate", path).returncode == 0


def test_mixed_run_gdfq_with_channel_attention(cli, tmp_path):
    res = cli("run", "--method", "gdfq", "--distiller", "kd-ca", "--model", "mobilenetv1", "--bits", "4",
              "--protocol", "smoke", "--out", tmp_path, "-q")
    assert res.returncode == 0, res.stderr
    rec = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert rec["status"] == "ok"
    assert rec["method"]["distiller"]["name"] == "kd-ca" and rec["method"]["synthesizer"]["name"] == "gdfq"
    assert rec["off_protocol"] == ["distiller kd-ca instead of kd"]
    assert rec["train_metrics"]["ca"] > 0


def test_bag_bad_range_setting_is_one_line(cli, tmp_path):
    res = cli("run", "--method", "bag", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
              "--set", "synthesizer.g_act_ranges=sometimes", "--out", tmp_path, "-q")
    assert res.returncode == 2
    assert "g_act_ranges" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.glob("*.json")) == []
