"""``zsqbench evaluate STUDENT`` and ``zsqbench export STUDENT -o DIR`` (imports stay inside the commands)."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape


def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 2 ** 20 else f"{n / 2 ** 20:.2f} MiB"


def summary_rows(rec: dict, path) -> list[tuple[str, str]]:
    """Rows for ``run``'s summary table: the student file and the export's figures."""
    st = rec["student"]
    rows = [("student", escape(f"{Path(path).parent / st['file']}  ({_fmt_bytes(st['bytes'])}; FP state dict "
                               f"{_fmt_bytes(st.get('fp_state_dict_bytes', 0))})"))]
    ex = rec.get("export")
    if ex and ex.get("measured"):
        m = ex["measured"]
        rows.append(("onnx student", f"{m['student_onnx_top1']:.2f} % in onnxruntime vs {ex['fake_quant_top1']:.2f} % "
                                     f"fake-quant ({m['images']} images)"))
        rows.append(("onnx export", escape(str(ex.get("dir")))))
    return rows


def register(cli: click.Group) -> None:
    from rich.console import Console
    console = Console()

    @cli.command("evaluate")
    @click.argument("student", type=click.Path())
    @click.option("--data-root", default=None, type=click.Path(), help="Where the evaluation data lives.")
    @click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
    def evaluate(student, data_root, device):
        """Reload a saved student (run --save-student) and score it on the images its run scored it on."""
        from zsqbench.export import evaluate_student
        r = evaluate_student(student, data_root, device)
        meta = r["meta"]
        same = "reproduces the record exactly" if r["reproduced"] else "DIFFERS from the record"
        console.print(escape(f"{meta['architecture']['key']} W{meta['wbits']}A{meta['abits']} "
                             f"({meta['record']['method']}, seed {meta['record']['seed']}): top-1 {r['top1']:.4f} % on "
                             f"{r['images']} {r['split']} images; the record says {r['record_top1']} % — {same}"),
                      highlight=False, soft_wrap=True)
        if not r["reproduced"]:
            sys.exit(1)

    @cli.command("export")
    @click.argument("student", type=click.Path())
    @click.option("--out", "-o", required=True, type=click.Path(), help="Directory for student.onnx, teacher.onnx, "
                  "export.json and README.md (created if missing).")
    @click.option("--data-root", default=None, type=click.Path(), help="Where the evaluation data lives.")
    @click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
    def export(student, out, data_root, no_latency):
        """Export a saved student to ONNX (QuantizeLinear/DequantizeLinear) beside its FP teacher and measure both
        in onnxruntime: top-1 on the run's images, sizes, latency per image (one thread)."""
        from zsqbench.export import export_dir
        from zsqbench.export.onnx import check_out_dir
        check_out_dir(out)
        fig = export_dir(student, out, data_root, latency=not no_latency)
        m, s = fig["measured"], fig["sizes"]
        console.print(escape(f"student.onnx: {m['student_onnx_top1']:.2f} % in onnxruntime vs "
                             f"{fig['fake_quant_top1']} % fake-quant; teacher.onnx {m.get('teacher_onnx_top1')} % "
                             f"({m['images']} {m['split']} images)"), highlight=False, soft_wrap=True)
        console.print(escape(f"sizes: FP state dict {_fmt_bytes(s['fp_state_dict_bytes'])}, student file "
                             f"{_fmt_bytes(s['student_file_bytes'])} ({100 * s['student_file_fraction_of_fp']:.1f} %), "
                             f"student.onnx {_fmt_bytes(s['student_onnx_bytes'])}"), highlight=False, soft_wrap=True)
        if m.get("latency"):
            lat = m["latency"]
            console.print(escape(f"latency ms/image (1 thread): FP {lat['fp']['batch1']} (batch 1) "
                                 f"{lat['fp']['batch32']} (batch 32); quantized {lat['quantized']['batch1']} / "
                                 f"{lat['quantized']['batch32']}"), highlight=False, soft_wrap=True)
        console.print(escape(f"onnxruntime: {m['student_graph']['verdict']}"), highlight=False, soft_wrap=True)
        console.print(escape(f"written: {fig['dir']}/{{student.onnx,teacher.onnx,export.json,README.md}}"),
                      highlight=False, soft_wrap=True)
