"""Would fine-tuning help if the images were real? A diagnostic for rows where every fine-tuning method ends below
`noise` calibration (cpu v4, MobileNetV1 W4A4): it separates "the synthetic images are the problem" from "this
student cannot be fine-tuned at this budget".

It runs the `cpu` protocol's loop (200 calibration + 1000 distillation steps, lr 1e-4, batch 32, GDFQ's KD loss,
weights averaged over the last 300 steps) three ways, each scored on the *dev* split (the last 10 000 train images)
and fed from the first 50 000 train images, which the dev split never sees:

* ``noise``       — the `noise` method: ranges calibrated on Gaussian noise, no fine-tuning (the floor);
* ``real-calib``  — ranges calibrated on real train images, no fine-tuning;
* ``real-kd``     — real-image calibration, then 1000 steps of KD fine-tuning on real train images.

Real images make this not a zero-shot method: it is registered in this process only, and its records are
off-protocol (they name ``eval.split=dev``) and never enter a leaderboard.

    python benchmarks/real_data_finetune.py [--model mobilenetv1@fmnist] [--bits 4] [--abits A] [--seeds 0]
                                            [--out sweeps/real-data] [--variants noise,real-calib,real-kd]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from zsqbench.api import Batch, Method, RunContext, Synthesizer

# GDFQ's `cpu` student settings (plugins/gdfq.json) on top of the protocol's; only the images differ.
KD = {"train": {"batch_size": 32, "lr": 1e-4},
      "distiller": {"temperature": 20.0, "alpha": 1.0, "kl_reduction": "mean"}}


class RealTrainImages(Synthesizer):
    """Random batches of real train images (and their labels), never the dev tail the run is scored on."""
    name = "real-train"
    description = "real train-split images outside the dev split (diagnostic only: not zero-shot)"

    def prepare(self, ctx: RunContext) -> None:
        from zsqbench.evaluation.data import DEV_SIZE, load_split
        x, y = load_split(ctx.dataset.name, "train")
        self.images, self.labels = x[:-DEV_SIZE], y[:-DEV_SIZE]
        self.rng = torch.Generator().manual_seed(ctx.seed)

    def next_batch(self, ctx: RunContext, batch_size: int) -> Batch:
        idx = torch.randint(len(self.images), (batch_size,), generator=self.rng)
        return Batch(self.images[idx].to(ctx.device), self.labels[idx].to(ctx.device))


VARIANTS = {
    "noise": ("noise", {}),
    "real-calib": ("real-kd", {"train.steps": 0}),
    "real-kd": ("real-kd", {}),
}


def register() -> None:
    from zsqbench.spine.registry import get_registry
    registry = get_registry()
    if "real-kd" not in registry.methods:  # provided by this script, not by zsqbench: records and listings say so
        stage = registry.staging("benchmarks/real_data_finetune.py", "zsqbench-benchmarks")
        stage.add_synthesizer(RealTrainImages)
        stage.add_method(Method("real-kd", synthesizer="real-train", distiller="kd", settings={"cpu": KD},
                                description="KD fine-tuning on real train images (diagnostic)"))
        registry.commit(stage)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenetv1@fmnist")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--abits", type=int, default=None, help="activation bits when they differ from --bits "
                        "(W3A8 / W8A3: is it the weights or the activations that calibration cannot hold?)")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="sweeps/real-data")
    args = parser.parse_args(argv)
    register()
    abits = args.bits if args.abits is None else args.abits
    from zsqbench.testing import run_method
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in args.variants.split(","):
            method, overrides = VARIANTS[variant]
            out = Path(args.out) / f"{variant}-{args.model.replace('@', '-')}-w{args.bits}a{abits}-s{seed}"
            done = sorted(out.glob("*.json"))
            record = (json.loads(done[0].read_text()) if done else
                      run_method(method, out_dir=out, protocol="cpu", model=args.model, wbits=args.bits, abits=abits,
                                 seed=seed, overrides={"eval.split": "dev", **overrides},
                                 cache_dir=Path.home() / ".cache/zsqbench"))
            print(f"{variant:11s} W{args.bits}A{abits} seed {seed}  dev top-1 {record['final_top1']:6.2f}  "
                  f"({record['timing']['total_s']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
