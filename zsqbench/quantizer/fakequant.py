"""The shared fake quantizer of the GDFQ lineage (reference §0), written afresh.

* weights: asymmetric, per output channel, raw min/max of the *current* weights on every forward;
* activations: asymmetric, per tensor, after every ReLU/ReLU6; ranges follow an EMA(0.9) of batch min/max while
  calibrating and are frozen afterwards;
* straight-through gradient: the backward pass sees the identity (no masking outside the range);
* every Conv2d and Linear (first and last too); BN is not folded; the input is not quantized.

Grid (quant_utils of the official code): scale = (2^k-1)/(max-min), zero_point = round(scale*min) + 2^(k-1),
q = clamp(round(scale*x - zero_point), -2^(k-1), 2^(k-1)-1), x_hat = (q + zero_point)/scale: 2^k levels spanning
[min, max], with 0 exactly on the grid whenever min <= 0 <= max.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from zsqbench.quantizer.kernel import fake_quantize_into
from zsqbench.spine import speed

_EPS = 1e-8


def fake_quantize(x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric fake quantization of ``x`` to ``bits`` over [x_min, x_max] (broadcastable), no gradient."""
    half = 2 ** (bits - 1)
    scale = (2 ** bits - 1) / (x_max - x_min).clamp_min(_EPS)
    zero_point = torch.round(scale * x_min) + half
    if speed.current().fused_fakequant:  # the same arithmetic in one pass, bit-identical (quantizer/kernel.py)
        fused = fake_quantize_into(x, scale, zero_point, -half, half - 1)
        if fused is not None:
            return fused
    q = torch.clamp(torch.round(scale * x - zero_point), -half, half - 1)
    return (q + zero_point) / scale


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: fake-quantized x. Backward: the gradient passes unchanged (the official pass-through STE).
    One autograd node that saves nothing, instead of x + (x_hat - x).detach()'s extra ops and buffers."""

    @staticmethod
    def forward(ctx, x, x_min, x_max, bits):
        return fake_quantize(x, x_min, x_max, bits)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def fake_quantize_ste(x: torch.Tensor, x_min: torch.Tensor, x_max: torch.Tensor, bits: int) -> torch.Tensor:
    """Fake quantization with the straight-through gradient to ``x`` (none to the range)."""
    return _FakeQuantSTE.apply(x, x_min, x_max, bits)


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel min/max fake quantization of a conv/linear weight (rows = output channels)."""
    with torch.no_grad():
        flat = w.detach().reshape(w.shape[0], -1)
        shape = (-1,) + (1,) * (w.ndim - 1)
        w_min, w_max = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    return fake_quantize_ste(w, w_min, w_max, bits)


class QuantConv2d(nn.Conv2d):
    """A Conv2d whose weight is fake-quantized on every forward (its parameters stay FP and trainable)."""

    wbits: int

    def forward(self, x):
        return self._conv_forward(x, quantize_weight(self.weight, self.wbits), self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", wbits={self.wbits}"


class QuantLinear(nn.Linear):
    wbits: int

    def forward(self, x):
        return F.linear(x, quantize_weight(self.weight, self.wbits), self.bias)

    def extra_repr(self):
        return super().extra_repr() + f", wbits={self.wbits}"


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric activation fake quantizer with a calibrated, then frozen, range.

    ``range_rule``:
      * ``"ema"`` (default): x_min/x_max <- 0.9*state + 0.1*batch, initialised with the first batch's values;
      * ``"ema-official"``: the official code's update, state = (0.9*state + 0.1*batch) / (1 - 0.9^t) with a zero
        start — its "bias correction" is applied to the state every step and overshoots the range by orders of
        magnitude for the first ~150 steps (reference §0); kept for exact-replication studies;
      * ``"minmax"``: running global min/max (ZeroQ).
    Before it has seen a batch the quantizer passes values through unchanged.
    """

    def __init__(self, bits: int, momentum: float = 0.9, range_rule: str = "ema"):
        super().__init__()
        if range_rule not in ("ema", "ema-official", "minmax"):
            raise ValueError(f"unknown activation range rule {range_rule!r}")
        self.bits, self.momentum, self.range_rule = bits, momentum, range_rule
        self.calibrating = False
        self.register_buffer("x_min", torch.zeros(()))
        self.register_buffer("x_max", torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().float(), x.max().float()
        t = int(self.steps) + 1
        m = self.momentum
        if self.range_rule != "ema-official" and t == 1:
            self.x_min.copy_(lo), self.x_max.copy_(hi)
        elif self.range_rule == "minmax":
            self.x_min.copy_(torch.minimum(self.x_min, lo)), self.x_max.copy_(torch.maximum(self.x_max, hi))
        elif self.range_rule == "ema":
            self.x_min.mul_(m).add_((1 - m) * lo), self.x_max.mul_(m).add_((1 - m) * hi)
        else:  # ema-official
            c = 1 - m ** t
            self.x_min.copy_((self.x_min * m + lo * (1 - m)) / c)
            self.x_max.copy_((self.x_max * m + hi * (1 - m)) / c)
        self.steps.fill_(t)

    @property
    def calibrated(self) -> bool:
        return int(self.steps) > 0

    def forward(self, x):
        if self.calibrating:
            self._observe(x)
        if not self.calibrated:
            return x
        return fake_quantize_ste(x, self.x_min.to(x.dtype), self.x_max.to(x.dtype), self.bits)

    def extra_repr(self):
        return f"bits={self.bits}, rule={self.range_rule}, range=[{float(self.x_min):.4g}, {float(self.x_max):.4g}]"


class QuantizedActivation(nn.Sequential):
    """The original activation module followed by its quantizer (keeps the original as child ``0``)."""


class QuantizedInput(nn.Sequential):
    """An activation quantizer on a layer's input, then the (weight-quantized) layer itself."""


DEFAULT_ACTIVATIONS = (nn.ReLU, nn.ReLU6)


def quantize_model(model: nn.Module, wbits: int, abits: int, *, activation_types=DEFAULT_ACTIVATIONS,
                   quantize_inputs: bool = False, range_rule: str = "ema", momentum: float = 0.9,
                   inplace: bool = False, first_last_bits: int | None = None) -> nn.Module:
    """Fake-quantized copy of ``model``: every Conv2d/Linear at ``wbits``, a quantizer after every activation
    of ``activation_types`` at ``abits`` and, with ``quantize_inputs``, one on the input of every Conv2d/Linear
    (BAG's generator, whose activations are not all ReLUs). Parameters stay FP (trainable), BN is left as it is.

    ``first_last_bits`` (the usual low-bit QAT convention; off in the GDFQ lineage): the first and the last
    Conv2d/Linear in module order at that many weight bits, and the last activation quantizer in module order —
    the one that feeds the classifier — at that many activation bits."""
    net = model if inplace else copy.deepcopy(model)

    def convert(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Conv2d, nn.Linear):
                child.__class__ = QuantConv2d if type(child) is nn.Conv2d else QuantLinear
                child.wbits = wbits
                if quantize_inputs:
                    setattr(parent, name, QuantizedInput(ActQuantizer(abits, momentum, range_rule), child))
            elif isinstance(child, activation_types) and not isinstance(parent, QuantizedActivation):
                setattr(parent, name, QuantizedActivation(child, ActQuantizer(abits, momentum, range_rule)))
            else:
                convert(child)

    convert(net)
    if first_last_bits is not None:
        layers = [m for m in net.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
        for layer in (layers[:1] + layers[-1:]) if layers else []:
            layer.wbits = first_last_bits
        last_act = act_quantizers(net)[-1:]
        for q in last_act:
            q.bits = first_last_bits
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def act_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


def set_calibrating(model: nn.Module, on: bool) -> None:
    for q in act_quantizers(model):
        q.calibrating = on


@contextmanager
def ranges_frozen(model: nn.Module):
    """Temporarily stop range updates (e.g. a generator's feedback pass through the student)."""
    qs = act_quantizers(model)
    before = [q.calibrating for q in qs]
    for q in qs:
        q.calibrating = False
    try:
        yield
    finally:
        for q, b in zip(qs, before):
            q.calibrating = b
