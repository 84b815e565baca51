"""onnxruntime (CPU) on the evaluation images: top-1 of the exported graphs, latency per image, what the runtime
made of the QDQ graph."""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np
import torch

from zsqbench.spine.errors import UserError

# Kernels that compute in integers; anything else in an optimised QDQ graph runs in float.
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd",
               "QLinearGlobalAveragePool", "QLinearAveragePool", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "MatMulNBits")


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install 'zsqbench[export]'") from None
    return onnxruntime


def session(data: bytes, threads: int = 1, optimized_to: str | None = None, fold: bool = False):
    """An onnxruntime CPU session. ``fold``: ``session.disable_quant_qdq`` — onnxruntime then treats Q/DQ as plain
    ops, constant-folds the weights' DequantizeLinear and fuses BN into the float Conv (activations keep Q/DQ)."""
    ort = _ort()
    so = ort.SessionOptions()
    if fold:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if optimized_to:
        so.optimized_model_filepath = optimized_to
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def pixel_batches(meta: dict, data_root: str | None):
    """(pixels in [0, 1] after the card's fit, labels) batches of the student's evaluation images: the same images,
    order and count the run scored, without the normalisation (the graphs do it)."""
    from zsqbench.evaluation.data import load_eval_set
    ev = meta["evaluation"]
    card = meta["card"]
    c = len(card["mean"])
    raw = {"mean": [0.0] * c, "std": [1.0] * c, "fit": card.get("fit")}
    data = load_eval_set(meta["dataset"], ev["split"], data_root, raw)
    bs, limit = int(ev["batch_size"]), ev.get("limit")
    if hasattr(data, "batches"):
        return lambda: data.batches(bs, limit)
    x, y = data
    if limit:
        x, y = x[:limit], y[:limit]
    return lambda: ((x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs))


def ort_top1(sess, batches, reference=None) -> tuple[float, int, dict]:
    """Top-1 (%) of ``sess`` on ``batches``, the image count and, given ``reference`` (a function from pixels to
    torch logits: the fake-quant student), how many predictions agree with it and the largest logit difference."""
    name = sess.get_inputs()[0].name
    correct = n = agree = 0
    max_diff = 0.0
    for x, y in batches():
        logits = sess.run(None, {name: x.numpy().astype(np.float32, copy=False)})[0]
        correct += int((logits.argmax(1) == y.numpy()).sum())
        n += len(y)
        if reference is not None:
            ref = reference(x).numpy()
            agree += int((ref.argmax(1) == logits.argmax(1)).sum())
            max_diff = max(max_diff, float(np.abs(ref - logits).max()))
    cmp = {"same_prediction": agree, "max_abs_logit_diff": round(max_diff, 6)} if reference is not None else {}
    return 100.0 * correct / max(n, 1), n, cmp


def latency_ms(sess, shape: tuple[int, ...], batch: int, budget_s: float = 1.0, min_runs: int = 3) -> float:
    """Median wall time per image (ms) of ``sess`` at ``batch``, after two warm-up runs."""
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).random((batch, *shape), dtype=np.float32)
    for _ in range(2):
        sess.run(None, {name: x})
    times, t_end = [], time.perf_counter() + budget_s
    while len(times) < min_runs or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return 1000.0 * statistics.median(times) / batch


def optimized_ops(data: bytes, fold: bool = False) -> dict[str, int]:
    """Op counts of the graph onnxruntime actually runs (its optimised model, CPU, all optimisations)."""
    import onnx
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "opt.onnx")
        session(data, optimized_to=path, fold=fold)
        m = onnx.load(path)
    ops: dict[str, int] = {}
    for n in m.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(sorted(ops.items()))


def verdict(ops: dict[str, int]) -> str:
    integer = {k: v for k, v in ops.items() if k in INTEGER_OPS}
    float_ops = {k: v for k, v in ops.items() if k in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm",
                                                        "Conv_nchwc", "NchwcConv")}
    if integer and not float_ops:
        return "fused integer kernels: " + ", ".join(f"{v} {k}" for k, v in integer.items())
    if integer:
        return ("mixed: integer kernels " + ", ".join(f"{v} {k}" for k, v in integer.items()) + "; float "
                + ", ".join(f"{v} {k}" for k, v in float_ops.items()))
    return ("float fallback: DequantizeLinear feeds float " + ", ".join(f"{v} {k}" for k, v in float_ops.items())
            + f"; {ops.get('QuantizeLinear', 0)} QuantizeLinear/DequantizeLinear pairs kept as rounding steps")


def load_now() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"load average {one:.2f} (1 min) / {five:.2f} (5 min) on {os.cpu_count()} cpus"
    except OSError:
        return "load average unknown"


def measure(student_onnx: bytes, teacher_onnx: bytes | None, meta: dict, data_root: str | None,
            latency: bool = True, student=None) -> dict:
    """Top-1 of both graphs on the evaluation images (the student's also with onnxruntime's folding, see
    :func:`session`), agreement with the fake-quant ``student`` (torch) image by image, latency per image at batch
    1 and 32 (one thread), and the optimised graph's kernels."""
    ort = _ort()
    batches = pixel_batches(meta, data_root)
    reference = None
    if student is not None:
        mean = torch.tensor(meta["card"]["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(meta["card"]["std"]).view(1, -1, 1, 1)

        def reference(x):
            with torch.no_grad():
                return student((x - mean) / std)
    stu, folded = session(student_onnx), session(student_onnx, fold=True)
    s_top1, n, cmp = ort_top1(stu, batches, reference)
    f_top1, _, f_cmp = ort_top1(folded, batches, reference)
    out = {"images": n, "split": meta["evaluation"]["split"], "onnxruntime": ort.__version__,
           "student_onnx_top1": round(s_top1, 4), "vs_fake_quant": cmp,
           "student_onnx_folded_top1": round(f_top1, 4), "folded_vs_fake_quant": f_cmp}
    tea = session(teacher_onnx) if teacher_onnx else None
    if tea is not None:
        out["teacher_onnx_top1"] = round(ort_top1(tea, batches)[0], 4)
    ops = optimized_ops(student_onnx)
    out["student_graph"] = {"optimized_ops": ops, "verdict": verdict(ops),
                            "folded_ops": optimized_ops(student_onnx, fold=True)}
    if teacher_onnx:
        out["teacher_graph"] = {"optimized_ops": optimized_ops(teacher_onnx)}
    if latency:
        shape = tuple(meta["input_shape"])
        lat = {"threads": 1, "unit": "ms per image (median)", "machine": _machine(), "load": load_now()}
        for label, sess in (("fp", tea), ("quantized", stu), ("quantized_folded", folded)):
            if sess is not None:
                lat[label] = {f"batch{b}": round(latency_ms(sess, shape, b), 4) for b in (1, 32)}
        lat["load_after"] = load_now()
        out["latency"] = lat
    return out


def _machine() -> str:
    from zsqbench.record.io import _cpu_name
    return _cpu_name()


def state_dict_bytes(net: torch.nn.Module) -> int:
    import io
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return len(buf.getvalue())

