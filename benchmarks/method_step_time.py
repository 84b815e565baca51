"""Full training-step time of generator methods (generator step + student step), interleaved in one run.

    .venv/bin/python benchmarks/method_step_time.py [--methods gdfq adadfq bag] [--bits 3] [--batch 16] [--device cuda]

Each method is built exactly as `zsqbench run` builds it on the `cpu` protocol (its own synthesizer, distiller
and settings), with the embedded ResNet-20 teacher; the batch size is the same for all (the BAG paper's Table 3
compares at its batch 16). Steps of the methods are interleaved so that a machine whose speed drifts affects them
alike; the median of each is reported, with the ratios to the first method. Calibration runs first, as in the loop.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from zsqbench.spine.interfaces import RunContext
from zsqbench.spine.loop import _optimizer, seed_everything
from zsqbench.spine.plan import RunSpec, resolve
from zsqbench.spine.registry import dataset_info
from zsqbench.teacher.zoo import load_teacher


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # CUDA calls return before the work is done: time the work, not the launch


def build(method: str, bits: int, batch: int, warmup: int, device: torch.device):
    plan = resolve(RunSpec(method=method, model="resnet20", wbits=bits, abits=bits, protocol="cpu",
                           overrides=[f"train.batch_size={batch}"]))
    components = plan.build_components()
    synth, distiller, quantizer = (components[k] for k in ("synthesizer", "distiller", "quantizer"))
    spec = plan.model_spec
    teacher, _ = load_teacher(spec)
    teacher = teacher.to(device)
    seed_everything(0)
    student = quantizer.quantize(teacher, bits, bits).to(device).eval()
    ctx = RunContext(teacher=teacher, student=student, model=spec, dataset=dataset_info(spec.dataset), wbits=bits,
                     abits=bits, quantizer=quantizer, device=device, seed=0, total_steps=1000,
                     warmup_steps=warmup)
    synth.prepare(ctx)
    distiller.setup(ctx)
    quantizer.set_calibrating(student, True)
    for _ in range(warmup):
        images = synth.calibration_batch(ctx, batch).images
        with torch.no_grad():
            student(images)
    quantizer.set_calibrating(student, False)
    opt = _optimizer(plan.train, [p for p in student.parameters() if p.requires_grad])

    def step():
        b = synth.next_batch(ctx, batch)
        loss, _ = distiller.loss(ctx, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["gdfq", "adadfq", "bag"])
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    device = torch.device(args.device)
    steps = {m: build(m, args.bits, args.batch, args.warmup, device) for m in args.methods}
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    for m in args.methods:  # untimed first steps
        for _ in range(3):
            steps[m]()
    for _ in range(args.repeat):
        for m in args.methods:
            _sync()
            t0 = time.perf_counter()
            steps[m]()
            _sync()
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(ts) for m, ts in times.items()}
    first = args.methods[0]
    print(json.dumps({
        "model": "resnet20@fmnist", "bits": args.bits, "batch": args.batch, "repeat": args.repeat,
        "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "median_step_ms": {m: round(v * 1e3, 2) for m, v in med.items()},
        f"ratio_to_{first}": {m: round(v / med[first], 3) for m, v in med.items()},
        **({"ratio_bag_over_adadfq": round(med["bag"] / med["adadfq"], 3)} if {"bag", "adadfq"} <= set(med) else {}),
    }, indent=2))


if __name__ == "__main__":
    main()
