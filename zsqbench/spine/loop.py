"""The one training loop every method runs through.

    seed -> teacher -> student (quantizer) -> synthesizer.prepare -> calibration (warm-up) -> distill steps
         -> evaluation at the protocol's points -> run record

Methods plug in through their components only; nothing here knows a method by name.
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch

from zsqbench.protocols import check_protocol_requirements
from zsqbench.record import io as record_io
from zsqbench.record.check import seal
from zsqbench.spine import numerics, speed
from zsqbench.spine.cache import cache_base
from zsqbench.spine.errors import Diverged, UserError
from zsqbench.spine.interfaces import RunContext
from zsqbench.spine.plan import (MAX_SEED, RunPlan, RunSpec, check_seed, resolve, resolve_model_key,  # noqa: F401
                                 settings_key)
from zsqbench.spine.progress import make_progress
from zsqbench.spine.settings import TrainSettings
from zsqbench.teacher.card import check_fp_claim
from zsqbench.teacher.zoo import load_teacher


def seed_everything(seed: int) -> None:
    numerics.seed_all(seed)


class _Timer:
    def __init__(self):
        self.phases: dict[str, float] = {}

    def phase(self, name: str):
        timer = self

        class _T:
            def __enter__(self_):
                self_.t0 = time.perf_counter()

            def __exit__(self_, *exc):
                timer.phases[name] = timer.phases.get(name, 0.0) + time.perf_counter() - self_.t0
        return _T()


def _progress(quiet: bool):
    return make_progress(quiet)  # a bar on a terminal, a plain line every 30 s elsewhere (zsqbench/spine/progress.py)


def record_path(out: Path, plan: RunPlan) -> Path:
    spec = plan.spec
    name = (f"{spec.method}_{plan.model_key.replace('@', '-')}_w{spec.wbits}a{spec.abits}_"
            f"{spec.protocol}_seed{spec.seed}_{plan.job_hash[:8]}.json")
    return out / name


def run(spec: RunSpec | RunPlan) -> tuple[dict, Path]:
    """Run one (method, model, bits, seed) job end to end and write its record. Returns (record, path)."""
    t_start = time.perf_counter()
    plan = spec if isinstance(spec, RunPlan) else resolve(spec)
    spec = plan.spec
    numerics.set_threads(spec.threads)  # before any torch work: the thread count splits float sums (numerics.py)
    from zsqbench.spine.safety import check_output_dir  # where the record goes: checked before any work
    check_output_dir(Path(spec.record_file).parent if spec.record_file else spec.out,
                     "--record-file" if spec.record_file else "--out")
    check_output_dir(cache_base(spec.cache_dir), "--cache-dir")  # the FP reference and synthetic sets go there
    device = numerics.resolve_device(spec.device)
    check_protocol_requirements(plan.protocol, device, off_protocol=bool(plan.off_protocol))
    model_spec, train, evalc = plan.model_spec, plan.train, plan.eval
    components = plan.build_components()
    synth, distiller, quantizer = (components[k] for k in ("synthesizer", "distiller", "quantizer"))
    timer = _Timer()

    from zsqbench.evaluation.evaluate import Evaluator  # the only import of real data
    with timer.phase("setup"):
        # the data first (a missing set is one line before any download), then the teacher (broken weights: one
        # line before the FP evaluation)
        evaluator = Evaluator(model_spec.dataset, spec.data_root, device, evalc.limit, evalc.batch_size, evalc.split,
                              dict(plan.card))
        teacher, teacher_info = load_teacher(model_spec, spec.weights, spec.cache_dir)
        teacher = speed.to_memory_format(teacher.to(device), device)  # channels-last where it pays (speed.py)
    with timer.phase("evaluation"):  # + the real set's diagnostics, same pass; cached per teacher and data
        fp_top1, fp_cache = evaluator.reference(teacher, model_spec.pool_module, teacher_info.get("sha256"),
                                                cache_base(spec.cache_dir) / "eval")
    check_fp_claim(fp_top1, dict(plan.card), teacher_info, evaluator.n, evalc.split)

    seed_everything(spec.seed)
    student = speed.to_memory_format(
        quantizer.quantize(teacher, spec.wbits, spec.abits, **plan.quantization).to(device).eval(), device)
    steps, warmup = train.steps, train.warmup_steps
    ctx = RunContext(teacher=teacher, student=student, model=model_spec, dataset=plan.dataset, wbits=spec.wbits,
                     abits=spec.abits, quantizer=quantizer, device=device, seed=spec.seed, total_steps=steps,
                     warmup_steps=warmup, cache_dir=spec.cache_dir, teacher_hash=teacher_info.get("sha256"),
                     teacher_card=dict(plan.card))

    ctx.stats["fp_reference"] = {"cache": fp_cache}
    history: list[dict] = []
    metrics_sum: dict[str, float] = {}
    step_times: list[float] = []
    diverged = None
    bs = train.batch_size
    eval_every = evalc.every or 0
    progress = _progress(spec.quiet)
    ctx.progress = progress
    try:
        with progress or nullcontext():
            ctx.phase = "synthesis"
            with timer.phase("synthesis"):
                synth.prepare(ctx)
                distiller.setup(ctx)

            ctx.phase = "calibration"
            with timer.phase("calibration"):
                task = progress.add_task("calibration", total=warmup, info="") if progress else None
                quantizer.set_calibrating(student, True)
                for ctx.step in range(warmup):
                    batch = synth.calibration_batch(ctx, bs)
                    with torch.no_grad():
                        ctx.check_finite(student(batch.images), "student output")
                    if progress:
                        progress.advance(task)
                quantizer.set_calibrating(student, False)
            missing = quantizer.uncalibrated(student)
            if missing:
                raise UserError(f"{len(missing)} activation quantizers were never calibrated (e.g. {missing[0]}): "
                                "the method needs train.warmup_steps > 0")

            ctx.phase = "distill"
            params = [p for p in student.parameters() if p.requires_grad]
            if steps > 0:
                opt = _optimizer(train, params)
                sched = torch.optim.lr_scheduler.MultiStepLR(
                    opt, sorted({max(1, round(f * steps)) for f in train.milestones}), train.gamma)
            task = progress.add_task("distill", total=steps, info="") if progress and steps else None
            averager = WeightAverage(params, train.average_from, steps)
            for ctx.step in range(steps):
                t0 = time.perf_counter()
                with timer.phase("distill"):
                    batch = synth.next_batch(ctx, bs)
                    loss, parts = distiller.loss(ctx, batch)
                    ctx.check_finite(loss, "student loss")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    averager.update(ctx.step)
                step_times.append(time.perf_counter() - t0)
                for k, v in {"loss": loss.item(), **parts, **batch.metrics}.items():
                    metrics_sum[k] = metrics_sum.get(k, 0.0) + v
                if eval_every and (ctx.step + 1) % eval_every == 0 and ctx.step + 1 < steps:
                    with timer.phase("evaluation"), averager.swapped_in():
                        history.append({"step": ctx.step + 1, "top1": round(evaluator.top1(student), 4),
                                        **averager.marker()})
                if progress:
                    info = f"loss {loss.item():.4g}" + (f" · top1 {history[-1]['top1']:.2f}" if history else "")
                    progress.update(task, advance=1, info=info)
            ctx.phase = "evaluation"
            averager.finish()  # the scored student is the averaged one (when averaging is on)
            with timer.phase("evaluation"):
                history.append({"step": steps, "top1": round(evaluator.top1(student), 4), **averager.marker()})
    except Diverged as e:
        diverged = {"phase": e.phase, "step": e.step, "what": e.what}
    sample = synth.diagnostic_images(ctx)  # also after a divergence: an out-of-range set is a likely cause
    if sample is not None:
        with timer.phase("diagnostics"):
            ctx.stats["data"] = evaluator.compare(teacher, model_spec.pool_module, *sample)

    final = history[-1]["top1"] if history and diverged is None else None
    best = max((h["top1"] for h in history), default=None)
    n_steps = len(step_times)
    record = {
        "schema_version": 2,
        "status": "diverged" if diverged else "ok",
        "diverged": diverged,
        "method": {"name": spec.method, "provider": plan.method.provider,
                   **{k: {"name": c.name, "provider": c.provider, "config": dict(c.config)}
                      for k, c in plan.components.items()}},
        "model": model_spec.name, "dataset": model_spec.dataset, "wbits": spec.wbits, "abits": spec.abits,
        "seed": spec.seed,
        "protocol": plan.identity["protocol"],
        "off_protocol": list(plan.off_protocol),
        "config": {section: plan.config[section] for section in ("train", "eval", "quantization")
                   if section in plan.config},
        "config_hash": plan.job_hash,
        "teacher": {**{k: v for k, v in teacher_info.items() if v is not None}, "preprocessing": dict(plan.card)},
        "fp_top1": round(fp_top1, 4),
        "final_top1": final,
        "best_top1_selected_on_test": best,
        "eval_history": history,
        "eval_samples": evaluator.n,
        "train_metrics": {k: v / max(1, n_steps) for k, v in metrics_sum.items()},
        "diagnostics": ctx.stats,
        "timing": {"total_s": round(time.perf_counter() - t_start, 3),
                   "phases_s": {k: round(v, 3) for k, v in timer.phases.items()},
                   "mean_step_s": round(sum(step_times) / n_steps, 5) if n_steps else None,
                   "steps": n_steps},
        "memory": {"peak_rss_mb": round(record_io.peak_rss_mb(), 1),
                   "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
                   if device.type == "cuda" else None},
        "device": {**record_io.device_info(device), "numerics": numerics.info()},
        "speed": speed.current().resolved(device),
        "versions": record_io.versions(),
        "plugins": plan.registry.plugins,
        "git": record_io.git_info(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record["code"] = plan.code
    if spec.sweep_job:
        record["sweep_job"] = spec.sweep_job
    path = Path(spec.record_file) if spec.record_file else record_path(Path(spec.out), plan)
    if (spec.save_student or spec.export_dir) and final is not None:
        from zsqbench.export.run import keep_student
        record.update(keep_student(spec, plan, student, teacher, record, teacher_info, path))
    seal(record)  # the content digest: a later hand edit fails `zsqbench validate` (zsqbench/record/check.py)
    record_io.validate_record(record)
    record_io.write_json_atomic(path, record)
    return record, path


class WeightAverage:
    """Stochastic weight averaging of the student's trainable parameters over the steps after ``average_from`` x
    steps (``None``: off, every method is a no-op). At 3 bits the quantized student's accuracy swings by 10+ points
    between nearby steps even at lr 1e-6 (benchmarks/curves): a weight change of a few thousandths flips rounding
    decisions. The average of the latent weights is one well-defined student instead of a draw from that swing."""

    def __init__(self, params: list[torch.Tensor], average_from: float | None, steps: int):
        self.params = params
        self.start = None if average_from is None or steps <= 0 else min(steps - 1, int(round(average_from * steps)))
        self.sum: list[torch.Tensor] | None = None
        self.count = 0

    def update(self, step: int) -> None:
        if self.start is None or step < self.start:
            return
        with torch.no_grad():
            if self.sum is None:
                self.sum = [p.detach().clone() for p in self.params]
            else:
                for s, p in zip(self.sum, self.params):
                    s.add_(p.detach())
        self.count += 1

    def marker(self) -> dict:
        return {"averaged_steps": self.count} if self.count else {}

    def _average(self) -> list[torch.Tensor]:
        return [s / self.count for s in self.sum]

    @contextmanager
    def swapped_in(self):
        """Within the block the student holds the running average (an evaluation mid-run)."""
        if not self.count:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, a in zip(self.params, self._average()):
                p.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)

    def finish(self) -> None:
        """Leave the average in the student for good (the final evaluation, the record, any saved student)."""
        if self.count:
            with torch.no_grad():
                for p, a in zip(self.params, self._average()):
                    p.copy_(a)


def _optimizer(train: TrainSettings, params) -> torch.optim.Optimizer:
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov,
                               weight_decay=train.weight_decay)
    return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay)
