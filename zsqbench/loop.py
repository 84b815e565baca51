"""The one training loop every method runs through.

    seed -> teacher -> student (quantizer) -> synthesizer.prepare -> calibration (warm-up) -> distill steps
         -> evaluation at the protocol's points -> run record

Methods plug in through their components only; nothing here knows a method by name.
"""
from __future__ import annotations

import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsqbench import speed
from zsqbench.cache import cache_base
from zsqbench.errors import Diverged, UserError
from zsqbench.interfaces import RunContext
from zsqbench.protocols import apply_overrides, bits_for, canonical_hash, check_protocol_requirements, deep_merge
from zsqbench.provenance import run_code
from zsqbench.record import io as record_io
from zsqbench.registry import Registry, get_registry
from zsqbench.settings import SECTION_MODELS, check as settings_check
from zsqbench.teacher.card import preprocessing_identity, resolve_card
from zsqbench.teacher.zoo import load_teacher


@dataclass
class RunSpec:
    method: str
    model: str                      # "resnet20" or "resnet20@fmnist"
    wbits: int
    abits: int
    protocol: str = "cpu"
    seed: int = 0
    dataset: str | None = None      # default: the protocol's dataset for this model name
    device: str = "auto"
    out: str = "results"
    overrides: list[str] = field(default_factory=list)
    synthesizer: str | None = None  # component overrides (ablations)
    distiller: str | None = None
    quantizer: str | None = None
    weights: str | None = None
    teacher_card: str | None = None  # JSON: the teacher's input normalisation (default: beside --weights, manifest)
    data_root: str | None = None
    cache_dir: str | None = None
    quiet: bool = False
    record_file: str | None = None  # write the record exactly here (a sweep's job directory) instead of out/
    sweep_job: str | None = None    # the sweep job's configuration hash, kept in the record (resume check)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def settings_key(protocol: dict) -> str:
    """Which protocol's entry of a method's settings a protocol uses: its own, or the one it names in
    ``method_settings`` (a variant of a protocol — other seeds, a seed rule, another teacher — that keeps its
    methods' settings)."""
    return protocol.get("method_settings", protocol["name"])


def resolve_model_key(spec: RunSpec, registry: Registry, protocol: dict) -> str:
    if "@" in spec.model:
        key = spec.model
    else:
        dataset = spec.dataset
        if dataset is None:  # the protocol's teacher with this architecture name
            matches = [m for m in protocol["models"] if m.split("@")[0] == spec.model]
            dataset = matches[0].split("@")[1] if matches else None
        if dataset is None:
            archs = sorted({k.split("@")[0] for k in registry.models})
            if spec.model not in archs:
                raise UserError(f"unknown model {spec.model!r}; valid: {', '.join(archs)}")
            raise UserError(f"protocol {protocol['name']!r} has no {spec.model} teacher: pass --dataset "
                            f"(models: {', '.join(k for k in sorted(registry.models) if k.startswith(spec.model + '@'))})")
        key = f"{spec.model}@{dataset}"
    registry.get("models", key)
    return key


def resolve(spec: RunSpec, registry: Registry | None = None) -> dict[str, Any]:
    """Everything a run needs, resolved and checked before any work starts."""
    registry = registry or get_registry()
    method = registry.get("methods", spec.method)
    protocol = registry.get("protocols", spec.protocol)
    model_key = resolve_model_key(spec, registry, protocol)
    model_spec = registry.get("models", model_key)
    dataset = registry.dataset(model_spec.dataset, needed_by=f"model {model_key}").info
    for bits, what in ((spec.wbits, "weight"), (spec.abits, "activation")):
        if not 1 <= bits <= 16:
            raise UserError(f"{what} bit-width {bits} out of range: use 1..16")

    off_protocol: list[str] = []
    settings = method.settings_for(settings_key(protocol), model_spec.dataset)
    if settings is None:
        raise UserError(f"method {spec.method!r} has no settings for protocol {spec.protocol!r}")
    components = {}
    for kind in ("synthesizer", "distiller", "quantizer"):
        name = getattr(spec, kind) or getattr(method, kind)
        if getattr(spec, kind) and name != getattr(method, kind):
            off_protocol.append(f"{kind} {name} instead of {getattr(method, kind)}")
        components[kind] = (name, registry.get(kind + "s", name))

    config = deep_merge({"train": protocol["train"], "eval": protocol["eval"]}, settings)
    if protocol.get("quantization"):  # the protocol's bit-width convention (first/last layers): in the identity
        config["quantization"] = dict(protocol["quantization"])
    for kind, (name, cls) in components.items():
        own = config.get(kind, {}) if name == getattr(method, kind) else {}
        config[kind] = {**cls.defaults, **own}
    if spec.overrides:
        config = apply_overrides(config, spec.overrides)
        off_protocol.append("overrides: " + ", ".join(spec.overrides))
    check_settings(config, {kind: cls for kind, (_, cls) in components.items()},
                   _setting_source(spec, method, protocol, settings))
    if spec.weights and model_spec.embedded_weights:
        off_protocol.append(f"teacher weights from {spec.weights} instead of the embedded ones")
    card = resolve_card(model_spec, spec.weights, spec.teacher_card)
    if spec.teacher_card and model_spec.embedded_weights and not spec.weights:
        off_protocol.append(f"teacher card {spec.teacher_card} instead of the manifest's")
    if model_key not in protocol["models"]:
        off_protocol.append(f"model {model_key} is not in protocol {spec.protocol}")
    if [spec.wbits, spec.abits] not in bits_for(protocol, model_key):
        off_protocol.append(f"W{spec.wbits}A{spec.abits} is not in protocol {spec.protocol} for {model_key}")
    instances = {}
    for kind, (name, cls) in components.items():
        try:
            instances[kind] = cls(**config[kind])
        except TypeError as e:  # e.g. a plugin class that leaves an abstract method out
            provider = getattr(registry, kind + "s")[name].provider
            raise UserError(f"{kind} {name!r} from {provider} cannot be built: {e}") from None
    for capability in config.get("quantization", {}):
        instances["quantizer"].require(capability, f"protocol {protocol['name']!r}")
    return {"method": method, "protocol": protocol, "model_key": model_key, "model_spec": model_spec,
            "components": components, "instances": instances, "config": config,
            "off_protocol": off_protocol, "registry": registry, "card": card, "dataset": dataset}


def check_settings(config: dict, component_classes: dict, source=None) -> None:
    """Every value of a merged run configuration against its declared type, range and choices (train/eval: the
    protocol models; each component: its Settings) — one line for the first bad value, before any work."""
    for section, model in SECTION_MODELS.items():
        settings_check(model, config[section], section, source)
    for kind, cls in component_classes.items():
        settings_check(cls.Settings, config[kind], kind, source)


def _setting_source(spec: RunSpec, method, protocol: dict, method_settings: dict):
    """Where a setting's value came from, for the error message: --set, the method's settings, the protocol."""
    given = {item.split("=", 1)[0].strip() for item in spec.overrides}

    def source(key: str) -> str:
        if key in given:
            return "--set"
        section, _, name = key.partition(".")
        if name in (method_settings.get(section) or {}):
            where = method.settings if isinstance(method.settings, str) else method.provider
            return f"method {method.name}'s {spec.protocol} settings, {where}"
        if section in SECTION_MODELS:
            return f"protocol {protocol['name']}, {protocol.get('path', '?')}"
        return "the component's default"
    return source


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
    if quiet:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    transient=False)


def record_path(out: Path, resolved: dict, spec: RunSpec, config_hash: str) -> Path:
    name = (f"{spec.method}_{resolved['model_key'].replace('@', '-')}_w{spec.wbits}a{spec.abits}_"
            f"{spec.protocol}_seed{spec.seed}_{config_hash[:8]}.json")
    return out / name


def run(spec: RunSpec) -> tuple[dict, Path]:
    """Run one (method, model, bits, seed) job end to end and write its record. Returns (record, path)."""
    t_start = time.perf_counter()
    resolved = resolve(spec)
    device = resolve_device(spec.device)
    check_protocol_requirements(resolved["protocol"], device, off_protocol=bool(resolved["off_protocol"]))
    config, protocol, model_spec = resolved["config"], resolved["protocol"], resolved["model_spec"]
    synth, distiller, quantizer = (resolved["instances"][k] for k in ("synthesizer", "distiller", "quantizer"))
    dataset = resolved["dataset"]
    train, evalc = config["train"], config["eval"]
    timer = _Timer()

    from zsqbench.evaluation.evaluate import Evaluator  # the only import of real data
    with timer.phase("setup"):
        evaluator = Evaluator(model_spec.dataset, spec.data_root, device, evalc.get("limit"),
                              evalc.get("batch_size", 100), evalc.get("split", "test"), resolved["card"])
        teacher, teacher_info = load_teacher(model_spec, spec.weights, spec.cache_dir)
        teacher = speed.to_memory_format(teacher.to(device), device)  # channels-last where it pays (speed.py)
    with timer.phase("evaluation"):  # + the real set's diagnostics, same pass; cached per teacher and data
        fp_top1, fp_cache = evaluator.reference(teacher, model_spec.pool_module, teacher_info.get("sha256"),
                                                cache_base(spec.cache_dir) / "eval")

    seed_everything(spec.seed)
    student = speed.to_memory_format(
        quantizer.quantize(teacher, spec.wbits, spec.abits, **config.get("quantization", {})).to(device).eval(), device)
    steps, warmup = int(train["steps"]), int(train["warmup_steps"])
    ctx = RunContext(teacher=teacher, student=student, model=model_spec, dataset=dataset, wbits=spec.wbits,
                     abits=spec.abits, quantizer=quantizer, device=device, seed=spec.seed, total_steps=steps,
                     warmup_steps=warmup, cache_dir=spec.cache_dir, teacher_hash=teacher_info.get("sha256"))
    full_config = {"method": spec.method, "model": resolved["model_key"], "wbits": spec.wbits, "abits": spec.abits,
                   "seed": spec.seed, "protocol_hash": protocol["hash"], "teacher_sha256": teacher_info.get("sha256"),
                   "components": {k: v[0] for k, v in resolved["components"].items()}, "config": config,
                   "teacher_preprocessing": preprocessing_identity(resolved["card"])}
    config_hash = canonical_hash(full_config)

    ctx.stats["fp_reference"] = {"cache": fp_cache}
    history: list[dict] = []
    metrics_sum: dict[str, float] = {}
    step_times: list[float] = []
    diverged = None
    bs = int(train["batch_size"])
    eval_every = int(evalc.get("every") or 0)
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
                    opt, sorted({max(1, round(f * steps)) for f in train["milestones"]}), train["gamma"])
            task = progress.add_task("distill", total=steps, info="") if progress and steps else None
            averager = WeightAverage(params, train.get("average_from"), steps)
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
        "schema_version": 1,
        "status": "diverged" if diverged else "ok",
        "diverged": diverged,
        "method": {"name": spec.method, "provider": resolved["method"].provider,
                   **{k: {"name": name, "provider": getattr(resolved["registry"], k + "s")[name].provider,
                          "config": config[k]} for k, (name, _) in resolved["components"].items()}},
        "model": model_spec.name, "dataset": model_spec.dataset, "wbits": spec.wbits, "abits": spec.abits,
        "seed": spec.seed,
        "protocol": {"name": protocol["name"], "version": protocol["version"], "hash": protocol["hash"]},
        "off_protocol": resolved["off_protocol"],
        "config": {"train": train, "eval": evalc,
                   **({"quantization": config["quantization"]} if "quantization" in config else {})},
        "config_hash": config_hash,
        "teacher": {**{k: v for k, v in teacher_info.items() if v is not None}, "preprocessing": resolved["card"]},
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
        "device": record_io.device_info(device),
        "speed": speed.current().resolved(device),
        "versions": record_io.versions(),
        "plugins": resolved["registry"].plugins,
        "git": record_io.git_info(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    record["code"] = run_code(resolved)
    if spec.sweep_job:
        record["sweep_job"] = spec.sweep_job
    record_io.validate_record(record)
    path = Path(spec.record_file) if spec.record_file else record_path(Path(spec.out), resolved, spec, config_hash)
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


def _optimizer(train: dict, params) -> torch.optim.Optimizer:
    kind = train.get("optimizer", "sgd")
    if kind == "sgd":
        return torch.optim.SGD(params, lr=train["lr"], momentum=train.get("momentum", 0.9),
                               nesterov=train.get("nesterov", True), weight_decay=train.get("weight_decay", 0.0))
    if kind == "adam":
        return torch.optim.Adam(params, lr=train["lr"], weight_decay=train.get("weight_decay", 0.0))
    raise UserError(f"unknown optimizer {kind!r} in train.optimizer; use sgd or adam")
