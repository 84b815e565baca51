"""``zsqbench synth``: build (or find in the cache) one method's synthetic image set on its teacher, without a student,
and write a PNG grid per class. Image-set synthesizers only
(:class:`~zsqbench.synthesizer.imageopt.ImageSetSynthesizer`); generators have nothing to cache."""
from __future__ import annotations

from zsqbench.spine.errors import UserError
from zsqbench.spine.interfaces import RunContext
from zsqbench.spine.numerics import resolve_device, seed_all
from zsqbench.spine.plan import resolve
from zsqbench.synthesizer.imageopt import ImageSetSynthesizer
from zsqbench.synthesizer.preview import class_grid, write_png
from zsqbench.teacher.zoo import load_teacher


def build_set(spec, force: bool = False) -> dict:
    """Build (or find in the cache) the synthetic set of ``spec``'s method on its teacher, without a student: what
    ``zsqbench synth`` runs. Returns the synthesis stats with the set's file and its PNG grid."""
    plan = resolve(spec)
    model_spec, synth_plan = plan.model_spec, plan.components["synthesizer"]
    if not issubclass(synth_plan.cls, ImageSetSynthesizer):
        raise UserError(f"method {spec.method!r} uses synthesizer {synth_plan.name!r}, "
                        "which builds no image set (generators have nothing to cache); use an image-optimisation "
                        "method such as intraq, hast or zeroq")
    device = resolve_device(spec.device)
    teacher, info = load_teacher(model_spec, spec.weights, spec.cache_dir)
    seed_all(spec.seed)
    ctx = RunContext(teacher=teacher.to(device), student=None, model=model_spec, dataset=plan.dataset,
                     wbits=spec.wbits, abits=spec.abits, quantizer=None, device=device, seed=spec.seed,
                     total_steps=0, warmup_steps=0, cache_dir=spec.cache_dir, teacher_hash=info.get("sha256"),
                     teacher_card=dict(plan.card))
    synth = synth_plan.build(calibration_synthesizer=None)  # only the set is wanted here
    path = synth.cache_path(ctx)
    if path is None:
        raise UserError("the teacher weights have no sha256, so their set cannot be cached: pass --weights PATH")
    if force and path.exists():
        path.unlink()
    if not spec.quiet:
        from rich.progress import Progress
        ctx.progress = Progress(transient=True)
    with ctx.progress or _nothing():
        synth.prepare(ctx)
    png = path.with_suffix(".png")
    write_png(png, class_grid(synth.images, synth.labels, ctx.num_classes, ctx.dataset.mean, ctx.dataset.std))
    return {**ctx.stats["synthesis"], "png": str(png), "off_protocol": list(plan.off_protocol)}


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
