"""Image-optimisation methods (IntraQ, HAST, ZeroQ references): loss terms against hand computation, the batched
augmentation, IntraQ's class centres, the synthetic-set cache, the diagnostics, and end-to-end CLI runs."""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zsqbench.distiller.attention import channel_attention
from zsqbench.evaluation.diagnostics import SetStats
from zsqbench.record.io import validation_errors
from zsqbench.spine.interfaces import Batch, RunContext
from zsqbench.spine.loop import RunSpec, resolve, run
from zsqbench.spine.registry import dataset_info
from zsqbench.synthesizer.augment import random_resized_crop_flip
from zsqbench.synthesizer.bns import BNStatHooks, per_sample_moment_loss
from zsqbench.synthesizer.imageopt import ImageSetSynthesizer
from zsqbench.teacher.zoo import load_teacher
from zsqbench_plugins.hast import HASTDistiller, focal_ce
from zsqbench_plugins.intraq import IntraQSynthesizer, marginal_distance_loss, soft_inception_loss

METHODS = ("zeroq", "zeroq-kd", "intraq", "hast")


# --- loss terms by hand --------------------------------------------------------------------------------------

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 1])


def softmax_row(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_soft_inception_loss_by_hand():
    targets = torch.tensor([0.97, 1.0], dtype=torch.float64)
    p0, p1 = softmax_row([2.0, 0.5, -1.0])[0], softmax_row([0.0, 1.0, 3.0])[1]
    expected = ((p0 - 0.97) ** 2 + (p1 - 1.0) ** 2) / 2
    assert float(soft_inception_loss(LOGITS, LABELS, targets)) == pytest.approx(expected, rel=1e-12)


def test_marginal_distance_loss_by_hand():
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    c = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)  # the third sample's class has no centre yet
    d = 1 - 1 / math.sqrt(2)  # cosine distance of the first two pairs; the third (masked) is 0
    lower, upper = marginal_distance_loss(f, c, mask, lambda_l=0.5, lambda_u=0.2)
    assert float(lower) == pytest.approx(2 * (0.5 - d) / (2 + 1e-6), rel=1e-9)
    assert float(upper) == pytest.approx(2 * (d - 0.2) / (2 + 1e-6), rel=1e-9)
    lower, upper = marginal_distance_loss(f, c, mask, lambda_l=0.1, lambda_u=0.8)  # d inside the margins
    assert float(lower) == 0 and float(upper) == 0


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_ce_by_hand(gamma):
    expected = 0.0
    for row, y in zip(LOGITS.tolist(), LABELS.tolist()):
        p = softmax_row(row)[y]
        expected += (1 - p) ** gamma * -math.log(p)
    assert float(focal_ce(LOGITS, LABELS, gamma)) == pytest.approx(expected / 2, rel=1e-12)


class TwoBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(2), nn.BatchNorm2d(2)
        for bn, m, v in ((self.bn1, [0.5, -1.0], [2.0, 0.5]), (self.bn2, [0.0, 0.3], [1.0, 4.0])):
            bn.running_mean.copy_(torch.tensor(m))
            bn.running_var.copy_(torch.tensor(v))
        self.eval()

    def forward(self, x):
        return self.bn2(self.bn1(x) * 2)


def bn_inputs(x):
    net = TwoBN()
    with torch.no_grad():
        return net, [x, net.bn1(x) * 2]


def test_bns_batch_form_is_intraq_mean_of_mse_mean_plus_mean_of_mse_var():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    net, inputs = bn_inputs(x)
    mean_terms, var_terms = [], []
    for bn, h in zip((net.bn1, net.bn2), inputs):
        vals = h.transpose(0, 1).reshape(2, -1)
        mu = vals.mean(1)
        var = ((vals - mu[:, None]) ** 2).mean(1)
        mean_terms.append(float(((mu - bn.running_mean) ** 2).mean()))
        var_terms.append(float(((var - bn.running_var) ** 2).mean()))
    expected = sum(mean_terms) / 2 + sum(var_terms) / 2
    hooks = BNStatHooks(net)
    with hooks.recording():
        net(x)
    assert float(hooks.loss().detach()) == pytest.approx(expected, rel=1e-5)


def test_bns_zeroq_form_by_hand():
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    net, inputs = bn_inputs(x)
    expected = 0.0
    for bn, h in zip((net.bn1, net.bn2), inputs):  # summed over layers
        per_sample = []
        for sample in h:
            total = 0.0
            for c in range(2):
                vals = sample[c].flatten().tolist()
                m = sum(vals) / len(vals)
                s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) + 1e-6)  # unbiased, + eps
                total += (m - float(bn.running_mean[c])) ** 2
                total += (s - math.sqrt(float(bn.running_var[c]) + 1e-6)) ** 2
            per_sample.append(total)
        expected += sum(per_sample) / len(per_sample)
    hooks = BNStatHooks(net, form="per-sample")
    with hooks.recording():
        net(x)
    assert float(hooks.loss().detach()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        BNStatHooks(net, form="nope")


def test_zeroq_input_prior_by_hand():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # one sample, one channel: mean 4, unbiased var 20/3
    expected = 4.0 ** 2 + (math.sqrt(20 / 3 + 1e-6) - 1) ** 2
    assert float(per_sample_moment_loss(x, torch.zeros(()), torch.ones(()))) == pytest.approx(expected, rel=1e-6)


# --- augmentation ---------------------------------------------------------------------------------------------

def test_crop_flip_identity_flip_independence_and_gradient():
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    same = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    assert torch.allclose(same, x, atol=1e-5)
    flipped = random_resized_crop_flip(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    one = x[:1].repeat(16, 1, 1, 1)
    out = random_resized_crop_flip(one, scale=(0.3, 0.6), generator=torch.Generator().manual_seed(1))
    assert out.shape == one.shape
    assert len({tuple(o.flatten()[:6].tolist()) for o in out}) == 16  # a crop per image, not one per batch
    again = random_resized_crop_flip(one, scale=(0.3, 0.6), generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    leaf = x.clone().requires_grad_(True)
    random_resized_crop_flip(leaf, scale=(0.5, 1.0)).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


# --- IntraQ's class centres -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_ctx():
    spec = resolve(RunSpec(method="intraq", model="resnet20", wbits=4, abits=4, protocol="smoke")).model_spec
    teacher, info = load_teacher(spec)
    return RunContext(teacher=teacher, student=None, model=spec, dataset=dataset_info("fmnist"), wbits=4, abits=4,
                      quantizer=None, device=torch.device("cpu"), seed=0, total_steps=0, warmup_steps=0,
                      teacher_hash=info["sha256"])


def test_mdc_centres_come_from_earlier_batches_only(teacher_ctx):
    synth = IntraQSynthesizer(num_images=12, synthesis_batch_size=4, iterations=2, plateau_patience=1)
    states = []
    begin = synth.begin_batch

    def spy(ctx, labels, generator):
        state = begin(ctx, labels, generator)
        states.append((labels.clone(), state))
        return state

    synth.begin_batch = spy
    images, labels, stats = synth.synthesize(teacher_ctx)
    assert len(states) == 3 and stats["images"] == 12
    assert states[0][1]["centres"] is None and states[0][1]["has_centre"].sum() == 0  # the first batch has none
    feats = synth.pooled_features(teacher_ctx, images)
    for k in (1, 2):
        batch_labels, state = states[k]
        earlier_f, earlier_y = feats[: 4 * k], labels[: 4 * k]  # finished images of batches 0..k-1, no later ones
        for i, y in enumerate(batch_labels.tolist()):
            members = earlier_f[earlier_y == y]
            assert bool(state["has_centre"][i]) == (len(members) > 0)
            if len(members):
                assert torch.allclose(state["centres"][i], members.mean(0), atol=1e-5)
    soft = states[0][1]["targets"]
    assert ((soft == 1.0) | ((soft >= 0.95) & (soft < 1.0))).all()


# --- HAST's student loss ------------------------------------------------------------------------------------------

def test_hast_loss_with_eps_zero_is_twice_the_clean_loss_by_hand(teacher_ctx):
    student = load_teacher(teacher_ctx.model)[0]
    for p in student.parameters():
        p.requires_grad_(True)
    ctx = RunContext(teacher=teacher_ctx.teacher, student=student, model=teacher_ctx.model,
                     dataset=teacher_ctx.dataset, wbits=4, abits=4, quantizer=None, device=torch.device("cpu"),
                     seed=0, total_steps=1, warmup_steps=0)
    with torch.no_grad():  # a student that differs from its teacher
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dist = HASTDistiller(eps=0.0, ca_weight=7.0)
    dist.setup(ctx)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    loss, parts = dist.loss(ctx, Batch(x, torch.tensor([0, 1, 2, 3])))
    with torch.no_grad():
        t = ctx.teacher(x)
        t_feats = [f.clone() for f in dist.teacher_tap.features]
        s = student(x)
        s_feats = [f.clone() for f in dist.student_tap.features]
    temp = 20.0
    p_t, log_q = F.softmax(t / temp, 1), F.log_softmax(s / temp, 1)
    kl = float((p_t * (p_t.log() - log_q)).sum() / 4)
    fa = sum(float((F.normalize(a.pow(2).mean((2, 3)), dim=1) - F.normalize(b.pow(2).mean((2, 3)), dim=1))
                   .pow(2).mean()) for a, b in zip(s_feats, t_feats))
    assert parts["kl"] == pytest.approx(kl, rel=1e-4) and parts["fa"] == pytest.approx(fa, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(2 * (20 * temp ** 2 * kl + 7.0 * fa), rel=1e-4)
    assert ctx.stats["hast"] == {"lambda": 7.0, "eps": 0.0, "lambda_eps": "code"}
    assert channel_attention(s_feats[0], True).shape == (4, s_feats[0].shape[1])


def test_hast_promotion_moves_every_pixel_by_eps(teacher_ctx):
    student = load_teacher(teacher_ctx.model)[0]
    ctx = RunContext(teacher=teacher_ctx.teacher, student=student, model=teacher_ctx.model,
                     dataset=teacher_ctx.dataset, wbits=4, abits=4, quantizer=None, device=torch.device("cpu"),
                     seed=0, total_steps=1, warmup_steps=0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    seen = []
    handle = student.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    dist = HASTDistiller(lambda_eps="hocon", eps=0.25, ca_weight=1000.0)  # explicit values win over any preset
    dist.setup(ctx)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    dist.loss(ctx, Batch(x, torch.tensor([0, 1])))
    handle.remove()
    clean, hard = seen
    assert torch.equal(clean, x)
    moved = (hard - x).abs()
    assert torch.allclose(moved[moved > 0], torch.full_like(moved[moved > 0], 0.25))
    assert (moved > 0).float().mean() > 0.9  # the sign of a dense gradient: almost every pixel moves


def test_hast_hocon_has_no_fmnist_values(cli, tmp_path):
    proc = cli("run", "--method", "hast", "--model", "resnet20", "--protocol", "smoke", "--bits", "4", "--set",
               "distiller.lambda_eps=hocon", "--out", tmp_path, "--cache-dir", tmp_path / "cache", "-q")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no lambda/eps for fmnist" in proc.stderr


# --- diagnostics ----------------------------------------------------------------------------------------------

def test_intra_class_distance_streams_and_matches_pairs():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(9, 5, generator=g), torch.tensor([0, 0, 0, 1, 1, 2, 1, 0, 2])
    images = torch.randn(9, 1, 2, 2, generator=g)
    stats = SetStats()
    stats.add(images[:4], labels[:4], feats[:4])
    stats.add(images[4:], labels[4:], feats[4:])
    per_class = []
    for k in range(3):
        f = feats[labels == k]
        pairs = [1 - float(F.cosine_similarity(f[i:i + 1], f[j:j + 1])) for i in range(len(f)) for j in range(len(f))
                 if i != j]
        per_class.append(sum(pairs) / len(pairs))
    summary = stats.summary()
    assert summary["intra_class_cosine_distance"] == pytest.approx(sum(per_class) / 3, abs=1e-5)
    assert summary["value_min"] == pytest.approx(float(images.min()), abs=1e-5)
    assert summary["value_std"] == pytest.approx(float(images.std(unbiased=False)), abs=1e-5)
    assert summary["images"] == 9 and summary["classes"] == 3


# --- end to end ----------------------------------------------------------------------------------------------

def check_record(rec: dict, method: str) -> None:
    assert validation_errors(rec) == []
    assert rec["method"]["name"] == method and rec["off_protocol"] == []
    assert rec["status"] == "ok", rec["diverged"]
    syn, data = rec["diagnostics"]["synthesis"], rec["diagnostics"]["data"]
    assert syn["images"] == rec["method"]["synthesizer"]["config"]["num_images"]
    assert syn["image_iterations_per_s"] > 0 and syn["cache"] in ("hit", "miss")
    for side in ("synthetic", "real"):
        d = data[side]
        assert 0 <= d["intra_class_cosine_distance"] <= 2
        assert d["value_min"] <= d["value_mean"] <= d["value_max"] and d["value_std"] > 0 and d["bns_error"] >= 0
    assert data["real"]["images"] == rec["eval_samples"]
    assert data["synthetic"]["images"] == syn["images"]
    assert "diagnostics" in rec["timing"]["phases_s"]


@pytest.mark.parametrize("method", METHODS)
def test_cli_smoke_run_writes_a_valid_record(cli, tmp_path, method):
    out = tmp_path / "res"
    proc = cli("run", "--method", method, "--model", "resnet20", "--protocol", "smoke", "--bits", "4",
               "--out", out, "--cache-dir", tmp_path / "cache", "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("*.json")
    rec = json.loads(path.read_text())
    check_record(rec, method)
    assert cli("validate", path).returncode == 0
    if method == "zeroq":
        assert rec["timing"]["steps"] == 0 and rec["method"]["quantizer"]["config"]["range_rule"] == "minmax"
    if method == "hast":
        assert {"kl", "fa", "kl_promoted", "fa_promoted"} <= set(rec["train_metrics"])
        assert rec["diagnostics"]["hast"]["lambda"] == 1000.0


def test_cache_is_hit_on_the_second_run_and_shared_across_bits(tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def smoke(out, **kw):
        kw = {"wbits": 4, "abits": 4, **kw}
        rec, _ = run(RunSpec(method="intraq", model="resnet20", protocol="smoke", out=str(out), quiet=True,
                             cache_dir=str(cache), **kw))
        return rec

    first = smoke(tmp_path / "a")
    assert first["diagnostics"]["synthesis"]["cache"] == "miss"
    files = sorted(p.name for p in (cache / "synthetic").iterdir())
    assert [Path(f).suffix for f in files] == [".json", ".png", ".pt"]

    def no_synthesis(self, ctx):
        raise AssertionError("synthesis ran although the set is cached")

    monkeypatch.setattr(ImageSetSynthesizer, "synthesize", no_synthesis)
    second = smoke(tmp_path / "b")
    assert second["diagnostics"]["synthesis"]["cache"] == "hit"
    # the cached set is the very set: the same run gives the same figures
    for key in ("final_top1", "eval_history", "train_metrics"):
        assert second[key] == first[key], key
    assert second["diagnostics"]["data"] == first["diagnostics"]["data"]
    w3 = smoke(tmp_path / "c", wbits=3, abits=3)  # the bit-width is not part of the key
    assert w3["diagnostics"]["synthesis"]["cache"] == "hit"
    assert len(list((cache / "synthetic").glob("*.pt"))) == 1
    monkeypatch.undo()
    other_seed = smoke(tmp_path / "d", seed=1)
    assert other_seed["diagnostics"]["synthesis"]["cache"] == "miss"


def test_zeroq_and_zeroq_kd_share_one_set(teacher_ctx):
    paths = set()
    for method in ("zeroq", "zeroq-kd"):
        synth = resolve(RunSpec(method=method, model="resnet20", wbits=4, abits=4, protocol="cpu")).components[
            "synthesizer"].build()
        paths.add(synth.cache_path(teacher_ctx))
    assert len(paths) == 1


def test_synth_command_builds_then_finds_the_set_and_writes_a_png(cli, tmp_path):
    args = ("synth", "--method", "hast", "--model", "resnet20", "--protocol", "smoke", "--cache-dir", tmp_path, "-q")
    proc = cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "built in" in proc.stdout and "image-iterations/s" in proc.stdout
    png = next((tmp_path / "synthetic").glob("*.png"))
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (8 * 34 + 2, 10 * 34 + 2)  # 8 images per class, one row per class, 2-px gaps
    idat = data[data.index(b"IDAT") + 4: data.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == height * (width + 1)
    again = cli(*args)
    assert again.returncode == 0 and "found in the cache" in again.stdout
    gdfq = cli("synth", "--method", "gdfq", "--model", "resnet20", "--protocol", "smoke", "--cache-dir", tmp_path)
    assert gdfq.returncode == 2 and "builds no image set" in gdfq.stderr and "Traceback" not in gdfq.stderr


def test_tampered_cache_is_one_line_error(cli, tmp_path):
    args = ("synth", "--method", "zeroq", "--model", "resnet20", "--protocol", "smoke", "--cache-dir", tmp_path, "-q")
    assert cli(*args).returncode == 0
    (pt,) = (tmp_path / "synthetic").glob("*.pt")
    pt.write_bytes(b"not a tensor file")
    proc = cli(*args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "delete it" in proc.stderr and str(pt) in proc.stderr.replace("\n", "")
    assert cli(*args, "--force").returncode == 0  # --force rebuilds it


# --- activation calibration on a GDFQ generator (the official IntraQ/HAST trainers) ---------------------------

def test_cpu_settings_calibrate_on_a_gdfq_generator_like_the_official_code():
    for method, iterations in (("intraq", 50), ("hast", 200)):
        syn = resolve(RunSpec(method=method, model="resnet20", wbits=3, abits=3, protocol="cpu")).components[
            "synthesizer"].settings
        assert (syn.calibration_synthesizer, syn.calibration_batch_size, syn.iterations) == ("gdfq", 16, iterations)
    # and null switches it off (calibration on the method's own set), off-protocol
    res = resolve(RunSpec(method="hast", model="resnet20", wbits=3, abits=3, protocol="cpu",
                          overrides=["synthesizer.calibration_synthesizer=null"]))
    assert res.components["synthesizer"].settings.calibration_synthesizer is None and res.off_protocol


def test_calibration_batches_come_from_the_generator_then_training_from_the_set(teacher_ctx, tmp_path):
    ctx = RunContext(teacher=teacher_ctx.teacher, student=None, model=teacher_ctx.model,
                     dataset=teacher_ctx.dataset, wbits=4, abits=4, quantizer=None, device=torch.device("cpu"),
                     seed=0, total_steps=4, warmup_steps=2, cache_dir=str(tmp_path), teacher_hash=None)
    synth = IntraQSynthesizer(num_images=8, synthesis_batch_size=4, iterations=1, plateau_patience=1,
                              train_augment=False, calibration_synthesizer="gdfq", calibration_batch_size=3)
    synth.prepare(ctx)
    calib = synth.calibration_batch(ctx, 8)
    assert calib.images.shape == (3, *ctx.image_shape)  # calibration_batch_size, not the training batch size
    in_set = lambda x: bool((synth.images == x).flatten(1).all(1).any())  # noqa: E731
    assert not any(in_set(x) for x in calib.images)  # generator images, not the optimised set
    train = synth.next_batch(ctx, 4)
    assert synth._calibrator is None  # the generator is let go once training starts
    assert all(in_set(x) for x in train.images)
    after = synth.calibration_batch(ctx, 2).images  # with the generator gone, calibration falls back to the set
    assert after.shape[0] == 2 and all(in_set(x) for x in after)
