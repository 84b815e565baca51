"""Keep what you quantized: save a run's student as integers, reload it, export it to ONNX and measure it.

* :mod:`zsqbench.export.student` — the student file (packed integer weight codes, per-channel scales and zero points,
  frozen activation ranges, architecture, teacher card, the record's hash); reload bit-exact.
* :mod:`zsqbench.export.onnx` — ``student.onnx`` (QuantizeLinear/DequantizeLinear) and ``teacher.onnx`` (FP).
* :mod:`zsqbench.export.measure` — onnxruntime top-1, sizes, latency, what the runtime did with the graph.
* :mod:`zsqbench.export.factory` — ``--model package.module:factory`` and the servability checks.

``onnx``/``onnxruntime`` are the optional extra ``zsqbench[export]``; saving and evaluating a student need neither.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from zsqbench.spine.errors import UserError

README = """# {name} W{wbits}A{abits} — exported by zsqbench

| file | what |
|---|---|
| `student.onnx` | the quantized student: integer weight codes (DequantizeLinear, per output channel) and QuantizeLinear/DequantizeLinear after every quantized activation, at W{wbits}A{abits} (n-bit ranges in 8-bit containers, a Clip holding the n-bit range), opset {opset} |
| `teacher.onnx` | the FP teacher it was distilled from, for comparison |
| `export.json` | the measured figures below, as JSON |

{quant_note}Input: `pixels`, float32 N×{shape_c}×{shape_h}×{shape_w} in [0, 1] after the teacher card's fit ({fit}); both graphs
normalise inside (mean {mean}, std {std}). Output: `logits`, N×{classes}.

Made by `zsqbench export` from the student file `{student}` (sha256 `{student_sha}`), saved by a
`{method}` run on `{model}` ({dataset}) seed {seed}, protocol {protocol}; record hash `{record_hash}`.

## Measured ({images} {split} images, onnxruntime {ort})

| | top-1 % |
|---|---|
| fake-quant student (the record) | {fq} |
| onnxruntime `student.onnx` | {ort_top1} |
| onnxruntime `student.onnx`, `session.disable_quant_qdq=1` (weights and BN folded to float) | {folded_top1} |
| onnxruntime `teacher.onnx` | {teacher_top1} |

Image by image, `student.onnx` predicts the fake-quant student's class on {agree} images (largest logit
difference {max_diff}); with folding on {folded_agree}.

Sizes: FP state dict {fp_bytes} B; student file {student_bytes} B (packed integer weights {code_bytes} B);
`student.onnx` {student_onnx} B; `teacher.onnx` {teacher_onnx} B.

{latency}

What onnxruntime did with the QDQ graph: {verdict}.
"""


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def student_meta(spec, resolved: dict, record: dict, teacher_info: dict) -> dict:
    """What a student file says about itself, from the run that made it."""
    from zsqbench.export.factory import is_factory
    model_spec = resolved.model_spec
    evalc = resolved.config["eval"]
    q_name = resolved.components["quantizer"].name
    return {
        "architecture": {"name": model_spec.name, "key": model_spec.key,
                         "factory": model_spec.name if is_factory(model_spec.name) else None},
        "dataset": model_spec.dataset, "num_classes": resolved.dataset.num_classes,
        "input_shape": list(resolved.dataset.image_shape),
        "wbits": spec.wbits, "abits": spec.abits,
        "quantizer": {"name": q_name, "config": dict(resolved.config["quantizer"])},
        "quantization": dict(resolved.config.get("quantization") or {}),  # the protocol's first/last-layer bits
        "card": {k: resolved.card[k] for k in ("mean", "std", "fit")},
        "teacher": {k: v for k, v in teacher_info.items() if k in ("source", "path", "sha256", "name")},
        "evaluation": {"split": evalc.get("split", "test"), "limit": evalc.get("limit"),
                       "batch_size": evalc.get("batch_size", 100)},
        "final_top1": record["final_top1"], "fp_top1": record["fp_top1"],
        "record": {"config_hash": record["config_hash"], "method": spec.method, "seed": spec.seed,
                   "protocol": record["protocol"]["name"], "created": record["created"]},
    }


def evaluate_student(path: str | Path, data_root: str | None = None, device: str = "cpu") -> dict:
    """Reload a student and score it on the data its run scored it on; returns the figures."""
    import torch
    from zsqbench.evaluation.evaluate import Evaluator
    from zsqbench.export.student import load_student
    from zsqbench.spine.numerics import resolve_device
    student, meta = load_student(path)
    dev = resolve_device(device)
    ev = meta["evaluation"]
    evaluator = Evaluator(meta["dataset"], data_root, dev, ev.get("limit"), ev["batch_size"], ev["split"],
                          meta["card"])
    with torch.no_grad():
        top1 = round(evaluator.top1(student.to(dev)), 4)
    return {"top1": top1, "record_top1": meta["final_top1"], "images": evaluator.n, "split": ev["split"],
            "reproduced": top1 == meta["final_top1"], "meta": meta}


def load_teacher_of(meta: dict):
    """The FP teacher a student was distilled from, checked against the sha256 the student file names."""
    from zsqbench.export.factory import call_factory
    from zsqbench.spine.registry import get_registry
    from zsqbench.teacher.zoo import ModelSpec, load_teacher
    arch, t = meta["architecture"], meta["teacher"]
    if arch.get("factory"):
        spec = ModelSpec(arch["name"], meta["dataset"], lambda: call_factory(arch["factory"]), block_types=())
    else:
        spec = get_registry().get("models", arch["key"])
    weights = t.get("path") if t.get("source") in ("user",) else None
    if weights and not Path(weights).is_file():
        raise UserError(f"the teacher's weights {weights} (named by the student file) are gone: cannot export "
                        "teacher.onnx")
    teacher, info = load_teacher(spec, weights)
    if t.get("sha256") and info.get("sha256") != t["sha256"]:
        raise UserError(f"the teacher's weights changed since the run (sha256 {str(info.get('sha256'))[:12]}…, the "
                        f"student file says {t['sha256'][:12]}…)")
    return teacher


def export_dir(student_path: str | Path, out: str | Path, data_root: str | None = None, measure: bool = True,
               latency: bool = True) -> dict:
    """Write ``out/student.onnx``, ``out/teacher.onnx``, ``out/export.json`` and ``out/README.md``; returns the
    figures. Everything is made in a temporary directory beside ``out`` and moved in only when complete."""
    import json

    from zsqbench.export import measure as M
    from zsqbench.export.onnx import OPSET, check_out_dir, export_student, export_teacher, onnx_summary
    from zsqbench.export.student import load_student
    out = check_out_dir(out)
    M._ort()
    student_path = Path(student_path)
    student, meta = load_student(student_path)
    teacher = load_teacher_of(meta)
    s_bytes, t_bytes = export_student(student, meta), export_teacher(teacher, meta)
    student_file = student_path.read_bytes()
    figures = {
        "files": {"student.onnx": {"bytes": len(s_bytes), "sha256": _sha(s_bytes)},
                  "teacher.onnx": {"bytes": len(t_bytes), "sha256": _sha(t_bytes)}},
        "student_file": {"path": str(student_path), "sha256": _sha(student_file), "bytes": len(student_file)},
        "sizes": {"fp_state_dict_bytes": M.state_dict_bytes(teacher), "student_file_bytes": len(student_file),
                  "weight_code_bytes": int(sum(layer["bytes"] for layer in _layers(student_path))),
                  "student_onnx_bytes": len(s_bytes), "teacher_onnx_bytes": len(t_bytes)},
        "student_onnx": onnx_summary(s_bytes),
        "fake_quant_top1": meta["final_top1"],
    }
    figures["sizes"]["student_file_fraction_of_fp"] = round(
        figures["sizes"]["student_file_bytes"] / figures["sizes"]["fp_state_dict_bytes"], 4)
    if measure:
        figures["measured"] = M.measure(s_bytes, t_bytes, meta, data_root, latency=latency, student=student)
        if meta["final_top1"] is not None:
            figures["measured"]["gap_points"] = round(figures["measured"]["student_onnx_top1"] - meta["final_top1"], 4)
    readme = _readme(meta, figures, student_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "student.onnx").write_bytes(s_bytes)
        (tmp / "teacher.onnx").write_bytes(t_bytes)
        (tmp / "export.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(readme)
        out.mkdir(exist_ok=True)
        for f in ("student.onnx", "teacher.onnx", "export.json", "README.md"):
            os.replace(tmp / f, out / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["dir"] = str(out)
    return figures


def _layers(path: Path) -> list[dict]:
    from zsqbench.export.student import read_student
    return read_student(path)["layers"]


def _readme(meta: dict, fig: dict, student_path: Path) -> str:
    from zsqbench.export.onnx import OPSET
    m = fig.get("measured", {})
    lat = m.get("latency")
    if lat:
        rows = "\n".join(f"| {label} | {lat[key]['batch1']} | {lat[key]['batch32']} |" for key, label in (
            ("fp", "`teacher.onnx` (FP)"), ("quantized", "`student.onnx`"),
            ("quantized_folded", "`student.onnx`, folded")) if key in lat)
        latency = (f"Latency, {lat['unit']}, onnxruntime CPU, {lat['threads']} thread, on {lat['machine']} "
                   f"({lat['load']} before, {lat['load_after']} after: other processes shared the machine, so "
                   f"these are indicative):\n\n| graph | batch 1 | batch 32 |\n|---|---|---|\n{rows}")
    else:
        latency = "Latency: not measured."
    rec = meta["record"]
    c, h, w = meta["input_shape"]
    return README.format(
        name=meta["architecture"]["name"], wbits=meta["wbits"], abits=meta["abits"], opset=OPSET, shape_c=c,
        quant_note="".join(f"Protocol convention: {k} = {v}.\n\n" for k, v in meta.get("quantization", {}).items()),
        shape_h=h, shape_w=w, fit=meta["card"].get("fit") or "none", mean=meta["card"]["mean"],
        std=meta["card"]["std"], classes=meta["num_classes"], student=student_path.name,
        student_sha=fig["student_file"]["sha256"], method=rec["method"], model=meta["architecture"]["key"],
        dataset=meta["dataset"], seed=rec["seed"], protocol=rec["protocol"], record_hash=rec["config_hash"],
        images=m.get("images", "—"), split=m.get("split", meta["evaluation"]["split"]),
        ort=m.get("onnxruntime", "—"), fq=meta["final_top1"], ort_top1=m.get("student_onnx_top1", "not measured"),
        teacher_top1=m.get("teacher_onnx_top1", "not measured"),
        folded_top1=m.get("student_onnx_folded_top1", "not measured"),
        agree=m.get("vs_fake_quant", {}).get("same_prediction", "—"),
        max_diff=m.get("vs_fake_quant", {}).get("max_abs_logit_diff", "—"),
        folded_agree=m.get("folded_vs_fake_quant", {}).get("same_prediction", "—"),
        fp_bytes=fig["sizes"]["fp_state_dict_bytes"],
        student_bytes=fig["sizes"]["student_file_bytes"], code_bytes=fig["sizes"]["weight_code_bytes"],
        student_onnx=fig["sizes"]["student_onnx_bytes"], teacher_onnx=fig["sizes"]["teacher_onnx_bytes"],
        latency=latency, verdict=m.get("student_graph", {}).get("verdict", "not measured"))


def record_figures(fig: dict) -> dict:
    """The export's figures as they go into the run record (``record["export"]``)."""
    keep = {k: fig[k] for k in ("sizes", "files", "fake_quant_top1") if k in fig}
    if "measured" in fig:
        keep["measured"] = fig["measured"]
    keep["dir"] = fig.get("dir")
    return keep
