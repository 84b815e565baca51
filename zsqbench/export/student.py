"""A saved student: what a run quantized, kept as integers.

File format (``torch.save``, read back with ``weights_only=True``): a dict of plain types and three tensors ::

    {"format": "zsqbench-student", "version": 1,
     "meta":   {...JSON: architecture, bit-widths, quantizer, teacher card and provenance, evaluation, record hash},
     "layers": [{"name", "shape", "bits", "offset", "count", "channel_offset"}...],  # weight-quantized layers
     "tensors": [{"name", "dtype", "shape", "offset"}...],  # every other state-dict entry (BN, biases, ranges)
     "codes":  uint8 1-D, every layer's integer weight codes packed to its bit-width, back to back,
     "scales": float32 1-D, per output channel: the fake quantizer's scale (2^k-1)/(max-min), exactly as computed,
     "zero_points": int32 1-D, per output channel: its zero point round(scale*min) + 2^(k-1),
     "floats": float32 1-D, "ints": int64 1-D,  # the other entries, flattened
     "digest": sha256 of all of the above}

A weight code is ``c = q + 2^(k-1)`` in ``[0, 2^k - 1]`` where ``q`` is the fake quantizer's integer; the dequantized
weight is ``((c - 2^(k-1)) + zero_point) / scale`` — the same float operations the fake quantizer performs, so a
reloaded student computes bit for bit what the run's student computed. Few, large tensors keep the file small
(``torch.save`` spends a few hundred bytes per tensor).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from zsqbench.quantizer.fakequant import _EPS, ActQuantizer, QuantConv2d, QuantLinear, quantize_weight
from zsqbench.record.io import write_bytes_atomic
from zsqbench.spine.errors import UserError

FORMAT, VERSION = "zsqbench-student", 1
SUFFIX = ".student.pt"


# --- integer codes --------------------------------------------------------------------------------------------

def weight_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fake quantizer's per-output-channel grid for ``w``: (codes in [0, 2^k-1] as int64, scale float32 (C,),
    zero_point float32 (C,)), computed with exactly the operations of :func:`fakequant.fake_quantize`."""
    with torch.no_grad():
        w = w.detach().float()
        flat = w.reshape(w.shape[0], -1)
        shape = (-1,) + (1,) * (w.ndim - 1)
        w_min, w_max = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
        half = 2 ** (bits - 1)
        scale = (2 ** bits - 1) / (w_max - w_min).clamp_min(_EPS)
        zero_point = torch.round(scale * w_min) + half
        q = torch.clamp(torch.round(scale * w - zero_point), -half, half - 1)
    return (q.to(torch.int64) + half), scale.reshape(-1), zero_point.reshape(-1)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int,
               shape: tuple[int, ...]) -> torch.Tensor:
    """Float weights from codes: ``(q + zero_point) / scale`` in float32, as the fake quantizer computes them."""
    view = (-1,) + (1,) * (len(shape) - 1)
    q = (codes.to(torch.int64) - 2 ** (bits - 1)).to(torch.float32).reshape(shape)
    return (q + zero_point.to(torch.float32).view(view)) / scale.to(torch.float32).view(view)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit integers, packed back to back (little-endian bit order) into bytes."""
    codes = codes.astype(np.int64).reshape(-1)
    bitplanes = ((codes[:, None] >> np.arange(bits)) & 1).astype(np.uint8)
    return np.packbits(bitplanes.reshape(-1), bitorder="little")


def unpack(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(data, bitorder="little")[:count * bits]
    if planes.size != count * bits:
        raise ValueError("too few packed bytes")
    return (planes.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(1)


# --- frozen quantized layers (a reloaded student) -------------------------------------------------------------

class _Frozen:
    """Mixin: the layer's weight is fixed to its dequantized integer codes (no re-quantization per forward)."""

    weight_hat: torch.Tensor

    def quantized_weight(self) -> torch.Tensor:
        return self.weight_hat


class FrozenQuantConv2d(_Frozen, QuantConv2d):
    def forward(self, x):
        return self._conv_forward(x, self.weight_hat, self.bias)


class FrozenQuantLinear(_Frozen, QuantLinear):
    def forward(self, x):
        return nn.functional.linear(x, self.weight_hat, self.bias)


FROZEN = {QuantConv2d: FrozenQuantConv2d, QuantLinear: FrozenQuantLinear}


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


# --- save -------------------------------------------------------------------------------------------------------

def _digest(obj: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({k: obj[k] for k in ("format", "version", "meta", "layers", "tensors")},
                        sort_keys=True).encode())
    for key in ("codes", "scales", "zero_points", "floats", "ints"):
        h.update(key.encode())
        h.update(obj[key].contiguous().numpy().tobytes())
    return h.hexdigest()


def student_payload(student: nn.Module, meta: dict) -> dict:
    """The file's content for a fake-quantized ``student`` (see the module docstring). Refuses (one line) a student
    whose weight-quantized layers do not compute the shared fake quantizer's weights."""
    layers, codes, scales, zps = [], [], [], []
    offset = channels = 0
    skip = set()
    for name, mod in weight_layers(student):
        bits = int(mod.wbits)
        w = mod.weight
        c, scale, zp = weight_codes(w, bits)
        expected = mod.quantized_weight() if isinstance(mod, _Frozen) else quantize_weight(w, bits)
        if not torch.equal(dequantize(c, scale, zp, bits, tuple(w.shape)), expected.detach().float()):
            raise UserError(f"layer {name!r} does not compute the shared fake quantizer's weights: cannot save it "
                            "as integer codes")
        packed = pack(c.numpy(), bits)
        layers.append({"name": name, "shape": list(w.shape), "bits": bits, "offset": offset, "count": c.numel(),
                       "bytes": int(packed.size), "channel_offset": channels, "kind": type(mod).__name__})
        codes.append(packed), scales.append(scale), zps.append(zp.to(torch.int32))
        offset += int(packed.size)
        channels += int(scale.numel())
        skip.add(f"{name}.weight")
        skip.add(f"{name}.weight_hat")
    tensors, floats, ints = [], [], []
    f_off = i_off = 0
    for key, t in student.state_dict().items():
        if key in skip:
            continue
        t = t.detach().cpu()
        if t.is_floating_point():
            floats.append(t.float().reshape(-1))
            tensors.append({"name": key, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                            "offset": f_off})
            f_off += t.numel()
        else:
            ints.append(t.to(torch.int64).reshape(-1))
            tensors.append({"name": key, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                            "offset": i_off})
            i_off += t.numel()
    obj = {"format": FORMAT, "version": VERSION, "meta": meta, "layers": layers, "tensors": tensors,
           "codes": torch.from_numpy(np.concatenate(codes) if codes else np.zeros(0, np.uint8)),
           "scales": torch.cat(scales) if scales else torch.zeros(0),
           "zero_points": torch.cat(zps) if zps else torch.zeros(0, dtype=torch.int32),
           "floats": torch.cat(floats) if floats else torch.zeros(0),
           "ints": torch.cat(ints) if ints else torch.zeros(0, dtype=torch.int64)}
    obj["digest"] = _digest(obj)
    return obj


def save_student(path: Path, student: nn.Module, meta: dict) -> dict:
    """Write the student file atomically; returns {"file", "sha256", "bytes", "weight_code_bytes"}."""
    obj = student_payload(student, meta)
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    write_bytes_atomic(Path(path), data)
    return {"file": str(path), "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "weight_code_bytes": int(obj["codes"].numel()), "digest": obj["digest"]}


# --- load -------------------------------------------------------------------------------------------------------

def read_student(path: str | Path) -> dict:
    """The checked content of a student file, or one line saying why it cannot be used."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"student file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, a pickle with code in it, ...
        first = (str(e).splitlines() or [""])[0][:160] or type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "UnpicklingError" in type(e).__name__:
            first = "it holds Python objects other than tensors and plain data (refused: loading it could run code)"
        raise UserError(f"cannot read student file {path}: {type(e).__name__}: {first}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path} is not a zsqbench student file (save one with `zsqbench run ... --save-student`)")
    if obj.get("version") != VERSION:
        raise UserError(f"{path}: student file version {obj.get('version')!r}; this zsqbench reads version {VERSION}")
    keys = ("meta", "layers", "tensors", "codes", "scales", "zero_points", "floats", "ints", "digest")
    missing = [k for k in keys if k not in obj]
    if missing or not all(isinstance(obj[k], torch.Tensor) for k in keys[3:8]):
        raise UserError(f"{path} is a damaged student file (missing or wrong: {', '.join(missing) or 'tensors'})")
    try:
        digest = _digest(obj)
    except Exception as e:
        raise UserError(f"{path} is a damaged student file ({type(e).__name__})") from None
    if digest != obj["digest"]:
        raise UserError(f"{path} was edited or is corrupt: its content digest is {digest[:12]}…, the file says "
                        f"{str(obj['digest'])[:12]}… — save the student again")
    return obj


def state_from(obj: dict) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(state dict of every non-weight entry, {layer name: {"codes", "scale", "zero_point", "bits", "shape"}})."""
    state = {}
    for t in obj["tensors"]:
        n = int(np.prod(t["shape"])) if t["shape"] else 1
        src = obj["floats"] if t["dtype"].startswith(("float", "bfloat")) else obj["ints"]
        state[t["name"]] = src[t["offset"]:t["offset"] + n].reshape(t["shape"]).to(getattr(torch, t["dtype"]))
    layers = {}
    codes = obj["codes"].numpy()
    for layer in obj["layers"]:
        c = unpack(codes[layer["offset"]:layer["offset"] + layer["bytes"]], layer["bits"], layer["count"])
        ch = layer["shape"][0]
        sl = slice(layer["channel_offset"], layer["channel_offset"] + ch)
        layers[layer["name"]] = {"codes": torch.from_numpy(c), "scale": obj["scales"][sl],
                                 "zero_point": obj["zero_points"][sl].to(torch.float32), "bits": layer["bits"],
                                 "shape": tuple(layer["shape"])}
    return state, layers


def freeze(model: nn.Module, layers: dict[str, dict]) -> None:
    """Give each weight-quantized layer its fixed dequantized weight (and the codes, for the ONNX export)."""
    for name, mod in weight_layers(model):
        if name not in layers:
            raise UserError(f"the student file has no weights for layer {name!r} of the rebuilt network")
        L = layers[name]
        if tuple(mod.weight.shape) != L["shape"] or int(mod.wbits) != L["bits"]:
            raise UserError(f"layer {name!r}: the file has a {L['shape']} W{L['bits']} weight, the rebuilt network a "
                            f"{tuple(mod.weight.shape)} W{mod.wbits} one")
        w = dequantize(L["codes"], L["scale"], L["zero_point"], L["bits"], L["shape"])
        mod.__class__ = FROZEN.get(type(mod), type(mod))
        mod.register_buffer("weight_hat", w, persistent=False)
        mod.codes, mod.scale, mod.zero_point = L["codes"].reshape(L["shape"]), L["scale"], L["zero_point"]
        with torch.no_grad():
            mod.weight.copy_(w)
    extra = set(layers) - {n for n, _ in weight_layers(model)}
    if extra:
        raise UserError(f"the student file has weights for {len(extra)} layer(s) the rebuilt network lacks "
                        f"(e.g. {sorted(extra)[0]!r})")


def load_student(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a saved student (architecture, the run's quantizer, integer weights, frozen ranges) in eval mode.
    Returns (student, meta)."""
    from zsqbench.export.factory import build_architecture
    from zsqbench.spine.registry import get_registry
    obj = read_student(path)
    meta = obj["meta"]
    net = build_architecture(meta["architecture"])
    q = meta["quantizer"]
    cls = get_registry().get("quantizers", q["name"])
    student = cls(**q["config"]).quantize(net, meta["wbits"], meta["abits"], **meta.get("quantization", {}))
    state, layers = state_from(obj)
    freeze(student, layers)
    try:
        student.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"{path} does not fit the rebuilt {meta['architecture']['name']}: "
                        f"{str(e).splitlines()[-1].strip()[:200]}") from None
    wanted = {k for k in student.state_dict() if not k.endswith(".weight") or
              k.rsplit(".", 1)[0] not in layers}
    missing = sorted(wanted - set(state))
    if missing:
        raise UserError(f"{path} lacks {len(missing)} entries of the rebuilt network (e.g. {missing[0]!r})")
    for m in student.modules():
        if isinstance(m, ActQuantizer):
            m.calibrating = False
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    return student, meta
