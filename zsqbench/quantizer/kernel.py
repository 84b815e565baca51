"""One fused CPU loop for the fake quantizer's elementwise part (issue 29, speed switch ``fused_fakequant``).

The eager fake quantizer is six elementwise ops (mul, sub, round, clamp, add, div), each a full pass over the
tensor with its own buffer. This is the same arithmetic in one pass, per element and in the same order:
``q = rint(scale * x - zp); q = min(max(q, lo), hi); y = (q + zp) / scale``, float32, round half to even, no FMA
contraction (``-ffp-contract=off``) and no fast-math, so its output is bit-identical to the eager ops (the tests
check it). It is a plain C file compiled once per machine with the system C compiler and loaded with ctypes — no
torch headers, no build step at install, well under a second to compile. Where it cannot be used (no compiler,
a CUDA or non-float32 tensor, a layout that is not dense, ranges that are neither per tensor nor per dim-0
channel) :func:`fake_quantize_into` returns None and the caller runs the eager ops.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = r"""
#include <math.h>
#include <stdint.h>

static inline float fq1(float x, float s, float zp, float lo, float hi) {
    float q = rintf(s * x - zp);
    q = q < lo ? lo : q;
    q = q > hi ? hi : q;
    return (q + zp) / s;
}

void zsq_fq_tensor(const float *x, float *y, int64_t n, float s, float zp, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) y[i] = fq1(x[i], s, zp, lo, hi);
}

void zsq_fq_channel(const float *x, float *y, int64_t channels, int64_t inner, const float *s, const float *zp,
                    float lo, float hi) {
    for (int64_t c = 0; c < channels; c++) {
        const float sc = s[c], z = zp[c];
        const float *xc = x + c * inner;
        float *yc = y + c * inner;
        for (int64_t i = 0; i < inner; i++) yc[i] = fq1(xc[i], sc, z, lo, hi);
    }
}
"""
# NaN: clamp keeps it (both comparisons are false), as torch.clamp does.
FLAGS = ["-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-march=native"]

_lib = None
_tried = False
_lock = threading.Lock()
_why_not: str | None = None


def _compile() -> ctypes.CDLL | None:
    global _why_not
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        _why_not = "no C compiler (cc/gcc) on PATH"
        return None
    from zsqbench.spine.cache import cache_base
    key = hashlib.sha256("\0".join([SOURCE, *FLAGS, platform.node(), platform.machine(), cc]).encode()).hexdigest()
    path = cache_base(None) / "kernels" / f"fakequant_{key[:16]}.so"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "fakequant.c"
                src.write_text(SOURCE)
                out = Path(tmp) / "fakequant.so"
                subprocess.run([cc, *FLAGS, str(src), "-o", str(out), "-lm"], check=True, capture_output=True,
                               timeout=120)
                tmp_target = path.with_name(f".{path.name}.{os.getpid()}")
                shutil.copyfile(out, tmp_target)
                os.replace(tmp_target, path)  # atomic: parallel jobs may build the same file
        except (OSError, subprocess.SubprocessError) as e:
            _why_not = f"compiling the fused fake-quant kernel failed: {type(e).__name__}"
            return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        _why_not = f"loading {path} failed: {e}"
        return None
    i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.zsq_fq_tensor.argtypes = [ptr, ptr, i64, f32, f32, f32, f32]
    lib.zsq_fq_channel.argtypes = [ptr, ptr, i64, i64, ptr, ptr, f32, f32]
    lib.zsq_fq_tensor.restype = lib.zsq_fq_channel.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use (None where it cannot be built; :func:`unavailable` says why)."""
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                _lib = _compile()
                _tried = True
    return _lib


def unavailable() -> str | None:
    library()
    return _why_not


def _dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def fake_quantize_into(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, lo: int, hi: int
                       ) -> torch.Tensor | None:
    """``(clamp(round(scale*x - zero_point), lo, hi) + zero_point) / scale`` in one pass, or None if the fused
    kernel does not apply (then the caller computes it eagerly). ``scale``/``zero_point``: one value, or one per
    index of dim 0 (the weights' output channels)."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or scale.dtype != torch.float32 or not _dense(x):
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return None  # the kernel is not differentiable; the STE wrapper calls it under no_grad
    lib = library()
    if lib is None:
        return None
    y = torch.empty_like(x)  # keeps the memory format; dim 0 stays outermost in both dense layouts
    if scale.numel() == 1:
        lib.zsq_fq_tensor(x.data_ptr(), y.data_ptr(), x.numel(), float(scale), float(zero_point), float(lo),
                          float(hi))
        return y
    if x.dim() >= 1 and scale.numel() == x.shape[0] and zero_point.numel() == x.shape[0] and (
            x.is_contiguous() or x.dim() == 4):
        s = scale.reshape(-1).contiguous()
        z = zero_point.to(torch.float32).reshape(-1).contiguous()
        lib.zsq_fq_channel(x.data_ptr(), y.data_ptr(), x.shape[0], x.numel() // max(1, x.shape[0]), s.data_ptr(),
                           z.data_ptr(), float(lo), float(hi))
        return y
    return None
