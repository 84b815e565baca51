"""What ``zsqbench run --save-student / --export DIR`` adds to a run: checks before any work, and the student file,
ONNX export and measurements before the record is written (their figures go into it)."""
from __future__ import annotations

from pathlib import Path

from zsqbench.spine.errors import UserError


def student_path(record_path: Path) -> Path:
    from zsqbench.export.student import SUFFIX
    return record_path.with_name(record_path.name.removesuffix(".json") + SUFFIX)


def check_before_run(spec, resolved: dict) -> None:
    """One line before the teacher is used: an own network the method cannot serve, an export directory that is a
    file, a missing onnxruntime, a quantizer whose student cannot be kept as integer codes."""
    if ":" in resolved.model_spec.name:
        from zsqbench.export.factory import check_servable
        check_servable(resolved, spec.teacher_card)
    if spec.save_student or spec.export_dir:
        q_name, q_cls = (resolved.components["quantizer"].name, resolved.components["quantizer"].cls)
        if not getattr(q_cls, "keeps_integer_weights", False):
            raise UserError(f"--save-student/--export: quantizer {q_name!r} does not make the shared fake quantizer's "
                            "integer weights (a quantizer with keeps_integer_weights = True does, e.g. minmax-ema)")
    if spec.export_dir:
        from zsqbench.export.measure import _ort
        from zsqbench.export.onnx import check_out_dir
        check_out_dir(spec.export_dir)
        _ort()


def keep_student(spec, resolved: dict, student, teacher, record: dict, teacher_info: dict, record_file: Path) -> dict:
    """Save the student beside the record (and export it); returns the record's new fields."""
    from zsqbench.export import export_dir, record_figures, student_meta
    from zsqbench.export.measure import state_dict_bytes
    from zsqbench.export.student import save_student
    path = student_path(Path(record_file))
    meta = student_meta(spec, resolved, record, teacher_info)
    saved = save_student(path, student.cpu(), meta)
    fields = {"student": {"file": path.name, "sha256": saved["sha256"], "bytes": saved["bytes"],
                          "weight_code_bytes": saved["weight_code_bytes"],
                          "fp_state_dict_bytes": state_dict_bytes(teacher)}}
    if spec.export_dir:
        try:
            fields["export"] = record_figures(export_dir(path, spec.export_dir, spec.data_root))
        except BaseException:
            path.unlink(missing_ok=True)  # no record will name it: leave nothing half-done
            raise
    return fields

