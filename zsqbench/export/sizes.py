"""Model sizes without training: the FP teacher's state dict and the packed integer student at a bit-width,
computed by the code that saves students (:func:`zsqbench.export.student.student_payload`) applied to the untrained
architecture — the sizes depend on the layers' shapes and bit-widths only, never on the weights' values.

* ``fp_state_dict_bytes``: ``torch.save(teacher.state_dict())``, as the record's ``student.fp_state_dict_bytes``.
* ``weight_code_bytes``: the packed integer weight codes, as the record's ``student.weight_code_bytes``.
* ``bytes``: the student file as :func:`~zsqbench.export.student.save_student` writes it, less the run's metadata
  (``meta``: teacher card, provenance, record hash — about 1 KiB, it varies by run): the codes, per-channel scales
  and zero points (4 B each), the other entries (BN, biases, activation ranges) and the file's index of layers and
  tensors with ``torch.save``'s framing (``index_bytes``). Both sizes are ``torch.save`` files, so they compare.

:func:`zsqbench.frontends.sizes.leaderboard_sizes` gives a leaderboard's ``sizes`` block: per table (model, dataset, bits), the FP size and
each group of methods whose students have the same size (every method quantizing with the same quantizer and
protocol convention quantizes the same layers, so a table usually has one packed group and the FP ``fp`` row).
"""
from __future__ import annotations

import json
from functools import lru_cache

SOURCE = "computed"
HOW = ("computed from the untrained architecture by zsqbench.export.sizes (the student file's own packing code at "
       "the table's bits, the protocol's quantizer settings): sizes depend on layer shapes and bits only, not on "
       "training")


def student_sizes(net, quantizer, wbits: int, abits: int, quantization: dict | None = None) -> dict:
    """Sizes of ``net`` (FP) and of its student quantized by ``quantizer`` at WxAy, in bytes. ``integer`` is False
    when the quantizer leaves no weight-quantized layer (an FP "student": its size is the FP state dict's)."""
    from zsqbench.spine.errors import UserError
    from zsqbench.export.measure import state_dict_bytes
    from zsqbench.export.student import student_payload, weight_layers
    fp = state_dict_bytes(net)
    student = quantizer.quantize(net, wbits, abits, **(quantization or {}))
    layers = weight_layers(student)
    if not layers:
        return {"fp_state_dict_bytes": fp, "integer": False, "bytes": state_dict_bytes(student)}
    if not getattr(type(quantizer), "keeps_integer_weights", False):
        raise UserError(f"quantizer {type(quantizer).__name__} does not keep integer weights: its student's packed "
                        "size is not defined")
    import io

    import torch
    obj = student_payload(student, {})
    buf = io.BytesIO()
    torch.save(obj, buf)  # the student file as save_student writes it, with an empty run metadata
    total = len(buf.getvalue())
    codes = int(obj["codes"].numel())
    scale_zp = 4 * int(obj["scales"].numel()) + 4 * int(obj["zero_points"].numel())
    other = 4 * int(obj["floats"].numel()) + 8 * int(obj["ints"].numel())
    return {"fp_state_dict_bytes": fp, "integer": True, "bytes": total, "weight_code_bytes": codes,
            "scale_zero_point_bytes": scale_zp, "other_bytes": other,
            "index_bytes": total - codes - scale_zp - other, "layers": len(layers),
            "fraction_of_fp": round(total / fp, 4)}


@lru_cache(maxsize=64)
def _sizes_cached(model_key: str, wbits: int, abits: int, quantizer: str, config: str, quantization: str) -> str:
    import torch
    from zsqbench.spine.registry import get_registry
    reg = get_registry()
    torch.manual_seed(0)  # the values do not matter; a fixed seed keeps the build quiet and repeatable
    net = reg.get("models", model_key).build().eval()
    cls = reg.get("quantizers", quantizer)
    q = cls(**json.loads(config))
    return json.dumps(student_sizes(net, q, wbits, abits, json.loads(quantization)))


def plan_sizes(plan) -> dict:
    """The sizes of a resolved run plan's teacher and student (cached per architecture, bits and quantizer)."""
    c = plan.components["quantizer"]
    return json.loads(_sizes_cached(plan.model_key, plan.spec.wbits, plan.spec.abits, c.name,
                                    json.dumps(dict(c.config), sort_keys=True),
                                    json.dumps(plan.quantization, sort_keys=True)))


# --- what show and the page print ---------------------------------------------------------------------------------

def human(n: int | float | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1024:.1f} KiB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MiB"


def table_sizes(lb: dict, table: str) -> dict | None:
    return next((t for t in (lb.get("sizes") or {}).get("tables", []) if t["table"] == table), None)


def row_size(entry: dict | None, method: str) -> tuple[int | None, str]:
    """(bytes, short text) of a row's student in its table's sizes entry: packed integer or FP."""
    if entry is None:
        return None, "—"
    for g in entry["students"]:
        if method in g["methods"]:
            if g["integer"]:
                return g["bytes"], f"{human(g['bytes'])} (1/{1 / g['fraction_of_fp']:.1f})"
            return g["bytes"], f"{human(g['bytes'])} (FP)"
    return None, "—"


def size_line(entry: dict, bits: str) -> str:
    """One line: the table's FP size and its packed student's, and where they come from (exact bytes: --json)."""
    parts = [f"FP teacher {human(entry['fp_state_dict_bytes'])} (state dict)"]
    for g in entry["students"]:
        if not g["integer"]:
            continue
        parts.append(f"packed {bits} student {human(g['bytes'])} = 1/{1 / g['fraction_of_fp']:.1f} of FP (weight "
                     f"codes {human(g['weight_code_bytes'])} of {g['layers']} layers + scales and zero points "
                     f"{human(g['scale_zero_point_bytes'])} + BN, biases, activation ranges "
                     f"{human(g['other_bytes'])} + the file's index {human(g['index_bytes'])}; a saved file adds the run's "
                     "metadata, about 1 KiB)"
                     + (f" for {', '.join(g['methods'])}" if sum(x["integer"] for x in entry["students"]) > 1
                        else ""))
    fp_rows = [m for g in entry["students"] if not g["integer"] for m in g["methods"]]
    if fp_rows:
        parts.append(f"row{'s' * (len(fp_rows) > 1)} {', '.join(fp_rows)}: the FP network")
    if entry.get("unsized"):
        parts.append(f"not sized: {', '.join(entry['unsized'])}")
    return (f"size · {entry['table']}: " + "; ".join(parts) + " — computed from the architecture "
            "(zsqbench.export.sizes), not measured")


def measured_runs(row: dict) -> list[dict]:
    """The runs of a row whose records carried a saved student (and maybe an export): their ``saved`` figures."""
    return [r["saved"] for r in row["runs"] if r.get("saved")]


def mean_of(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def measured_summary(row: dict) -> dict | None:
    """Means over a row's runs that saved (and exported) their student: what the records measured."""
    saved = measured_runs(row)
    if not saved:
        return None
    lat = [s.get("latency_ms") or {} for s in saved]
    return {"runs": len(saved),
            "student_file_bytes": mean_of(s.get("student_file_bytes") for s in saved),
            "onnx_runs": sum(s.get("onnx_top1") is not None for s in saved),
            "onnx_top1": mean_of(s.get("onnx_top1") for s in saved),
            "fake_quant_top1": mean_of(s.get("fake_quant_top1") for s in saved if s.get("onnx_top1") is not None),
            "latency_fp_b1": mean_of((x.get("fp") or {}).get("batch1") for x in lat),
            "latency_q_b1": mean_of((x.get("quantized") or {}).get("batch1") for x in lat)}


def measured_line(row: dict) -> str | None:
    m = measured_summary(row)
    if m is None:
        return None
    parts = [f"saved student file {human(m['student_file_bytes'])} (mean of {m['runs']} run(s))"]
    if m["onnx_top1"] is not None:
        parts.append(f"onnxruntime top-1 {m['onnx_top1']:.2f} % vs fake-quant {m['fake_quant_top1']:.2f} % "
                     f"({m['onnx_runs']} export(s))")
    if m["latency_q_b1"] is not None:
        parts.append(f"latency batch 1, 1 thread: quantized {m['latency_q_b1']:.3f} ms"
                     + (f", FP {m['latency_fp_b1']:.3f} ms" if m["latency_fp_b1"] is not None else "")
                     + " per image")
    return (f"measured · {row['method']} {row['model']}@{row['dataset']} W{row['wbits']}A{row['abits']}: "
            + "; ".join(parts) + " (from the runs' records: --save-student/--export)")


def saved_figures(rec: dict) -> dict | None:
    """A run record's measured student figures as a leaderboard run carries them (``runs[].saved``)."""
    s = rec.get("student")
    if not s:
        return None
    out = {"student_file_bytes": s["bytes"]}
    for k in ("weight_code_bytes", "fp_state_dict_bytes"):
        if s.get(k) is not None:
            out[k] = s[k]
    m = (rec.get("export") or {}).get("measured") or {}
    if m.get("student_onnx_top1") is not None:
        out["onnx_top1"] = m["student_onnx_top1"]
        out["fake_quant_top1"] = rec["export"].get("fake_quant_top1", rec.get("final_top1"))
    lat = m.get("latency") or {}
    latency = {k: {b: lat[k][b] for b in ("batch1", "batch32") if b in lat[k]} for k in ("fp", "quantized")
               if isinstance(lat.get(k), dict)}
    if latency:
        out["latency_ms"] = latency
    return out
