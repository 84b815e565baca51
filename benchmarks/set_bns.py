"""BNS error of cached synthetic sets, in the form run records report (``diagnostics.data.synthetic.bns_error``:
batch-form BNS loss of the teacher, averaged over batches of 100), without a run. For comparing synthesis
settings off the leaderboard, e.g. more iterations for one seed:

    zsqbench synth --method hast --model resnet20 --seed 2 --set synthesizer.iterations=400 --cache-dir /tmp/s
    python benchmarks/set_bns.py /tmp/s/synthetic/hast_resnet20-fmnist_seed2_*.pt ~/.cache/zsqbench/synthetic/hast_resnet20-fmnist_seed2_*.pt
"""
from __future__ import annotations

import argparse
import json

import torch

from zsqbench.synthesizer.bns import BNStatHooks
from zsqbench.teacher.zoo import builtin_models, load_teacher


def set_bns(teacher: torch.nn.Module, images: torch.Tensor, batch_size: int = 100) -> float:
    hooks, values = BNStatHooks(teacher), []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            with hooks.recording():
                teacher(images[i:i + batch_size])
            values.append(float(hooks.loss()))
    hooks.remove()
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="+", help="synthetic-set .pt files from the cache")
    args = parser.parse_args()
    teachers = {}
    for path in args.sets:
        data = torch.load(path, weights_only=True)
        key = json.loads(data["key"])
        if key["model"] not in teachers:
            spec = next(m for m in builtin_models() if m.key == key["model"])
            teachers[key["model"]] = load_teacher(spec)[0].eval()
        synthesis = key.get("synthesis", {})
        print(f"{key['synthesizer']} {key['model']} seed {key['seed']}: {synthesis.get('num_images')} images x "
              f"{synthesis.get('iterations')} iterations, BNS error {set_bns(teachers[key['model']], data['images']):.4f}")


if __name__ == "__main__":
    main()
