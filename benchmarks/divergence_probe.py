"""Why did a run diverge? Replays one run (same method, teacher, bits, seed, protocol: the same numbers step for
step) with probes on its synthesizer and distiller, and prints the last steps before the non-finite value:

* the images: largest |x| and std; the generator's own loss terms;
* the student before each step: its largest |parameter| and where, the largest |gradient| of the previous update
  and where, which parameters are non-finite; from ``--from-step`` on, the first module whose output is non-finite;
* the student's and the teacher's largest |logit|.

    python benchmarks/divergence_probe.py --method qimera --model mobilenetv1@fmnist --bits 4 --seed 2
        [--protocol cpu] [--set KEY=VALUE ...] [--from-step 360] [--last 5] [--jsonl FILE]

The probed method is registered in this process only (``<method>-probe``, the same settings); its record is written
to a temporary folder and is off no protocol, but it never enters a sweep. Scores use 200 test images.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch


def probed(method: str, log: list[dict], from_step: int) -> str:
    """Register ``<method>-probe``: the method with its synthesizer and distiller subclassed to fill ``log``."""
    from zsqbench.registry import get_registry
    registry = get_registry()
    name = method + "-probe"
    if name in registry.methods:  # registered by an earlier replay in this process: point it at this log
        registry.synthesizers[registry.methods[name].obj.synthesizer].obj.probe.update(log=log, from_step=from_step)
        return name
    recipe = registry.methods[method].obj
    probe = {"log": log, "from_step": from_step}  # shared by both probed components
    synth_cls = registry.synthesizers[recipe.synthesizer].obj
    distiller_cls = registry.distillers[recipe.distiller].obj

    class Synth(synth_cls):
        def next_batch(self, ctx, batch_size):
            batch = super().next_batch(ctx, batch_size)
            if ctx.phase == "distill":
                images = batch.images.detach()
                probe["log"].append({"step": ctx.step, "images_absmax": float(images.abs().max()),
                                     "images_std": float(images.std()),
                                     **{k: float(v) for k, v in batch.metrics.items()}})
            return batch

    class Distiller(distiller_cls):
        def loss(self, ctx, batch):
            row = probe["log"][-1]
            named = list(ctx.student.named_parameters())
            # before this step's zero_grad: the gradients of the previous update
            grads = [(float(p.grad.abs().max()), n) for n, p in named if p.grad is not None]
            row["prev_grad_absmax"], row["prev_grad_where"] = max(grads, default=(0.0, ""))
            row["param_absmax"], row["param_where"] = max((float(p.detach().abs().max()), n) for n, p in named)
            row["nonfinite_params"] = [n for n, p in named if not torch.isfinite(p).all()][:3]
            with torch.no_grad():
                if ctx.step >= probe["from_step"]:
                    outputs: dict[str, bool] = {}

                    def note(name):
                        def hook(module, inputs, output):  # returns None: the output is left as it is
                            outputs.setdefault(name, bool(torch.isfinite(output).all()))
                        return hook
                    hooks = [m.register_forward_hook(note(n))
                             for n, m in ctx.student.named_modules() if not list(m.children())]
                    ctx.student(batch.images)
                    for h in hooks:
                        h.remove()
                    row["first_nonfinite_module"] = next((n for n, ok in outputs.items() if not ok), None)
                row["student_absmax"] = float(ctx.student(batch.images).abs().max())
                row["teacher_absmax"] = float(ctx.teacher(batch.images).abs().max())
            return super().loss(ctx, batch)

    Synth.name, Distiller.name = recipe.synthesizer + "-probe", recipe.distiller + "-probe"
    Synth.probe = probe
    stage = registry.staging("benchmarks/divergence_probe.py", "zsqbench-benchmarks")  # not zsqbench's own
    stage.add_synthesizer(Synth)
    stage.add_distiller(Distiller)
    stage.add_method(dataclasses.replace(recipe, name=name, synthesizer=Synth.name, distiller=Distiller.name))
    registry.commit(stage)
    return name


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override, as `zsqbench run --set` (to replay an off-protocol run)")
    parser.add_argument("--from-step", type=int, default=0, help="look for the first non-finite module from here")
    parser.add_argument("--last", type=int, default=5, help="how many steps to print before the end")
    parser.add_argument("--jsonl", help="write every step's probes here")
    args = parser.parse_args(argv)
    from zsqbench.testing import run_method
    overrides = {"eval.limit": 200}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            overrides[key] = json.loads(value)
        except ValueError:
            overrides[key] = value
    log: list[dict] = []
    name = probed(args.method, log, args.from_step)
    record = run_method(name, out_dir=tempfile.mkdtemp(), protocol=args.protocol, model=args.model, bits=args.bits,
                        seed=args.seed, overrides=overrides, cache_dir=Path.home() / ".cache" / "zsqbench")
    print(f"{args.method} {args.model} W{args.bits}A{args.bits} seed {args.seed}: {record['status']}"
          + (f", {record['diverged']}" if record["diverged"] else f", top-1 on 200 test images {record['final_top1']}"))
    if args.jsonl:
        Path(args.jsonl).write_text("".join(json.dumps(row) + "\n" for row in log))
    for row in log[-args.last:]:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
