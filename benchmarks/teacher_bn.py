"""Per-layer BN running-variance ranges of teachers, side by side (issue #25 part 3: does a teacher's BN statistics
look like a normally trained network's?).

    python benchmarks/teacher_bn.py resnet20@fmnist mobilenetv1@fmnist
    python benchmarks/teacher_bn.py mobilenetv2=/work/teachers/mobilenetv2_fmnist.pt   # architecture=weights file

For each teacher: one line per BatchNorm layer (name, channels, min / median / max running variance) and a summary
line: the largest variance, the median and spread of the layers' maxima, and the first BN's share of all variance
(the BNS loss sums per-layer variance errors, so a layer holding most of it dominates synthesis). The embedded
ResNet-20 (max 5.9, first BN 0.9 %) is the reference of a normally trained network; the equalised MobileNetV1's
first BN reaches 4.3e4 and holds 99 % of all variance.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from zsqbench.frontends.train_teacher import ARCHITECTURES
from zsqbench.spine.registry import get_registry
from zsqbench.teacher.zoo import load_teacher


def load(arg: str) -> tuple[str, torch.nn.Module]:
    """``model@dataset`` (a registered teacher, its embedded weights) or ``architecture=weights.pt``."""
    if "=" in arg:
        arch, path = arg.split("=", 1)
        if arch not in ARCHITECTURES:
            sys.exit(f"error: unknown architecture {arch!r}; use one of {', '.join(sorted(ARCHITECTURES))}")
        net = ARCHITECTURES[arch]()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return f"{arch} ({path})", net.eval()
    net, _ = load_teacher(get_registry().get("models", arg))
    return arg, net.eval()


def bn_report(net: torch.nn.Module) -> dict:
    layers = []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.running_var is not None:
            v = m.running_var.detach().double()
            layers.append({"layer": name, "channels": v.numel(), "min": float(v.min()),
                           "median": float(v.median()), "max": float(v.max()), "sum": float(v.sum())})
    total = sum(layer["sum"] for layer in layers) or 1.0
    maxima = [layer["max"] for layer in layers]
    return {"layers": layers, "bn_layers": len(layers), "max_variance": max(maxima),
            "median_layer_max": float(torch.tensor(maxima).median()),
            "spread_of_layer_maxima": max(maxima) / max(min(maxima), 1e-30),
            "first_layer_share_of_variance": layers[0]["sum"] / total}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teachers", nargs="+", help="model@dataset, or architecture=weights.pt")
    ap.add_argument("--json", action="store_true", help="print the reports as JSON")
    ap.add_argument("--summary", action="store_true", help="only the summary line per teacher")
    args = ap.parse_args(argv)
    reports = {}
    for arg in args.teachers:
        label, net = load(arg)
        reports[label] = bn_report(net)
    if args.json:
        print(json.dumps(reports, indent=2))
        return
    for label, r in reports.items():
        print(f"{label}: {r['bn_layers']} BN layers; running variance max {r['max_variance']:.3g}, median of the "
              f"layers' maxima {r['median_layer_max']:.3g}, spread of the maxima {r['spread_of_layer_maxima']:.3g}x; "
              f"first BN's share of all variance {100 * r['first_layer_share_of_variance']:.2f} %")
        if not args.summary:
            for layer in r["layers"]:
                print(f"  {layer['layer']:<40} {layer['channels']:>5}  min {layer['min']:<10.3g} "
                      f"median {layer['median']:<10.3g} max {layer['max']:.3g}")


if __name__ == "__main__":
    main()
