"""BNS error of cached synthetic sets (or of real test images), in the form run records report
(``diagnostics.data.synthetic.bns_error``: the batch-form BNS loss of the teacher — the mean over its BN layers of
MSE(batch mean, running mean) + MSE(batch variance, running variance) — averaged over batches of 100), without a
run. For comparing synthesis settings off the leaderboard, e.g. more iterations for one seed:

    zsqbench synth --method hast --model resnet20 --seed 2 --set synthesizer.iterations=400 --cache-dir /tmp/s
    python benchmarks/set_bns.py /tmp/s/synthetic/hast_resnet20-fmnist_seed2_*.pt ~/.cache/zsqbench/synthetic/hast_resnet20-fmnist_seed2_*.pt

``--real MODEL`` scores the first ``--images`` real test images instead; ``--layers`` splits the error by layer:
the first BN layer's share and the mean over the others (a loss dominated by one layer steers synthesis by that
layer alone):

    python benchmarks/set_bns.py --layers --real mobilenetv1@fmnist ~/.cache/zsqbench/synthetic/hast_mobilenetv1-*.pt
"""
from __future__ import annotations

import argparse
import json

import torch

from zsqbench.synthesizer.bns import BNStatHooks, bns_loss
from zsqbench.teacher.zoo import builtin_models, load_teacher


def layer_bns(teacher: torch.nn.Module, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    """Per BN layer, the batch-form BNS loss averaged over batches of ``batch_size`` (its mean is the records' form)."""
    hooks, per_batch = BNStatHooks(teacher), []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            with hooks.recording():
                teacher(images[i:i + batch_size])
            per_batch.append(torch.stack([bns_loss([s]) for s in hooks.stats()]))  # the terms loss() averages
    hooks.remove()
    return torch.stack(per_batch).mean(0)


def set_bns(teacher: torch.nn.Module, images: torch.Tensor, batch_size: int = 100) -> float:
    return float(layer_bns(teacher, images, batch_size).mean())


def describe(layers: torch.Tensor, split: bool) -> str:
    text = f"BNS error {float(layers.mean()):.4f}"
    if split:
        text += (f" (first BN layer {float(layers[0] / layers.sum()):.5%} of it; the other {len(layers) - 1} layers "
                 f"{float(layers[1:].mean()):.4f} on average)")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", help="synthetic-set .pt files from the cache")
    parser.add_argument("--real", metavar="MODEL", help="also score real test images on this teacher")
    parser.add_argument("--images", type=int, default=1000, help="how many real test images (default 1000)")
    parser.add_argument("--layers", action="store_true", help="split the error by BN layer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    teachers = {}

    def teacher(key: str) -> torch.nn.Module:
        if key not in teachers:
            spec = next(m for m in builtin_models() if m.key == key)
            teachers[key] = load_teacher(spec)[0].eval()
        return teachers[key]

    if args.real:
        from zsqbench.evaluation.data import load_split
        spec = next(m for m in builtin_models() if m.key == args.real)
        images = load_split(spec.dataset, "test")[0][:args.images]
        print(f"real test images {args.real}: {len(images)} images, "
              f"{describe(layer_bns(teacher(args.real), images), args.layers)}")
        if args.layers:
            first = next(m for m in teacher(args.real).modules() if isinstance(m, torch.nn.BatchNorm2d))
            print(f"  its first BN layer's running variances: {float(first.running_var.min()):.4g} .. "
                  f"{float(first.running_var.max()):.4g} (mean {float(first.running_var.mean()):.4g})")
    for path in args.sets:
        data = torch.load(path, weights_only=True)
        key = json.loads(data["key"])
        synthesis = key.get("synthesis", {})
        print(f"{key['synthesizer']} {key['model']} seed {key['seed']}: {synthesis.get('num_images')} images x "
              f"{synthesis.get('iterations')} iterations, "
              f"{describe(layer_bns(teacher(key['model']), data['images']), args.layers)}")


if __name__ == "__main__":
    main()
