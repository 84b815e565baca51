"""ONNX export of a saved student (QuantizeLinear/DequantizeLinear) and of its FP teacher.

Both graphs take float32 N×C×H×W pixels in [0, 1] *after* the teacher card's fit (pad/resize) and normalise them
inside the graph with the card's mean/std (Sub, Div), so a user feeds raw pixels.

Student graph (opset 21):

* weights: each Conv/Gemm weight is ``DequantizeLinear(codes, s, Z, axis=0)`` of an integer initializer, per output
  channel, s = 1/scale. ``codes`` are uint8 (k <= 8; an n-bit range in an 8-bit container, Z = -round(scale*min)) or,
  for a channel whose grid does not reach 0 (Z outside 0..255) or k > 8, int32 with Z = 0;
* activations: after every quantized ReLU/ReLU6, ``Clip(lo*s, hi*s) -> QuantizeLinear(s, Z) -> DequantizeLinear``:
  the Clip holds the n-bit range inside the 8-bit container (QuantizeLinear saturates only at the container's
  bounds); uint16 containers where the range does not fit uint8;
* BN stays a separate BatchNormalization node (the student is not folded, as in the fake quantizer).

The fake quantizer computes round(scale*x) and (q+zp)/scale; ONNX computes round(x/s) and (q-Z)*s: the values agree
to float rounding (an ulp), which moves a value across a rounding boundary only rarely.
"""
from __future__ import annotations

import copy
import io
from pathlib import Path

import torch
import torch.nn as nn

from zsqbench.export.student import weight_layers
from zsqbench.quantizer.fakequant import ActQuantizer
from zsqbench.spine.errors import UserError

OPSET = 21


class Normalized(nn.Module):
    """[0, 1] pixels -> the card's normalisation -> the network (so the graph takes raw pixels)."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        c = len(mean)
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, x):
        return self.net((x - self.input_mean) / self.input_std)


class _DQWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w_hat, codes, s, z):
        return w_hat.clone()

    @staticmethod
    def symbolic(g, w_hat, codes, s, z):
        return g.op("DequantizeLinear", codes, s, z, axis_i=0)


class _QDQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, s, z, fq_min, fq_max, bits, clip):
        from zsqbench.quantizer.fakequant import fake_quantize
        return fake_quantize(x, fq_min, fq_max, bits)

    @staticmethod
    def symbolic(g, x, lo, hi, s, z, fq_min, fq_max, bits, clip):
        if clip:
            x = g.op("Clip", x, lo, hi)
        return g.op("DequantizeLinear", g.op("QuantizeLinear", x, s, z), s, z)


def _weight_qparams(mod) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, s, Z) for DequantizeLinear from a frozen layer: (c - Z)*s = (q + zp)/scale."""
    bits, shape = int(mod.wbits), tuple(mod.codes.shape)
    half = 2 ** (bits - 1)
    s = (1.0 / mod.scale.double()).float()
    z = half - mod.zero_point.to(torch.int64)  # = -round(scale*min)
    if bits <= 8 and bool(((z >= 0) & (z <= 255)).all()):
        return mod.codes.to(torch.uint8), s, z.to(torch.uint8)
    view = (-1,) + (1,) * (len(shape) - 1)
    u = mod.codes.to(torch.int64) - z.view(view)  # q + zp: the grid index from 0
    return u.to(torch.int32), s, torch.zeros_like(z, dtype=torch.int32)


class _ExportWeight(nn.Module):
    """Replaces a frozen layer's forward for tracing: the weight is a DequantizeLinear of its integer codes."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        codes, s, z = _weight_qparams(layer)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", s)
        self.register_buffer("zero_point", z)

    def forward(self, x):
        w = _DQWeight.apply(self.layer.weight_hat, self.codes, self.scale, self.zero_point)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return nn.functional.linear(x, w, self.layer.bias)


class _ExportAct(nn.Module):
    def __init__(self, q: ActQuantizer):
        super().__init__()
        bits = int(q.bits)
        x_min, x_max = q.x_min.float(), q.x_max.float()
        scale = (2 ** bits - 1) / (x_max - x_min).clamp_min(1e-8)
        lo = int(torch.round(scale * x_min))  # the fake quantizer's zero_point - 2^(k-1)
        hi = lo + 2 ** bits - 1
        s = float(1.0 / scale.double())
        for dtype, top in ((torch.uint8, 255), (torch.uint16, 65535)):
            z = min(max(-lo, 0), top)
            if lo + z >= 0 and hi + z <= top:
                break
        else:
            raise UserError(f"an activation range [{float(x_min):.4g}, {float(x_max):.4g}] at {bits} bits does not "
                            "fit a 16-bit QuantizeLinear container")
        self.clip = not (lo + z == 0 and hi + z == top)
        self.bits = bits
        self.register_buffer("lo", torch.tensor(lo * s, dtype=torch.float32))
        self.register_buffer("hi", torch.tensor(hi * s, dtype=torch.float32))
        self.register_buffer("s", torch.tensor(s, dtype=torch.float32))
        self.register_buffer("z", torch.tensor(z, dtype=dtype))
        self.register_buffer("fq_min", x_min.clone())
        self.register_buffer("fq_max", x_max.clone())

    def forward(self, x):
        return _QDQ.apply(x, self.lo, self.hi, self.s, self.z, self.fq_min, self.fq_max, self.bits, self.clip)


def exportable_student(student: nn.Module) -> nn.Module:
    """A copy of a reloaded (frozen) student whose quantizers trace to Q/DQ nodes."""
    net = copy.deepcopy(student)
    targets = {id(m) for _, m in weight_layers(net)}

    def convert(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if id(child) in targets:
                if not hasattr(child, "codes"):
                    raise UserError(f"layer {name!r} has no integer codes: export a student loaded from its file")
                setattr(parent, name, _ExportWeight(child))
            elif isinstance(child, ActQuantizer):
                if not child.calibrated:
                    raise UserError(f"activation quantizer {name!r} was never calibrated: nothing to export")
                setattr(parent, name, _ExportAct(child))
            else:
                convert(child)

    convert(net)
    return net.eval()


def to_onnx(net: nn.Module, card: dict, input_shape: tuple[int, ...], *, quantized: bool) -> bytes:
    """ONNX bytes of ``net`` behind the card's normalisation, batch axis dynamic."""
    import warnings
    model = Normalized(net, card["mean"], card["std"]).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (torch.rand(1, *input_shape),), buf, dynamo=False, opset_version=OPSET,
                              input_names=["pixels"], output_names=["logits"],
                              dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
                              do_constant_folding=not quantized)
        except Exception as e:
            raise UserError(f"cannot export the network to ONNX: {type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:200]}") from None
    return buf.getvalue()


def export_student(student: nn.Module, meta: dict) -> bytes:
    return to_onnx(exportable_student(student), meta["card"], tuple(meta["input_shape"]), quantized=True)


def export_teacher(teacher: nn.Module, meta: dict) -> bytes:
    return to_onnx(copy.deepcopy(teacher).eval(), meta["card"], tuple(meta["input_shape"]), quantized=False)


def onnx_summary(data: bytes) -> dict:
    """Node counts by op type and integer initializer bytes of an ONNX model."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load_from_string(data)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    int_bytes = sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer
                    if t.data_type in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.INT32,
                                       onnx.TensorProto.UINT16))
    return {"ops": dict(sorted(ops.items())), "integer_initializer_bytes": int(int_bytes), "opset": OPSET}


def check_out_dir(out: str | Path) -> Path:
    """An export directory that can be written: one line otherwise, before any work."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"export directory {out} is a file: give a directory (it is created if missing)")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise UserError(f"cannot create export directory {out}: {parent} is a file")
    import os
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write export directory {out}: {parent} is not writable")
    return out
