"""Phase timings of the shared loop on this machine, as ratios measured in one run.

    .venv/bin/python benchmarks/step_time.py [--model resnet20] [--batch 32] [--repeat 20] [--device cuda]

Measures, on random-init networks of the embedded architectures (timing does not depend on the weights):
FP training step, fake-quantized (W3A3) student step, one GDFQ generator step, evaluation throughput of the
quantized student, and prints the ratios. Long measurements belong here, not in the timed tests.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from zsqbench.quantizer.fakequant import quantize_model, set_calibrating
from zsqbench.synthesizer.bns import BNStatHooks
from zsqbench.synthesizer.generator import Generator
from zsqbench.teacher.zoo import builtin_models


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # CUDA calls return before the work is done: time the work, not the launch


def timeit(fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20", choices=["resnet20", "mobilenetv1"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    spec = next(s for s in builtin_models() if s.name == args.model and s.dataset == "fmnist")
    teacher = spec.build().eval().to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    B = args.batch
    x = torch.randn(B, 1, 32, 32, device=device)
    y = torch.randint(0, 10, (B,), device=device)

    fp = spec.build().eval().to(device)
    opt_fp = torch.optim.SGD(fp.parameters(), lr=1e-3, momentum=0.9)
    student = quantize_model(teacher, 3, 3).eval()
    set_calibrating(student, True)
    student(x)
    set_calibrating(student, False)
    opt_q = torch.optim.SGD(student.parameters(), lr=1e-3, momentum=0.9)

    def step(net, opt):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    gen = Generator(10, (1, 32, 32)).train().to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.5, 0.999))
    bns = BNStatHooks(teacher)

    def gen_step():
        images = gen(torch.randn(B, 100, device=device), y)
        with bns.recording():
            logits = teacher(images)
        loss = F.cross_entropy(logits, y) + 0.1 * bns.loss()
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()

    xe = torch.randn(500, 1, 32, 32, device=device)

    @torch.no_grad()
    def evaluate():
        student(xe)

    t_fp = timeit(lambda: step(fp, opt_fp), args.repeat)
    t_q = timeit(lambda: step(student, opt_q), args.repeat)
    t_g = timeit(gen_step, args.repeat)
    t_e = timeit(evaluate, max(3, args.repeat // 4))
    out = {
        "model": spec.key, "batch": B, "device": str(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "fp_step_ms": round(t_fp * 1e3, 2), "quant_step_ms": round(t_q * 1e3, 2),
        "generator_step_ms": round(t_g * 1e3, 2), "gdfq_step_ms (generator + student)": round((t_g + t_q) * 1e3, 2),
        "eval_images_per_s": round(500 / t_e),
        "ratio_quant_over_fp": round(t_q / t_fp, 2), "ratio_gdfq_over_fp": round((t_g + t_q) / t_fp, 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
