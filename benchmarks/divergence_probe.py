"""Why did a run diverge? Replays one run (same method, teacher, bits, seed, protocol: the same numbers step for
step) with probes on its synthesizer and distiller, and prints the last steps before the non-finite value:

* the images: largest |x| and std; the generator's own loss terms;
* the student before each step: its largest |parameter| and where, the largest |gradient| of the previous update
  and where, which parameters are non-finite; from ``--from-step`` on, the first module whose output is non-finite;
* the student's and the teacher's largest |logit|;
* with ``--swap A,B`` (a run that does not diverge but falls between two evaluations): which block's change between
  steps A and B carries the fall. At step B it scores on the dev split (2000 images; `--swap-images`) the step-A student with one
  block's weights taken from step B, and the step-B student with one block put back to step A, block by block,
  and the relative change of each block's parameters; then the run goes on unchanged.

    python benchmarks/divergence_probe.py --method qimera --model mobilenetv1@fmnist --bits 4 --seed 2
        [--protocol cpu] [--set KEY=VALUE ...] [--from-step 360] [--last 5] [--jsonl FILE] [--swap 600,700]

The probed method is registered in this process only (``<method>-probe``, the same settings); its record is written
to a temporary folder and is off no protocol, but it never enters a sweep. Scores use 200 test images unless
``--set eval.limit=...`` / ``--set eval.split=...`` say otherwise.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
from pathlib import Path

import torch


def blocks(model: torch.nn.Module, depth: int = 3) -> list[str]:
    """The model's parameter-holding blocks: name prefixes ``depth`` dots deep (ResNet-20: the stem, the nine
    residual units, the classifier), in order."""
    out: list[str] = []
    for name, _ in model.named_parameters():
        prefix = ".".join(name.split(".")[:-1][:depth])
        if prefix not in out:
            out.append(prefix)
    return out


def swap_scores(student: torch.nn.Module, state_a: dict, ctx, images: int = 2000) -> dict:
    """At step B (the student's current state): dev top-1 of A, of B, of A with one block from B, and of B with one
    block from A. Leaves the student as it was."""
    from zsqbench.evaluation.evaluate import Evaluator
    from zsqbench.teacher.card import resolve_card
    evaluator = Evaluator(ctx.model.dataset, None, ctx.device, images, 100, "dev", resolve_card(ctx.model, None, None))
    state_b = copy.deepcopy(student.state_dict())

    def score(state):
        student.load_state_dict(state)
        return round(evaluator.top1(student), 2)

    def mixed(base, donor, prefix):
        return {k: (donor[k] if k.startswith(prefix + ".") else v) for k, v in base.items()}
    out = {"a": score(state_a), "b": score(state_b), "blocks": []}
    for prefix in blocks(student):
        keys = [k for k, _ in student.named_parameters() if k.startswith(prefix + ".")]
        change = (sum(float((state_b[k] - state_a[k]).norm() ** 2) for k in keys)
                  / max(sum(float(state_a[k].norm() ** 2) for k in keys), 1e-12)) ** 0.5
        out["blocks"].append({"block": prefix, "rel_change": round(change, 5),
                              "a_with_b_block": score(mixed(state_a, state_b, prefix)),
                              "b_with_a_block": score(mixed(state_b, state_a, prefix))})
    student.load_state_dict(state_b)
    return out


def probed(method: str, log: list[dict], from_step: int, swap: tuple[int, int] | None = None,
           swap_images: int = 2000) -> str:
    """Register ``<method>-probe``: the method with its synthesizer and distiller subclassed to fill ``log``."""
    from zsqbench.spine.registry import get_registry
    registry = get_registry()
    name = method + "-probe"
    if name in registry.methods:  # registered by an earlier replay in this process: point it at this log
        registry.synthesizers[registry.methods[name].obj.synthesizer].obj.probe.update(
            log=log, from_step=from_step, swap=swap, state_a=None, swap_images=swap_images)
        return name
    recipe = registry.methods[method].obj
    probe = {"log": log, "from_step": from_step, "swap": swap, "state_a": None,  # shared by both components
             "swap_images": swap_images}
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
            # loss() at ctx.step runs before that step's update: the student is as evaluated "at step ctx.step"
            if probe["swap"] and ctx.step == probe["swap"][0]:
                probe["state_a"] = copy.deepcopy(ctx.student.state_dict())
            if probe["swap"] and ctx.step == probe["swap"][1] and probe["state_a"] is not None:
                row["swap"] = swap_scores(ctx.student, probe["state_a"], ctx, probe["swap_images"])
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
    parser.add_argument("--swap", metavar="A,B", help="at step B, which block's change since step A carries the "
                        "change in dev top-1 (for a run that falls without diverging)")
    parser.add_argument("--swap-images", type=int, default=2000, help="dev images each --swap score is on")
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
    try:
        swap = tuple(int(s) for s in args.swap.split(",")) if args.swap else None
    except ValueError:
        swap = ()
    if swap is not None and (len(swap) != 2 or not 0 <= swap[0] < swap[1]):
        parser.error(f"--swap takes two steps A,B with 0 <= A < B (got {args.swap!r})")
    name = probed(args.method, log, args.from_step, swap, args.swap_images)
    record = run_method(name, out_dir=tempfile.mkdtemp(), protocol=args.protocol, model=args.model, bits=args.bits,
                        seed=args.seed, overrides=overrides, cache_dir=Path.home() / ".cache" / "zsqbench")
    split = record["config"]["eval"].get("split", "test")
    print(f"{args.method} {args.model} W{args.bits}A{args.bits} seed {args.seed}: {record['status']}"
          + (f", {record['diverged']}" if record["diverged"]
             else f", top-1 on {record['eval_samples']} {split} images {record['final_top1']}"))
    if record.get("eval_history"):  # with --set eval.every=N: the curve the probes sit under
        print("top-1 by step: " + ", ".join(f"{h['step']}: {h['top1']}" for h in record["eval_history"]))
    if swap and not any("swap" in row for row in log):
        raise SystemExit(f"error: --swap {swap[0]},{swap[1]}: the run stopped before step {swap[1]} "
                         f"({len(log)} distillation steps); pick steps inside the run")
    if args.jsonl:
        Path(args.jsonl).write_text("".join(json.dumps(row) + "\n" for row in log))
    for row in log:
        if "swap" in row:
            sw = row["swap"]
            print(f"dev top-1 at step {swap[0]}: {sw['a']}, at step {swap[1]}: {sw['b']}")
            print(f"{'block':<32} {'rel. change':>11} {'A + block from B':>17} {'B + block from A':>17}")
            for b in sw["blocks"]:
                print(f"{b['block']:<32} {b['rel_change']:>11.5f} {b['a_with_b_block']:>17} {b['b_with_a_block']:>17}")
    for row in log[max(len(log) - args.last, 0):]:  # (log[-0:] would be all of it)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))


if __name__ == "__main__":
    main()
