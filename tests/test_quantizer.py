"""The shared GDFQ-lineage fake quantizer (zsqbench.quantizer.fakequant / components)."""
import pytest
import torch
import torch.nn as nn

from zsqbench.quantizer.components import MinMaxEMAQuantizer, NoQuantizer
from zsqbench.quantizer.fakequant import (ActQuantizer, QuantConv2d, QuantizedActivation, QuantLinear,
                                          act_quantizers, fake_quantize, quantize_model, quantize_weight,
                                          ranges_frozen, set_calibrating)
from zsqbench.teacher.zoo import mobilenetv1_32, resnet20

BITS = [2, 3, 4, 8]


def t(v):
    return torch.tensor(v, dtype=torch.float32)


def grid_scale(lo, hi, bits):
    """scale as the module docstring defines it (same op order, so same float)."""
    return (2 ** bits - 1) / (t(hi) - t(lo)).clamp_min(1e-8)


# --- fake_quantize -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("lo,hi", [(-1.3, 2.7), (0.0, 6.0), (-5.0, -0.5), (0.2, 1.1)])
def test_dense_ramp_gives_exactly_2_to_k_levels(bits, lo, hi):
    x = torch.linspace(lo, hi, 20_001)
    q = fake_quantize(x, t(lo), t(hi), bits)
    assert q.unique().numel() == 2 ** bits
    # levels are evenly spaced by 1/scale and span exactly (max - min)
    levels = q.unique()
    step = (hi - lo) / (2 ** bits - 1)
    assert torch.allclose(levels[1:] - levels[:-1], torch.full((levels.numel() - 1,), step), atol=1e-5)
    assert float(levels[-1] - levels[0]) == pytest.approx(hi - lo, rel=1e-5)


@pytest.mark.parametrize("bits", BITS)
def test_half_integer_zero_point_tie_loses_at_most_one_level(bits):
    """[0.25, 0.75] puts scale*min exactly on .5: round-half-to-even (as in the official code) shifts the grid
    by a full half step, so one end level is not reached; min/max stay within half a step."""
    lo, hi = 0.25, 0.75
    assert float(grid_scale(lo, hi, bits) * lo) % 1 == 0.5
    q = fake_quantize(torch.linspace(lo, hi, 20_001), t(lo), t(hi), bits)
    assert 2 ** bits - 1 <= q.unique().numel() <= 2 ** bits
    half_step = (hi - lo) / (2 ** bits - 1) / 2
    assert abs(float(q.min()) - lo) <= half_step + 1e-6 and abs(float(q.max()) - hi) <= half_step + 1e-6


@pytest.mark.parametrize("bits", BITS)
def test_never_more_than_2_to_k_levels_even_outside_range(bits):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, generator=g) * 10  # much wider than the range: clamped
    q = fake_quantize(x, t(-1.0), t(1.5), bits)
    assert q.unique().numel() <= 2 ** bits
    # clamped values land on the outermost grid levels
    assert float(q.min()) == pytest.approx(float(fake_quantize(t(-1.0), t(-1.0), t(1.5), bits)))
    assert float(q.max()) == pytest.approx(float(fake_quantize(t(1.5), t(-1.0), t(1.5), bits)))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("lo,hi", [(-1.3, 2.7), (0.0, 6.0), (-0.37, 0.91), (0.2, 1.1)])
def test_min_and_max_reconstructed(bits, lo, hi):
    """The official grid is nudged so that zero_point is an integer: min and max come back within half a step
    (and the span max-min is kept to float precision)."""
    x = t([lo, hi])
    q = fake_quantize(x, t(lo), t(hi), bits)
    half_step = (hi - lo) / (2 ** bits - 1) / 2
    assert abs(float(q[0]) - lo) <= half_step + 1e-6
    assert abs(float(q[1]) - hi) <= half_step + 1e-6
    assert float(q[1] - q[0]) == pytest.approx(hi - lo, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("lo,hi", [(-1.0, 2.0), (0.0, 3.0), (-3.0, 0.0), (-0.5, 0.5)])
def test_min_and_max_exact_when_grid_aligned(bits, lo, hi):
    """When scale*min is an integer the grid is not nudged: min and max come back to float eps."""
    s = grid_scale(lo, hi, bits)
    lo_aligned = float(torch.round(s * lo) / s)
    hi_aligned = float((torch.round(s * lo) + 2 ** bits - 1) / s)
    q = fake_quantize(t([lo_aligned, hi_aligned]), t(lo_aligned), t(hi_aligned), bits)
    eps = 4 * torch.finfo(torch.float32).eps * max(abs(lo), abs(hi), 1.0)
    assert abs(float(q[0]) - lo_aligned) <= eps
    assert abs(float(q[1]) - hi_aligned) <= eps


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("lo,hi", [(-1.3, 2.7), (0.0, 6.0), (-5.0, -0.5), (0.37, 0.91)])
def test_grid_values_reconstructed_exactly(bits, lo, hi):
    s = grid_scale(lo, hi, bits)
    n0 = torch.round(s * lo)
    n = n0 + torch.arange(2 ** bits, dtype=torch.float32)
    grid = n / s
    q = fake_quantize(grid, t(lo), t(hi), bits)
    assert torch.equal(q, grid)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("lo,hi", [(-1.3, 2.7), (-0.001, 5.0), (-7.0, 0.01), (-0.37, 0.91)])
def test_zero_exactly_representable(bits, lo, hi):
    q = fake_quantize(t([0.0]), t(lo), t(hi), bits)
    assert float(q[0]) == 0.0
    # and small values around 0 snap to the 0 level
    step = (hi - lo) / (2 ** bits - 1)
    q = fake_quantize(t([0.3 * step, -0.3 * step]), t(lo), t(hi), bits)
    assert torch.equal(q, torch.zeros(2))


def test_degenerate_range_does_not_blow_up():
    q = fake_quantize(t([1.0, 1.0]), t(1.0), t(1.0), 4)
    assert torch.isfinite(q).all()


# --- weights: per output channel ---------------------------------------------------------------------------

def _channels_with_different_ranges(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(shape, generator=g) * 2 - 1
    scales = torch.tensor([1e-3, 0.1, 1.0, 50.0][: shape[0]] + [3.0] * max(0, shape[0] - 4))
    offsets = torch.tensor([0.0, 0.05, -0.9, 10.0][: shape[0]] + [0.0] * max(0, shape[0] - 4))
    view = (-1,) + (1,) * (len(shape) - 1)
    return w * scales.view(view) + offsets.view(view)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (4, 7)], ids=["conv", "linear"])
def test_quantize_weight_per_output_channel(bits, shape):
    w = _channels_with_different_ranges(shape)
    wq = quantize_weight(w, bits)
    assert wq.shape == w.shape
    for c in range(shape[0]):
        orig, quant = w[c].flatten(), wq[c].flatten()
        lo, hi = float(orig.min()), float(orig.max())
        levels = quant.unique()
        assert levels.numel() <= 2 ** bits
        # the channel's own range is kept (a per-tensor range would wipe out the 1e-3 channel)
        half_step = (hi - lo) / (2 ** bits - 1) / 2
        assert abs(float(quant.min()) - lo) <= half_step * 1.001 + 1e-7
        assert abs(float(quant.max()) - hi) <= half_step * 1.001 + 1e-7
        assert float(quant.max() - quant.min()) == pytest.approx(hi - lo, rel=1e-4)
        # same as quantizing the channel alone
        assert torch.allclose(quant, fake_quantize(orig, orig.min(), orig.max(), bits), rtol=0, atol=1e-6)


def test_quantize_weight_small_channel_keeps_many_levels():
    """Per-tensor quantization would put the tiny channel on one or two levels."""
    w = _channels_with_different_ranges((4, 3, 3, 3))
    wq = quantize_weight(w, 4)
    assert wq[0].unique().numel() >= 8
    per_tensor = fake_quantize(w, w.min(), w.max(), 4)
    assert per_tensor[0].unique().numel() <= 2


def test_quantize_weight_does_not_touch_input():
    w = _channels_with_different_ranges((4, 3, 3, 3))
    before = w.clone()
    quantize_weight(w, 2)
    assert torch.equal(w, before)


# --- straight-through estimator ----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (5, 6)])
def test_weight_ste_gradient_is_identity(bits, shape):
    w = _channels_with_different_ranges(shape).requires_grad_(True)
    quantize_weight(w, bits).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_weight_ste_passes_upstream_gradient_unchanged():
    w = _channels_with_different_ranges((4, 5)).requires_grad_(True)
    up = torch.arange(20, dtype=torch.float32).view(4, 5)
    (quantize_weight(w, 3) * up).sum().backward()
    assert torch.equal(w.grad, up)


def test_act_ste_gradient_is_identity_even_outside_frozen_range():
    q = ActQuantizer(4)
    q.calibrating = True
    q(t([0.0, 1.0]))
    q.calibrating = False
    x = t([-5.0, -0.1, 0.0, 0.3, 0.99, 1.0, 2.0, 100.0]).requires_grad_(True)
    y = q(x)
    # outside the range the values are clamped...
    assert float(y[-1].detach()) <= 1.0 + 1e-6 and float(y[0].detach()) >= -1e-6
    # ...but the gradient is not masked
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


# --- activation quantizer ----------------------------------------------------------------------------------

def test_uncalibrated_act_quantizer_passes_through():
    q = ActQuantizer(2)
    x = torch.randn(3, 4, 5)
    y = q(x)
    assert torch.equal(y, x)
    assert not q.calibrated


def test_unknown_range_rule():
    with pytest.raises(ValueError):
        ActQuantizer(4, range_rule="percentile")


def test_ema_rule_hand_computed():
    q = ActQuantizer(4)  # range_rule="ema", momentum 0.9
    q.calibrating = True
    batches = [t([-1.0, 0.5, 3.0]), t([-0.2, 7.0]), t([0.4, 1.0, 1.5])]
    q(batches[0])
    assert float(q.x_min) == pytest.approx(-1.0) and float(q.x_max) == pytest.approx(3.0)
    assert q.calibrated and int(q.steps) == 1
    q(batches[1])
    lo, hi = 0.9 * -1.0 + 0.1 * -0.2, 0.9 * 3.0 + 0.1 * 7.0
    assert float(q.x_min) == pytest.approx(lo) and float(q.x_max) == pytest.approx(hi)
    q(batches[2])
    lo, hi = 0.9 * lo + 0.1 * 0.4, 0.9 * hi + 0.1 * 1.5
    assert float(q.x_min) == pytest.approx(lo, abs=1e-6) and float(q.x_max) == pytest.approx(hi, abs=1e-6)
    assert int(q.steps) == 3


def test_ema_rule_custom_momentum():
    q = ActQuantizer(4, momentum=0.5)
    q.calibrating = True
    q(t([0.0, 2.0]))
    q(t([-2.0, 4.0]))
    assert float(q.x_min) == pytest.approx(-1.0) and float(q.x_max) == pytest.approx(3.0)


def test_frozen_range_does_not_move():
    q = ActQuantizer(4)
    q.calibrating = True
    q(t([-1.0, 2.0]))
    q.calibrating = False
    for x in (t([-100.0, 100.0]), t([5.0]), torch.randn(10) * 1e4):
        q(x)
        assert float(q.x_min) == -1.0 and float(q.x_max) == 2.0 and int(q.steps) == 1
    # frozen output stays in the frozen range
    y = q(t([-100.0, 100.0]))
    assert -1.0 - 0.2 <= float(y.min()) and float(y.max()) <= 2.0 + 0.2


def test_output_is_quantized_to_frozen_range():
    q = ActQuantizer(3)
    q.calibrating = True
    q(t([0.0, 7.0]))
    q.calibrating = False
    y = q(torch.linspace(-1, 8, 1000))
    assert y.unique().numel() == 8
    assert torch.allclose(y.unique(), torch.arange(8.0), atol=1e-5)


def test_minmax_rule_keeps_global_extremes():
    q = ActQuantizer(4, range_rule="minmax")
    q.calibrating = True
    q(t([0.0, 1.0]))
    assert (float(q.x_min), float(q.x_max)) == (0.0, 1.0)
    q(t([-2.0, 0.5]))
    assert (float(q.x_min), float(q.x_max)) == (-2.0, 1.0)
    q(t([-1.0, 5.0]))
    assert (float(q.x_min), float(q.x_max)) == (-2.0, 5.0)
    q(t([0.1, 0.2]))
    assert (float(q.x_min), float(q.x_max)) == (-2.0, 5.0)


def test_minmax_first_batch_positive_does_not_keep_zero_start():
    """The zero-initialised buffers must not leak into the range (first batch initialises)."""
    q = ActQuantizer(4, range_rule="minmax")
    q.calibrating = True
    q(t([1.0, 3.0]))
    assert (float(q.x_min), float(q.x_max)) == (1.0, 3.0)


def test_ema_official_rule_hand_computed():
    q = ActQuantizer(4, range_rule="ema-official")
    q.calibrating = True
    mins, maxs = [-1.0, -0.2, 0.4], [3.0, 7.0, 1.5]
    s_lo = s_hi = 0.0
    for step, (lo, hi) in enumerate(zip(mins, maxs), start=1):
        q(t([lo, (lo + hi) / 2, hi]))
        c = 1 - 0.9 ** step
        s_lo = (0.9 * s_lo + 0.1 * lo) / c
        s_hi = (0.9 * s_hi + 0.1 * hi) / c
        assert float(q.x_min) == pytest.approx(s_lo, rel=1e-5)
        assert float(q.x_max) == pytest.approx(s_hi, rel=1e-5)
    # step 1 equals the batch (0.1*cur/0.1); step 2 overshoots: (0.9*3 + 0.1*7)/0.19
    assert (0.9 * 3.0 + 0.1 * 7.0) / 0.19 == pytest.approx((0.9 * maxs[0] + 0.1 * maxs[1]) / (1 - 0.81))


def test_ema_official_first_two_steps_explicit():
    q = ActQuantizer(4, range_rule="ema-official")
    q.calibrating = True
    q(t([-1.0, 3.0]))
    assert float(q.x_min) == pytest.approx(-1.0) and float(q.x_max) == pytest.approx(3.0)
    q(t([-0.2, 7.0]))
    assert float(q.x_max) == pytest.approx((0.9 * 3.0 + 0.1 * 7.0) / 0.19, rel=1e-5)   # 17.894...
    assert float(q.x_min) == pytest.approx((0.9 * -1.0 + 0.1 * -0.2) / 0.19, rel=1e-5)  # -4.842...


# --- quantize_model on real networks -----------------------------------------------------------------------

@pytest.fixture(scope="module", params=["resnet20", "mobilenetv1_32"])
def fp_model(request):
    torch.manual_seed(0)
    net = resnet20(10, 1) if request.param == "resnet20" else mobilenetv1_32(10, 1)
    return net.eval()


def _count(model, types):
    return sum(isinstance(m, types) for m in model.modules())


def test_quantize_model_structure(fp_model):
    n_conv = sum(type(m) is nn.Conv2d for m in fp_model.modules())
    n_lin = sum(type(m) is nn.Linear for m in fp_model.modules())
    n_act = _count(fp_model, (nn.ReLU, nn.ReLU6))
    n_bn = _count(fp_model, nn.BatchNorm2d)
    assert n_conv > 10 and n_lin == 1 and n_act > 10

    qm = quantize_model(fp_model, 4, 4)
    assert qm is not fp_model
    # every conv/linear converted
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in qm.modules())
    assert sum(type(m) is QuantConv2d for m in qm.modules()) == n_conv
    assert sum(type(m) is QuantLinear for m in qm.modules()) == n_lin
    assert all(m.wbits == 4 for m in qm.modules() if isinstance(m, (QuantConv2d, QuantLinear)))
    # first conv and final linear included
    convs = [m for m in qm.modules() if isinstance(m, nn.Conv2d)]
    assert type(convs[0]) is QuantConv2d and type(qm.output) is QuantLinear
    # one quantizer per activation, each right after its activation
    qs = act_quantizers(qm)
    assert len(qs) == n_act
    wrappers = [m for m in qm.modules() if isinstance(m, QuantizedActivation)]
    assert len(wrappers) == n_act
    assert all(isinstance(w[0], (nn.ReLU, nn.ReLU6)) and isinstance(w[1], ActQuantizer) for w in wrappers)
    assert all(q.bits == 4 and q.range_rule == "ema" for q in qs)
    # BN untouched: same class, same statistics and affine parameters
    bn_o = [m for m in fp_model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_q = [m for m in qm.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn_q) == n_bn and all(type(m) is nn.BatchNorm2d for m in bn_q)
    for a, b in zip(bn_o, bn_q):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        assert a is not b
    # the FP weights are kept as they were (only the forward quantizes)
    for (na, pa), (nb, pb) in zip(fp_model.named_parameters(), qm.named_parameters()):
        assert torch.equal(pa, pb) and pa is not pb
    assert all(p.requires_grad for p in qm.parameters())


def test_quantize_model_leaves_original_alone(fp_model):
    before = {k: v.clone() for k, v in fp_model.state_dict().items()}
    types_before = [type(m) for m in fp_model.modules()]
    qm = quantize_model(fp_model, 4, 4)
    set_calibrating(qm, True)
    with torch.no_grad():
        qm(torch.randn(2, 1, 32, 32))
    assert [type(m) for m in fp_model.modules()] == types_before
    assert not act_quantizers(fp_model)
    after = fp_model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_quantize_model_requires_grad_even_if_frozen_before():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 3))
    for p in net.parameters():
        p.requires_grad_(False)
    qm = quantize_model(net, 4, 4)
    assert all(p.requires_grad for p in qm.parameters())
    assert not any(p.requires_grad for p in net.parameters())


def test_quantize_model_options_and_idempotence():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU6(), nn.Flatten(), nn.Linear(2, 3), nn.ReLU())
    qm = quantize_model(net, 3, 5, range_rule="minmax", momentum=0.5)
    qs = act_quantizers(qm)
    assert len(qs) == 2 and all(q.bits == 5 and q.range_rule == "minmax" and q.momentum == 0.5 for q in qs)
    # only the chosen activation types
    qm2 = quantize_model(net, 3, 5, activation_types=(nn.ReLU6,))
    assert len(act_quantizers(qm2)) == 1
    # quantizing an already quantized model adds nothing
    qm3 = quantize_model(qm, 3, 5)
    assert len(act_quantizers(qm3)) == 2
    assert sum(isinstance(m, QuantizedActivation) for m in qm3.modules()) == 2


def test_quantized_conv_and_linear_forward_use_quantized_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    qm = quantize_model(net, 2, 8)
    x = torch.randn(2, 2, 4, 4)
    conv, lin = qm[0], qm[2]
    ref = torch.nn.functional.conv2d(x, quantize_weight(conv.weight, 2), conv.bias, padding=1)
    assert torch.allclose(conv(x), ref)
    h = torch.randn(2, 48)
    assert torch.allclose(lin(h), torch.nn.functional.linear(h, quantize_weight(lin.weight, 2), lin.bias))
    assert not torch.allclose(conv(x), net[0](x))  # 2-bit weights do change the output


def test_calibrating_and_ranges_frozen(fp_model):
    qm = quantize_model(fp_model, 4, 4)
    qs = act_quantizers(qm)
    assert not any(q.calibrating for q in qs)
    set_calibrating(qm, True)
    assert all(q.calibrating for q in qs)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        qm(x)
    ranges = [(float(q.x_min), float(q.x_max)) for q in qs]
    assert all(int(q.steps) == 1 for q in qs)
    with ranges_frozen(qm):
        assert not any(q.calibrating for q in qs)
        with torch.no_grad():
            qm(x * 5)
        assert [(float(q.x_min), float(q.x_max)) for q in qs] == ranges
        assert all(int(q.steps) == 1 for q in qs)
    assert all(q.calibrating for q in qs)  # restored
    # restored even after an exception, and per-quantizer states restored as they were
    qs[0].calibrating = False
    with pytest.raises(RuntimeError):
        with ranges_frozen(qm):
            raise RuntimeError("boom")
    assert [q.calibrating for q in qs] == [False] + [True] * (len(qs) - 1)
    set_calibrating(qm, False)
    assert not any(q.calibrating for q in qs)


def test_uncalibrated_lists_all_then_none(fp_model):
    quantizer = MinMaxEMAQuantizer()
    qm = quantizer.quantize(fp_model, 4, 4)
    names = quantizer.uncalibrated(qm)
    n_act = _count(fp_model, (nn.ReLU, nn.ReLU6))
    assert len(names) == n_act and len(set(names)) == n_act
    modules = dict(qm.named_modules())
    assert all(isinstance(modules[n], ActQuantizer) for n in names)
    quantizer.set_calibrating(qm, True)
    with torch.no_grad():
        qm(torch.randn(2, 1, 32, 32))
    quantizer.set_calibrating(qm, False)
    assert quantizer.uncalibrated(qm) == []


def test_minmax_ema_quantizer_config_reaches_quantizers():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    qm = MinMaxEMAQuantizer(range_rule="ema-official", momentum=0.8).quantize(net, 4, 4)
    (q,) = act_quantizers(qm)
    assert q.range_rule == "ema-official" and q.momentum == 0.8
    qm = MinMaxEMAQuantizer().quantize(net, 4, 4, activation_types=(nn.ReLU6,))
    assert act_quantizers(qm) == []


def test_no_quantizer_is_a_plain_copy():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    out = NoQuantizer().quantize(net, 4, 4)
    assert out is not net and type(out[0]) is nn.Conv2d and act_quantizers(out) == []


def test_quantized_network_trains_end_to_end():
    """Gradients flow through every quantized layer (STE) of a real network."""
    torch.manual_seed(0)
    qm = quantize_model(resnet20(10, 1), 4, 4)
    set_calibrating(qm, True)
    qm.train()
    out = qm(torch.randn(2, 1, 32, 32))
    set_calibrating(qm, False)
    out.sum().backward()
    convs = [m for m in qm.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert all(m.weight.grad is not None and torch.isfinite(m.weight.grad).all() for m in convs)
    assert all(float(m.weight.grad.abs().sum()) > 0 for m in convs)
