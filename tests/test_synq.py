"""SynQ (plugins/synq.py): the low-pass filter, Grad-CAM and its alignment loss, the easy/difficult CE rule, the
whole student loss, the settings per protocol, and a smoke run through the real CLI."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from zsqbench.record.io import validation_errors
from zsqbench.spine.interfaces import Batch, RunContext
from zsqbench.spine.loop import RunSpec, resolve
from zsqbench.spine.registry import dataset_info
from zsqbench.teacher.zoo import load_teacher
from zsqbench_plugins.hast import focal_ce
from zsqbench_plugins.synq import (SynQDistiller, SynQSynthesizer, cam_alignment_loss, easy_mask, gaussian_lowpass,
                                   grad_cam, guarded_focal_ce, last_conv, selective_ce)


# --- I0: the focal synthesis term at gamma 0.5 ------------------------------------------------------------------

def _confident(margin):
    logits = torch.zeros(1, 10)
    logits[0, 3] = margin
    return logits.requires_grad_(True), torch.tensor([3])


def test_guarded_focal_ce_by_hand_and_finite_where_the_codes_is_nan():
    # margin m on class 3 of 10: 1 - p_y = 9 / (e^m + 9), CE = log(1 + 9 e^-m)
    for margin in (2.0, 6.0, 16.0):
        logits, labels = _confident(margin)
        rest, ce = 9 / (math.exp(margin) + 9), math.log1p(9 * math.exp(-margin))
        value = guarded_focal_ce(logits, labels, 0.5, 1e-12)
        if margin < 10:  # further out, float32's 1 - p_y carries cancellation error (6 % at m = 16)
            assert math.isclose(value.item(), rest ** 0.5 * ce, rel_tol=1e-4)
        # bit-identical to HAST's (the official) focal term wherever that one is finite, gradient included
        official_logits = logits.detach().clone().requires_grad_(True)
        official = focal_ce(official_logits, labels, 0.5)
        assert value.item() == official.item()
        value.backward(), official.backward()
        assert torch.equal(logits.grad, official_logits.grad)
    # past a margin of ~17, float32 rounds p_y to 1: the code's gradient is NaN, the guarded one is finite
    logits, labels = _confident(40.0)
    focal_ce(logits, labels, 0.5).backward()
    assert torch.isnan(logits.grad).any()
    logits, labels = _confident(40.0)
    guarded_focal_ce(logits, labels, 0.5, 1e-12).backward()
    assert torch.isfinite(logits.grad).all()
    logits, labels = _confident(40.0)
    guarded_focal_ce(logits, labels, 0.5, None).backward()   # focal_floor=null: the code's behaviour
    assert torch.isnan(logits.grad).any()


# --- I1: the Gaussian low-pass filter ------------------------------------------------------------------------------

def _four_by_four(dc, horizontal, diagonal, nyquist):
    """dc + horizontal*cos(pi j/2) + diagonal*cos(pi i/2)cos(pi j/2) + nyquist*(-1)^j on a 4x4 grid: frequencies
    (0,0), (0,+-1), (+-1,+-1) and the horizontal Nyquist (0,-2), at distances 0, 1, sqrt 2 and 2 from the centre."""
    i = torch.arange(4, dtype=torch.float64)[:, None]
    j = torch.arange(4, dtype=torch.float64)[None, :]
    return (dc + horizontal * torch.cos(math.pi * j / 2) + diagonal * torch.cos(math.pi * i / 2)
            * torch.cos(math.pi * j / 2) + nyquist * torch.cos(math.pi * j)).expand(4, 4)


def test_lowpass_scales_each_frequency_by_hand():
    d0 = 1.5
    x = _four_by_four(1.0, 2.0, 0.5, 0.25)[None, None].double()
    g = lambda dist2: math.exp(-dist2 / (2 * d0 ** 2))  # noqa: E731
    expected = _four_by_four(1.0, 2.0 * g(1), 0.5 * g(2), 0.25 * g(4))[None, None].double()
    assert torch.allclose(gaussian_lowpass(x, d0), expected, rtol=0, atol=1e-12)
    # a huge D0 is the identity; any D0 keeps the mean (the DC term has gain 1)
    assert torch.allclose(gaussian_lowpass(x, 1e6), x, rtol=0, atol=1e-9)
    assert gaussian_lowpass(x, 0.3).mean().item() == pytest.approx(1.0, abs=1e-12)


def test_lowpass_filters_each_sampled_batch_after_its_crop():
    synth = SynQSynthesizer(lowpass_d0=2.0, train_augment=False)
    synth.images = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    synth.labels = torch.arange(6)
    synth._queue, synth._calibrator = torch.empty(0, dtype=torch.long), None
    batch = synth.next_batch(None, 4)
    assert torch.allclose(batch.images, gaussian_lowpass(synth.images[batch.labels], 2.0), atol=1e-6)
    images, labels = synth.diagnostic_images(None)  # the diagnostics see the set as the student does
    assert torch.allclose(images, gaussian_lowpass(synth.images, 2.0), atol=1e-6) and labels is synth.labels
    off = SynQSynthesizer(lowpass_d0=None, train_augment=False)
    off.images, off.labels, off._queue, off._calibrator = synth.images, synth.labels, torch.empty(0).long(), None
    raw = off.next_batch(None, 3)
    assert torch.equal(raw.images, off.images[raw.labels])  # no filter
    assert "lowpass_d0" in SynQSynthesizer.USE_KEYS  # the filter never changes the cached set


# --- I2: Grad-CAM and the alignment loss ----------------------------------------------------------------------------

# A tiny network whose gradients are known: A (the last conv's output, 2 channels of 2x2) -> global average pool ->
# linear W (2 classes). d logit_c / d A_k(w, h) = W[c, k] / 4 at every position, so the Grad-CAM weight of channel k
# for class c is W[c, k] / 4.
A0 = [[1.0, 2.0], [3.0, 4.0]]
A1 = [[4.0, 0.0], [0.0, 1.0]]
W = [[1.0, 2.0], [-1.0, 4.0]]  # logits: (2.5 + 2*1.25, -2.5 + 4*1.25) = (5, 2.5): the prediction is class 0


def _tiny(requires_w_grad=False):
    a = torch.tensor([[A0, A1]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor(W, dtype=torch.float64, requires_grad=requires_w_grad)
    return a, w, a.mean(dim=(2, 3)) @ w.T


def _close(cam, rows):
    return torch.allclose(cam[0, 0], torch.tensor(rows, dtype=torch.float64), rtol=0, atol=1e-9)


def test_grad_cam_by_hand():
    a, _, logits = _tiny()
    assert logits.tolist() == [[5.0, 2.5]]
    # class 0: weights (1/4, 2/4): map 0.25*A0 + 0.5*A1 = [[2.25, .5], [.75, 1.5]]; min-max -> [[1, 0], [1/7, 4/7]]
    cam0 = grad_cam(logits, a, torch.tensor([0]), (2, 2))
    assert _close(cam0, [[1.0, 0.0], [1 / 7, 4 / 7]])
    # class 1: weights (-1/4, 1): the code clamps the negative one to 1e-10 -> A1 -> [[1, 0], [0, 1/4]]
    cam1 = grad_cam(logits, a, torch.tensor([1]), (2, 2))
    assert _close(cam1, [[1.0, 0.0], [0.0, 0.25]])
    # unclamped (textbook Grad-CAM): ReLU(-A0/4 + A1) = [[3.75, 0], [0, 0]] -> [[1, 0], [0, 0]]
    cam1_raw = grad_cam(logits, a, torch.tensor([1]), (2, 2), clamp_weights=False)
    assert _close(cam1_raw, [[1.0, 0.0], [0.0, 0.0]])
    # bilinear (align_corners=False) to 4x4: cell (1, 1) = .75*.75*2.25 + .75*.25*(.5 + .75) + .25*.25*1.5 = 1.59375,
    # the corners keep the 2x2 values, so the min-max range is unchanged: (1.59375 - .5) / 1.75 = .625
    big = grad_cam(logits, a, torch.tensor([0]), (4, 4))[0, 0]
    assert big[1, 1].item() == pytest.approx(0.625, abs=1e-9)
    assert [big[0, 0].item(), big[0, 3].item(), big[3, 0].item()] == pytest.approx([1.0, 0.0, 1 / 7], abs=1e-9)


def test_grad_cam_of_a_one_pixel_layer_is_zero_not_stretched_rounding():
    """A 1 x 1 layer (MobileNetV2's classifier conv after the global pool, SynQ's last Conv2d there) has a constant
    map: 0 after the normalisation in exact arithmetic. The code's upsample-then-normalise stretches the float32
    rounding of the bilinear copies to [0, 1], with a gradient of order 1 / A; ``flat="zero"`` gives 0 and no
    gradient, and leaves every map with spatial extent bit for bit as the code's."""
    torch.manual_seed(0)
    grads = {}
    for scale in (3.0, 1e-3):
        a = (torch.rand(64, 10, 1, 1) * scale).requires_grad_(True)
        logits = a.flatten(1) * 1.0
        cls = logits.detach().argmax(1)
        code = grad_cam(logits, a, cls, (32, 32), flat="code")
        stretched = (code.flatten(1).amax(1) - code.flatten(1).amin(1)) > 0.5
        assert stretched.sum() > 32  # most images: rounding noise spread over [0, 1]
        grads[scale], = torch.autograd.grad(cam_alignment_loss(torch.zeros_like(code), code), a, retain_graph=True)
        exact = grad_cam(logits, a, cls, (32, 32))
        assert not exact.any()
        g, = torch.autograd.grad(cam_alignment_loss(torch.zeros_like(exact), exact), a)
        assert not g.any()
    assert grads[1e-3].abs().max() > 100 * grads[3.0].abs().max()  # the code's gradient grows as 1 / A
    # a map with spatial extent: "zero" is the code's map and gradient, bit for bit
    a = torch.rand(8, 16, 8, 8, requires_grad=True)
    logits = a.mean(dim=(2, 3)) @ torch.randn(10, 16).T
    cls = logits.detach().argmax(1)
    code, exact = (grad_cam(logits, a, cls, (32, 32), flat=f) for f in ("code", "zero"))
    assert torch.equal(code, exact)
    target = torch.rand_like(code)
    g_code, = torch.autograd.grad(cam_alignment_loss(target, code), a, retain_graph=True)
    g_exact, = torch.autograd.grad(cam_alignment_loss(target, exact), a)
    assert torch.equal(g_code, g_exact)


def test_grad_cam_weights_are_constants_and_the_loss_by_hand():
    a, w, logits = _tiny(requires_w_grad=True)
    cam = grad_cam(logits, a, torch.tensor([0]), (2, 2))
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.25]]]], dtype=torch.float64)
    loss = cam_alignment_loss(target, cam)
    assert loss.item() == pytest.approx(((1 / 7) ** 2 + (4 / 7 - 1 / 4) ** 2) / 4, rel=1e-9)
    loss.backward()
    assert w.grad is None  # no create_graph: W enters only through the (constant) weights
    assert a.grad is not None and a.grad.abs().sum() > 0  # the student learns through its activations
    # the teacher's map is a constant target
    t_map = target.clone().requires_grad_(True)
    s_map = cam.detach().requires_grad_(True)
    cam_alignment_loss(t_map, s_map).backward()
    assert t_map.grad is None and s_map.grad is not None


# --- I3: soft labels only for difficult samples --------------------------------------------------------------------

def test_easy_mask_and_selective_ce_by_hand():
    teacher = torch.tensor([[math.log(3), 0.0], [0.0, 0.0], [0.0, math.log(9)]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0])
    # p_y = 3/4, 1/2, 1/10 -> difficulty 1/4, 1/2, 9/10: with tau 0.5 only the first is easy (the rule is strict)
    assert easy_mask(teacher, labels, 0.5).tolist() == [1.0, 0.0, 0.0]
    assert easy_mask(teacher, labels, 0.95).tolist() == [1.0, 1.0, 1.0]
    assert easy_mask(teacher, labels, 0.0).tolist() == [0.0, 0.0, 0.0]
    student = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    ce = [math.log(1 + math.exp(-1.0)), math.log(1 + math.exp(2.0)), math.log(2.0)]
    mask = easy_mask(teacher, labels, 0.5)
    assert selective_ce(student, labels, mask).item() == pytest.approx(ce[0] / 3, rel=1e-12)  # over the batch of 3
    assert selective_ce(student, labels, torch.ones(3, dtype=torch.float64)).item() == pytest.approx(sum(ce) / 3)


# --- the whole student loss on the embedded teacher ----------------------------------------------------------------

@pytest.fixture(scope="module")
def nets():
    spec = resolve(RunSpec(method="synq", model="resnet20", wbits=4, abits=4, protocol="smoke")).model_spec
    teacher, _ = load_teacher(spec)
    student = copy.deepcopy(teacher)
    with torch.no_grad():  # a student that differs from its teacher
        g = torch.Generator().manual_seed(0)
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return spec, teacher, student


def _ctx(spec, teacher, student):
    return RunContext(teacher=teacher, student=student, model=spec, dataset=dataset_info("fmnist"), wbits=4, abits=4,
                      quantizer=None, device=torch.device("cpu"), seed=0, total_steps=1, warmup_steps=0)


def test_loss_without_cam_and_promotion_step_by_hand(nets):
    spec, teacher, student = nets
    ctx = _ctx(spec, teacher, student)
    dist = SynQDistiller(eps=0.0, ca_weight=0.0, cam_weight=0.0, ce_weight=5.0, difficulty_threshold=0.5)
    dist.setup(ctx)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    loss, parts = dist.loss(ctx, Batch(x, y))
    with torch.no_grad():
        t, s = teacher(x), student(x)
    p_t, log_q = F.softmax(t / 20, 1), F.log_softmax(s / 20, 1)
    kl = float((p_t * (p_t.log() - log_q)).sum() / 4)
    easy = (1 - F.softmax(t, 1)[range(4), y]) < 0.5
    ce = float((F.cross_entropy(s, y, reduction="none") * easy).sum() / 4)
    # eps = 0: the promoted pass is the clean one again, with the same easy mask; lambda_pert = 1
    assert parts["kl"] == pytest.approx(kl, rel=1e-4) and parts["ce_easy"] == pytest.approx(ce, rel=1e-4, abs=1e-7)
    assert parts["easy_fraction"] == easy.float().mean().item() and parts["cam"] == 0 and parts["fa"] == 0
    assert float(loss.detach()) == pytest.approx(2 * (20 * 20 ** 2 * kl + 5.0 * ce), rel=1e-4)
    stats = ctx.stats["synq"]
    assert stats["cam_layer_teacher"] == stats["cam_layer_student"] == last_conv(teacher)[0]
    assert stats["fa_promoted"] is False and (stats["lambda"], stats["eps"]) == (0.0, 0.0)


def test_cam_term_vanishes_for_a_copy_of_the_teacher_and_trains_the_student(nets):
    spec, teacher, student = nets
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([4, 5, 6])
    same, twin = SynQDistiller(cam_weight=200.0), _ctx(spec, teacher, copy.deepcopy(teacher))
    same.setup(twin)
    assert same.loss(twin, Batch(x, y))[1]["cam"] == pytest.approx(0, abs=1e-12)
    dist = SynQDistiller(cam_weight=200.0, cam_class="label")
    ctx = _ctx(spec, teacher, student)
    dist.setup(ctx)
    loss, parts = dist.loss(ctx, Batch(x, y))
    assert parts["cam"] > 0
    student.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher's maps and logits are constants


def test_lowpass_at_set_filters_the_set_once(nets):
    spec, teacher, _ = nets
    ctx = _ctx(spec, teacher, None)  # no teacher hash: nothing is cached
    raw, _, _ = SynQSynthesizer(num_images=5, synthesis_batch_size=5, iterations=0).synthesize(ctx)
    synth = SynQSynthesizer(num_images=5, synthesis_batch_size=5, iterations=0, lowpass_d0=4.0, lowpass_at="set",
                            train_augment=False)
    synth.prepare(ctx)
    assert torch.allclose(synth.images, gaussian_lowpass(raw, 4.0), atol=1e-6)
    batch = synth.next_batch(ctx, 5)  # not filtered a second time
    assert torch.equal(batch.images.sort(0).values, synth.images.sort(0).values)
    assert ctx.stats["synthesis"]["lowpass"] == {"d0": 4.0, "at": "set"}


# --- settings per protocol and a run through the CLI ---------------------------------------------------------------

@pytest.mark.parametrize("model, tau, ce, cam, batch", [("resnet20@cifar10", 0.7, 5.0, 200.0, 256),
                                                        ("resnet20@cifar100", 0.5, 5.0, 200.0, 256),
                                                        ("resnet18@imagenet", 0.5, 0.5, 50.0, 16)])
def test_paper_settings_per_dataset(model, tau, ce, cam, batch):
    res = resolve(RunSpec(method="synq", model=model, wbits=3, abits=3, protocol="paper"))
    assert res.off_protocol == ()
    dist, synth = res.components["distiller"].settings, res.components["synthesizer"].settings
    assert (dist.difficulty_threshold, dist.ce_weight, dist.cam_weight) == (tau, ce, cam)
    assert (synth.beta, synth.gamma, synth.lowpass_d0, synth.num_images) == (0.1, 0.5, 80.0, 5120)
    assert res.train.batch_size == batch and res.train.steps == 97 * 200


def test_cli_smoke_run_writes_a_valid_record(cli, tmp_path):
    out = tmp_path / "res"
    proc = cli("run", "--method", "synq", "--model", "resnet20", "--protocol", "smoke", "--bits", "4", "--out", out,
               "--cache-dir", tmp_path / "cache", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("*.json")
    rec = json.loads(path.read_text())
    assert validation_errors(rec) == [] and rec["status"] == "ok", rec.get("diverged")
    assert rec["method"]["name"] == "synq" and rec["off_protocol"] == []
    assert {"kl", "ce_easy", "fa", "cam", "easy_fraction", "kl_promoted", "ce_promoted"} <= set(rec["train_metrics"])
    assert rec["diagnostics"]["synq"]["cam_layer_student"].endswith("conv")
    assert rec["diagnostics"]["synthesis"]["lowpass"] == {"d0": 80.0, "at": "batch"}
    assert cli("validate", path).returncode == 0
