"""Qimera: losses against hand-computed values, the mixing statistics, the superposed generator input, and a smoke
run through the real CLI."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from zsqbench.api import BNStatHooks, Batch, DatasetInfo, KDDistiller, RunContext, UserError
from zsqbench.spine.registry import get_registry
from zsqbench_plugins.qimera import MixedConditioning, QimeraSynthesizer

CPU = torch.device("cpu")


def _log_softmax(row):
    lse = math.log(sum(math.exp(v) for v in row))
    return [v - lse for v in row]


def _soft_ce(logits, targets):
    return sum(-sum(p * ls for p, ls in zip(t, _log_softmax(row))) for row, t in zip(logits, targets)) / len(logits)


LOGITS_T = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
SOFT = [[0.6, 0.4, 0.0], [0.0, 0.3, 0.7]]


def test_generator_loss_soft_ce_plus_bns_by_hand():
    """L_G = CE(teacher logits, soft mixture) + 0.1 * BNS (trainer.py L242-254), BNS from a real hook."""
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor([0.0, 1.0]))
    bn.running_var.copy_(torch.tensor([1.0, 2.0]))
    synth = QimeraSynthesizer()
    synth.bns = BNStatHooks(bn)
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]], [[[-1.0, 1.0]], [[4.0, 2.0]]]])  # (2, 2, 1, 2)
    with synth.bns.recording():
        bn(x)
    # channel 0: values 1, 3, -1, 1 -> mean 1, biased var (0 + 4 + 4 + 0)/4 = 2
    # channel 1: values 0, 2, 4, 2 -> mean 2, biased var (4 + 0 + 4 + 0)/4 = 2
    bns = ((1 - 0) ** 2 + (2 - 1) ** 2) / 2 + ((2 - 1) ** 2 + (2 - 2) ** 2) / 2
    assert synth.bns.loss().item() == pytest.approx(bns)
    t = torch.tensor(LOGITS_T, dtype=torch.float64)
    cond = MixedConditioning(torch.tensor([0, 2]), torch.tensor(SOFT, dtype=torch.float64),
                             mixed=torch.tensor([True, False]))
    loss, parts = synth.generator_loss(None, None, cond, t)
    ce = _soft_ce(LOGITS_T, SOFT)
    assert loss.item() == pytest.approx(ce + 0.1 * bns, rel=1e-6)
    assert parts["g_ce"] == pytest.approx(ce, rel=1e-9) and parts["g_bns"] == pytest.approx(bns)
    assert parts["g_mixed"] == 0.5


class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits, dtype=torch.float64))

    def forward(self, x):
        return self.logits[: x.shape[0]] * 1


def test_student_loss_soft_ce_plus_kl_element_mean_by_hand():
    """Qimera's loss_fn_kd (trainer.py L109-130): KLDivLoss() (element mean) * alpha*T^2 + CE against the soft target;
    the method reuses the core kd distiller with those settings."""
    from zsqbench.spine.plan import RunSpec, resolve
    assert get_registry().get("methods", "qimera").distiller == "kd"
    for proto, model in (("cpu", "resnet20@fmnist"), ("paper", "resnet20@cifar10")):
        kd = resolve(RunSpec("qimera", model, 4, 4, proto)).components["distiller"].settings
        assert (kd.temperature, kd.alpha, kd.kl_reduction) == (20.0, 1.0, "mean")
    s = [[1.0, 0.0, 0.5], [0.0, 2.0, 1.0]]
    temp = 2.0  # a small T so that the KL term is not negligible
    ctx = SimpleNamespace(student=_Fixed(s))
    batch = Batch(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]), torch.tensor(LOGITS_T, dtype=torch.float64),
                  soft_labels=torch.tensor(SOFT, dtype=torch.float64))
    loss, parts = KDDistiller(temperature=temp, alpha=1.0, kl_reduction="mean").loss(ctx, batch)
    ce = _soft_ce(s, SOFT)
    kl_sum = 0.0
    for srow, trow in zip(s, LOGITS_T):
        ls, lt = _log_softmax([v / temp for v in srow]), _log_softmax([v / temp for v in trow])
        kl_sum += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))
    kl = kl_sum / 6  # element mean over batch x classes
    assert parts["ce"] == pytest.approx(ce, rel=1e-9) and parts["kl"] == pytest.approx(kl, rel=1e-9)
    assert loss.item() == pytest.approx(ce + temp ** 2 * kl, rel=1e-9)
    hard = Batch(batch.images, batch.labels, batch.teacher_logits)  # the soft target really is used
    assert KDDistiller(temperature=temp).loss(ctx, hard)[1]["ce"] != pytest.approx(ce)


def _ctx(num_classes=10, teacher=None, image_shape=(1, 8, 8)):
    return RunContext(teacher=teacher, student=None, model=None,
                      dataset=DatasetInfo("toy", num_classes, image_shape, (0.5,), (0.5,)), wbits=4, abits=4,
                      quantizer=None, device=CPU, seed=0, total_steps=4, warmup_steps=0)


def _check_rows(cond, k, distinct):
    soft, mixed = cond.soft_labels, cond.mixed
    assert torch.allclose(soft.sum(1), torch.ones(len(soft)))
    assert torch.equal(cond.labels, soft.argmax(1))
    support = (soft > 0).sum(1)
    if distinct:
        assert (support[mixed] == k).all()
    else:
        assert (support[mixed] <= k).all() and (support[mixed] >= 1).all()
    assert (support[~mixed] == 1).all()
    assert torch.equal(soft[~mixed].argmax(1), cond.components[~mixed, 0])
    if mixed.any():  # softmax(N(0,1)) weights: not uniform, all positive
        w = cond.weights[mixed]
        assert (w > 0).all() and w.std(1).min() > 0


def test_conditioning_per_image_statistics():
    ctx = _ctx()
    synth = QimeraSynthesizer(mix_unit="image", mix_classes=3, mix_replacement=False)
    torch.manual_seed(0)
    conds = [synth.sample_conditioning(ctx, 64) for _ in range(50)]
    for c in conds:
        _check_rows(c, 3, distinct=True)
    frac = torch.cat([c.mixed for c in conds]).float().mean().item()
    assert frac == pytest.approx(0.4, abs=0.03)  # 3200 images: sd 0.009
    assert 0 < conds[0].mixed.sum() < 64  # mixed and plain rows in one batch


def test_conditioning_per_batch_official():
    """The official coin is per batch (trainer.py L211); classes are drawn with replacement and add up."""
    ctx = _ctx(num_classes=3)
    synth = QimeraSynthesizer(mix_classes=5)  # 5 draws from 3 classes: repeats for sure
    torch.manual_seed(1)
    conds = [synth.sample_conditioning(ctx, 4) for _ in range(1000)]
    for c in conds:
        assert c.mixed.all() or not c.mixed.any()
        _check_rows(c, 5, distinct=False)
        by_hand = torch.zeros(4, 3)
        for i in range(4):
            for j in range(5):
                by_hand[i, c.components[i, j]] += c.weights[i, j]
        assert torch.allclose(c.soft_labels, by_hand)
    frac = sum(bool(c.mixed.all()) for c in conds) / len(conds)
    assert frac == pytest.approx(0.4, abs=0.05)  # 1000 batches: sd 0.015
    never = QimeraSynthesizer(mix_prob=0.0).sample_conditioning(ctx, 8)
    assert not never.mixed.any() and torch.equal(never.soft_labels.argmax(1), never.labels)


def _standardize_by_hand(values):
    m = sum(values) / len(values)
    v = sum((x - m) ** 2 for x in values) / len(values)
    return [(x - m) / math.sqrt(v + 1e-5) for x in values]


def _l1_input(gen, *args):
    seen = []
    handle = gen.l1.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach().clone()))
    try:
        gen(*args)
    finally:
        handle.remove()
    return seen[0]


COMPONENTS = torch.tensor([[0, 1], [2, 2], [3, 4]])
WEIGHTS = torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.2, 0.8]])


def test_generator_input_is_the_weighted_sum_of_embedding_rows():
    """No standardisation and no noise: the generator's input is exactly sum_j w_j E[y_j] = soft @ E."""
    synth = QimeraSynthesizer(latent_dim=4, width=8, embed_norm="none", noise_scale=0.0)
    gen = synth.build_generator(_ctx(num_classes=5))
    E = gen.label_emb.weight.detach()
    got = _l1_input(gen, torch.randn(3, 2, 4), COMPONENTS, WEIGHTS)
    for i in range(3):
        by_hand = sum(WEIGHTS[i, j] * E[COMPONENTS[i, j]] for j in range(2))
        assert torch.allclose(got[i], by_hand, atol=1e-6)
    soft = torch.zeros(3, 5).scatter_add_(1, COMPONENTS, WEIGHTS)
    assert torch.allclose(got, soft @ E, atol=1e-6)


def test_generate_superposes_standardised_embeddings_official():
    """generate(): slot 0 takes the step's z, the other slots fresh noise; each slot of a mixed batch is standardised
    over batch x latent (the official transposed BatchNorm1d), then summed with the weights."""
    ctx = _ctx(num_classes=5)
    synth = QimeraSynthesizer(latent_dim=4, width=8)
    synth.generator = synth.build_generator(ctx)
    E = synth.generator.label_emb.weight.detach()
    soft = torch.zeros(3, 5).scatter_add_(1, COMPONENTS, WEIGHTS)
    cond = MixedConditioning(soft.argmax(1), soft, COMPONENTS, WEIGHTS, torch.ones(3, dtype=torch.bool))
    z = torch.randn(3, 4)
    torch.manual_seed(7)
    extra = torch.randn(3, 1, 4)
    seen = []
    handle = synth.generator.l1.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach()))
    torch.manual_seed(7)
    images = synth.generate(ctx, z, cond)
    handle.remove()
    assert images.shape == (3, 1, 8, 8)
    noise = [z, extra[:, 0]]
    e = [[(E[COMPONENTS[i, j]] + noise[j][i]).tolist() for i in range(3)] for j in range(2)]  # e[slot][row]
    normed = []
    for j in range(2):  # per slot, over rows x latent
        flat = _standardize_by_hand([v for row in e[j] for v in row])
        normed.append([flat[4 * i: 4 * i + 4] for i in range(3)])
    by_hand = torch.tensor([[sum(WEIGHTS[i, j].item() * normed[j][i][d] for j in range(2)) for d in range(4)]
                            for i in range(3)])
    assert torch.allclose(seen[0], by_hand, atol=1e-5)
    # a plain batch: each image's E[y] + z standardised over its own latent dims
    labels = torch.tensor([1, 4, 4])
    got = _l1_input(synth.generator, z, labels)
    for i in range(3):
        row = _standardize_by_hand((E[labels[i]] + z[i]).tolist())
        assert torch.allclose(got[i], torch.tensor(row), atol=1e-5)


def test_mapping_layer_and_sample_norm_and_conditional_bn_mixing():
    ctx = _ctx(num_classes=5)
    gen = QimeraSynthesizer(latent_dim=4, width=8, mapping_layer=True, mapping_dim=3,
                            embed_norm="sample").build_generator(ctx)
    E, A, b = gen.label_emb.weight.detach(), gen.mapping.weight.detach(), gen.mapping.bias.detach()
    z = torch.randn(3, 2, 4)
    got = _l1_input(gen, z, COMPONENTS, WEIGHTS)
    assert got.shape == (3, 3)
    for i in range(3):
        slots = [torch.tensor(_standardize_by_hand((E[COMPONENTS[i, j]] + z[i, j]).tolist())) for j in range(2)]
        by_hand = sum(WEIGHTS[i, j] * (A @ slots[j] + b) for j in range(2))
        assert torch.allclose(got[i], by_hand, atol=1e-5)
    # class-conditional BN (ImageNet form): gamma/beta of a mixed image = mean over the k slots of w_j * gamma[y_j]
    cbn = QimeraSynthesizer(latent_dim=4, width=8, conditional_bn=True).build_generator(ctx)
    mixed = torch.tensor([True, False, True])
    w = torch.tensor([[0.7, 0.3], [1.0, 0.0], [0.2, 0.8]])
    m = cbn._cbn_condition(COMPONENTS, w, mixed)
    assert torch.allclose(m[0], torch.tensor([0.35, 0.15, 0, 0, 0])) and torch.allclose(m[1], torch.eye(5)[2])
    assert torch.allclose(m[2], torch.tensor([0, 0, 0, 0.1, 0.4]))
    cbn_sum = QimeraSynthesizer(latent_dim=4, width=8, conditional_bn=True, cbn_mix="sum").build_generator(ctx)
    assert torch.allclose(cbn_sum._cbn_condition(COMPONENTS, w, mixed)[2], torch.tensor([0, 0, 0, 0.2, 0.8]))
    assert cbn(torch.randn(3, 2, 4), COMPONENTS, w, mixed).shape == (3, 1, 8, 8)


def test_teacher_initialised_embedding_and_errors():
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 5))
    ctx = _ctx(num_classes=5, teacher=teacher)
    gen = QimeraSynthesizer(latent_dim=4, width=8, embed_init="teacher").build_generator(ctx)
    assert torch.equal(gen.label_emb.weight.detach(), teacher[3].weight.detach())
    assert gen.label_emb.weight.data_ptr() != teacher[3].weight.data_ptr() and gen.label_emb.weight.requires_grad
    with pytest.raises(UserError, match="latent_dim equal to the teacher classifier's input width 4, got 8"):
        QimeraSynthesizer(latent_dim=8, embed_init="teacher").build_generator(ctx)
    with pytest.raises(UserError, match="mix_classes=6 distinct classes"):
        QimeraSynthesizer(mix_classes=6, mix_replacement=False).build_generator(ctx)


def test_next_batch_trains_the_generator_and_hands_on_soft_targets():
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(4, 5)).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    ctx = _ctx(num_classes=5, teacher=teacher)
    torch.manual_seed(0)
    synth = QimeraSynthesizer(latent_dim=4, width=8, mix_unit="image", mix_prob=0.5, mix_classes=3)
    synth.prepare(ctx)
    before = [p.detach().clone() for p in synth.generator.parameters()]
    batch = synth.next_batch(ctx, 16)
    assert any(not torch.equal(a, b) for a, b in zip(before, synth.generator.parameters()))
    assert batch.soft_labels.shape == (16, 5) and torch.allclose(batch.soft_labels.sum(1), torch.ones(16))
    assert torch.equal(batch.labels, batch.soft_labels.argmax(1))
    assert 0 < batch.metrics["g_mixed"] < 1 and {"loss_g", "g_ce", "g_bns"} <= set(batch.metrics)
    assert batch.metrics["g_ce"] == pytest.approx(batch.label_loss(batch.teacher_logits).item(), rel=1e-5)


def test_smoke_run_writes_valid_record(cli, tmp_path):
    res = cli("run", "--method", "qimera", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
              "--out", tmp_path, "-q")
    assert res.returncode == 0, res.stderr
    (path,) = tmp_path.glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "ok" and rec["method"]["name"] == "qimera"
    comp = rec["method"]
    assert comp["synthesizer"]["name"] == "qimera" and comp["distiller"]["name"] == "kd"
    cfg = comp["synthesizer"]["config"]
    assert cfg["mix_prob"] == 0.4 and cfg["mix_classes"] == 2 and cfg["latent_dim"] == 64
    assert {"g_ce", "g_bns", "g_mixed", "ce", "kl"} <= set(rec["train_metrics"])
    assert cli("validate", path).returncode == 0
    bad = cli("run", "--method", "qimera", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
              "--out", tmp_path, "--set", "synthesizer.mix_unit=pixel", "-q")
    assert bad.returncode == 2 and "mix_unit" in bad.stderr and len(list(tmp_path.glob("*.json"))) == 1
