"""Issue 29: the speed switches compute the same numbers as the eager code (zsqbench/spine/speed.py, docs/speed.md).

* the fused fake-quant kernel is bit-identical to the eager ops;
* the phase-decomposed upsample + conv equals conv(interpolate(x)) to float rounding, forward and backward;
* one training step of each family (generators: gdfq, bag's quantized generator; image sets: intraq, hast) has the
  eager step's loss and gradients within float tolerance;
* a smoke run's record has the eager run's metrics within the documented tolerance, and says which switches ran.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zsqbench.spine import speed
from zsqbench.spine.interfaces import RunContext
from zsqbench.spine.loop import RunSpec, resolve, run, seed_everything
from zsqbench.quantizer import kernel
from zsqbench.quantizer.fakequant import fake_quantize, quantize_model, set_calibrating
from zsqbench.synthesizer.generator import Generator, upsample_conv
from zsqbench.teacher.zoo import load_teacher

FAST = speed.Speed(phase_conv=True, channels_last=True, fused_fakequant=True)
# Documented tolerance (docs/speed.md): loss and gradients of one step, relative to their norm, or the spread
# between two eager evaluations (oneDNN / native convolution) where that is larger
STEP_RTOL = 1e-4
# A smoke run's metrics (6 steps at lr 1e-3 from a 20-25 % student: chaotic for a generator method, whose top-1 moves
# by 3.5 points between two eager runs with different convolution backends): per family, top-1 within this many
# points and mean training losses within this relative difference (docs/speed.md)
RUN_TOLERANCE = {"gdfq": (5.0, 5e-2), "intraq": (0.5, 1e-3)}

needs_kernel = pytest.mark.skipif(kernel.library() is None, reason=f"no fused kernel: {kernel.unavailable()}")


def eager(fn, *args):
    with speed.using(speed.EAGER):
        return fn(*args)


# --- the fused fake-quant kernel ---------------------------------------------------------------------------

@needs_kernel
@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("lo,hi", [(-1.3, 2.7), (0.0, 0.7), (0.2, 0.3), (-5.0, -0.5)])
def test_fused_per_tensor_is_bit_identical(bits, lo, hi):
    torch.manual_seed(bits)
    x = torch.randn(4, 8, 9, 11) * 2
    x[0, 0, 0, :4] = torch.tensor([lo, hi, (lo + hi) / 2, 0.0])
    lo_t, hi_t = torch.tensor(lo), torch.tensor(hi)
    with speed.using(FAST):
        fused = fake_quantize(x, lo_t, hi_t, bits)
    assert torch.equal(fused, eager(fake_quantize, x, lo_t, hi_t, bits))


@needs_kernel
def test_fused_handles_layouts_nan_and_per_channel_ranges():
    torch.manual_seed(0)
    x = torch.randn(6, 5, 4, 3)
    cl = x.contiguous(memory_format=torch.channels_last)
    with speed.using(FAST):
        out = fake_quantize(cl, x.min(), x.max(), 3)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, eager(fake_quantize, x, x.min(), x.max(), 3))
    for w in (torch.randn(16, 8, 3, 3), torch.randn(16, 8, 3, 3).contiguous(memory_format=torch.channels_last),
              torch.randn(10, 64)):
        flat = w.reshape(w.shape[0], -1)
        shape = (-1,) + (1,) * (w.ndim - 1)
        lo, hi = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
        with speed.using(FAST):
            assert torch.equal(fake_quantize(w, lo, hi, 3), eager(fake_quantize, w, lo, hi, 3))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with speed.using(FAST):
        out = fake_quantize(bad, x.min(), x.max(), 4)
    assert torch.isnan(out[0, 0, 0, 0]) and torch.equal(out.nan_to_num(), eager(fake_quantize, bad, x.min(), x.max(),
                                                                                4).nan_to_num())
    strided = x[:, ::2]  # not dense: the eager ops
    with speed.using(FAST):
        assert torch.equal(fake_quantize(strided, x.min(), x.max(), 3), eager(fake_quantize, strided, x.min(),
                                                                               x.max(), 3))


def test_fused_declines_what_it_cannot_do():
    x = torch.randn(4, 4)
    s, z = torch.tensor(3.0), torch.tensor(1.0)
    assert kernel.fake_quantize_into(x.double(), s, z, -4, 3) is None
    assert kernel.fake_quantize_into(x.t(), s, z, -4, 3) is None
    with torch.enable_grad():
        assert kernel.fake_quantize_into(x.requires_grad_(True), s, z, -4, 3) is None


# --- upsample + conv as four phase convolutions --------------------------------------------------------------

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("bias", [True, False])
def test_phase_conv_equals_upsample_then_conv(bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, 1, 1, bias=bias)
    x = torch.randn(3, 6, 5, 7, requires_grad=True)
    ref = conv(F.interpolate(x, scale_factor=2))
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, conv.weight])
    with speed.using(FAST):
        out = upsample_conv(conv, x)
    grads = torch.autograd.grad((out * g).sum(), [x, conv.weight])
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-6
    for a, b in zip(grads, ref_grads):
        assert _rel(a, b) < 1e-6
    with speed.using(speed.EAGER):
        assert torch.equal(upsample_conv(conv, x), ref)
    other = nn.Conv2d(6, 5, 5, 1, 2)  # not a 3x3 / padding-1 conv: the plain path
    with speed.using(FAST):
        assert torch.equal(upsample_conv(other, x), other(F.interpolate(x, scale_factor=2)))


def test_phase_conv_in_a_quantized_generator_keeps_ranges_and_output():
    """BAG's generator: weight fake-quant and an input quantizer in front of each conv; the quantizer sees the same
    values on the low-res tensor (same min/max, so the same calibrated range)."""
    torch.manual_seed(0)
    g = quantize_model(Generator(10, (1, 32, 32), width=16), 3, 3, activation_types=(), quantize_inputs=True)
    set_calibrating(g, True)
    z, y = torch.randn(8, 100), torch.randint(0, 10, (8,))
    a, b = copy.deepcopy(g), copy.deepcopy(g)
    with speed.using(speed.EAGER):
        ref = a(z, y)
    with speed.using(FAST):
        out = b(z, y)
    assert _rel(out, ref) < 1e-5
    for (name, ba), bb in zip(a.named_buffers(), b.buffers()):
        assert torch.allclose(ba.float(), bb.float(), rtol=1e-6, atol=1e-7), name


# --- one training step of each family: the same loss and gradients -------------------------------------------

def _one_step(method: str, switches: speed.Speed) -> tuple[float, dict[str, torch.Tensor]]:
    overrides = ["train.batch_size=8"]
    if method in ("intraq", "hast"):
        overrides += ["synthesizer.num_images=16", "synthesizer.synthesis_batch_size=16", "synthesizer.iterations=2",
                      "synthesizer.calibration_synthesizer=null", "synthesizer.train_augment=false"]
    with speed.using(switches):
        plan = resolve(RunSpec(method=method, model="resnet20", wbits=3, abits=3, protocol="smoke",
                               overrides=overrides))
        components = plan.build_components()
        synth, distiller, quantizer = (components[k] for k in ("synthesizer", "distiller", "quantizer"))
        dev = torch.device("cpu")
        teacher, _ = load_teacher(plan.model_spec)
        teacher = speed.to_memory_format(teacher, dev)
        seed_everything(0)
        student = speed.to_memory_format(quantizer.quantize(teacher, 3, 3).eval(), dev)
        ctx = RunContext(teacher=teacher, student=student, model=plan.model_spec, dataset=plan.dataset,
                         wbits=3, abits=3, quantizer=quantizer, device=dev, seed=0, total_steps=10, warmup_steps=2)
        synth.prepare(ctx)
        distiller.setup(ctx)
        quantizer.set_calibrating(student, True)
        for _ in range(2):
            images = synth.calibration_batch(ctx, 8).images
            with torch.no_grad():
                student(images)
        quantizer.set_calibrating(student, False)
        batch = synth.next_batch(ctx, 8)  # a generator takes its step here: its gradients stay in .grad
        grads = {}
        if hasattr(synth, "generator"):
            grads.update({f"generator.{n}": p.grad.clone() for n, p in synth.generator.named_parameters()
                          if p.grad is not None})
        loss, _ = distiller.loss(ctx, batch)
        loss.backward()
        grads.update({f"student.{n}": p.grad.clone() for n, p in student.named_parameters() if p.grad is not None})
    return float(loss), grads


def _net_rel(grads: dict, ref: dict, net: str) -> float:
    names = [n for n in ref if n.startswith(net + ".")]
    return _rel(torch.cat([grads[n].flatten() for n in names]), torch.cat([ref[n].flatten() for n in names]))


@pytest.mark.parametrize("method", ["gdfq", "bag", "intraq", "hast"])
def test_one_step_has_the_eager_loss_and_gradients(method):
    """The tolerance is float rounding, measured: the same eager step with PyTorch's native convolution instead of
    oneDNN's is another valid float evaluation of the same function; the fast step may differ from the eager one
    by at most STEP_RTOL or 1.5x that spread, whichever is larger (docs/speed.md gives the figures: the spread is
    5e-3 on gdfq's generator gradient, 5e-2 on intraq's student gradient; the fast step's 5e-3 and 7e-7)."""
    loss_e, grads_e = _one_step(method, speed.EAGER)
    with torch.backends.mkldnn.flags(enabled=False):
        loss_n, grads_n = _one_step(method, speed.EAGER)
    loss_f, grads_f = _one_step(method, FAST)
    assert grads_f.keys() == grads_e.keys() == grads_n.keys() and grads_e
    assert abs(loss_f - loss_e) <= max(STEP_RTOL, 1.5 * abs(loss_n - loss_e) / abs(loss_e)) * abs(loss_e)
    for net in ("generator", "student"):
        if any(n.startswith(net + ".") for n in grads_e):
            spread = _net_rel(grads_n, grads_e, net)
            assert _net_rel(grads_f, grads_e, net) <= max(STEP_RTOL, 1.5 * spread), (net, spread)


# --- a smoke run: the same record metrics, and the switches in the record ------------------------------------

@pytest.mark.parametrize("method", sorted(RUN_TOLERANCE))
def test_smoke_run_matches_eager_run(method, tmp_path, monkeypatch):
    monkeypatch.setenv("ZSQBENCH_CACHE_DIR", str(tmp_path / "cache"))
    records = {}
    for name, switches in (("eager", speed.EAGER), ("fast", speed.Speed())):
        with speed.using(switches):
            records[name], _ = run(RunSpec(method=method, model="resnet20", wbits=4, abits=4, protocol="smoke",
                                           out=str(tmp_path / name), quiet=True))
    e, f = records["eager"], records["fast"]
    assert e["speed"] == {"phase_conv": False, "channels_last": False, "fused_fakequant": False}
    assert f["speed"] == {"phase_conv": True, "channels_last": True, "fused_fakequant": True}
    assert e["config_hash"] == f["config_hash"]  # the switches are not part of the experiment
    points, rtol = RUN_TOLERANCE[method]
    assert abs(f["final_top1"] - e["final_top1"]) <= points
    for k, v in e["train_metrics"].items():
        assert f["train_metrics"][k] == pytest.approx(v, rel=rtol, abs=1e-6), k


def test_parse_switches():
    assert speed.parse("eager") == speed.EAGER
    assert speed.parse("") == speed.Speed()
    assert speed.parse("channels_last=0,phase_conv=1") == speed.Speed(channels_last=False)
    assert speed.Speed().resolved("cuda")["channels_last"] is False
    assert speed.Speed().resolved("cpu")["channels_last"] is True
    with pytest.raises(Exception):
        speed.parse("warp=1")
