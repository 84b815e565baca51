"""Synthetic set vs real test set, as the teacher sees them (record "diagnostics.data").

* ``intra_class_cosine_distance``: per class, the mean over pairs of distinct images of 1 - cos(f_i, f_j) of the
  teacher's pooled features, averaged over the classes with two images or more (IntraQ reports 0.42 on its
  synthetic set against 0.44 on real data). Computed from per-class sums of L2-normalised features:
  sum_{i != j} cos(f_i, f_j) = |sum_i f_i/|f_i||^2 - n, so it streams over any number of images.
* ``value_mean/std/min/max``: the images' values in the teacher's normalised input space; a synthetic set far
  outside the real range is a known way for fine-tuning to blow up.
* ``bns_error``: the BNS error (:class:`zsqbench.synthesizer.bns.BNStatHooks`, batch form) averaged over batches of
  the evaluation batch size, the same for both sets, so the two numbers compare.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from zsqbench.synthesizer.bns import BNStatHooks


class SetStats:
    """Streaming statistics of one image set: add batches, then :meth:`summary`."""

    def __init__(self):
        self.class_sums: dict[int, torch.Tensor] = {}
        self.class_counts: dict[int, int] = {}
        self.n = 0
        self.values = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.low, self.high = float("inf"), float("-inf")
        self.bns: list[float] = []

    def add(self, images: torch.Tensor, labels: torch.Tensor, features: torch.Tensor,
            bns: float | None = None) -> None:
        x = images.detach().double()
        self.n += len(images)
        self.values += x.numel()
        self.total += float(x.sum())
        self.total_sq += float(x.pow(2).sum())
        self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))
        unit = F.normalize(features.detach().flatten(1).double(), dim=1)
        sums = torch.zeros(int(labels.max()) + 1, unit.shape[1], dtype=unit.dtype, device=unit.device)
        sums.index_add_(0, labels, unit)
        counts = torch.bincount(labels, minlength=sums.shape[0])
        for k in counts.nonzero().flatten().tolist():
            self.class_sums[k] = self.class_sums.get(k, 0) + sums[k].cpu()
            self.class_counts[k] = self.class_counts.get(k, 0) + int(counts[k])
        if bns is not None:
            self.bns.append(bns)

    def intra_class_distance(self) -> float | None:
        per_class = []
        for k, n in self.class_counts.items():
            if n >= 2:
                mean_cos = (float(self.class_sums[k].pow(2).sum()) - n) / (n * (n - 1))
                per_class.append(1.0 - mean_cos)
        return sum(per_class) / len(per_class) if per_class else None

    def summary(self) -> dict:
        mean = self.total / max(1, self.values)
        var = max(0.0, self.total_sq / max(1, self.values) - mean ** 2)
        dist = self.intra_class_distance()
        return {"images": self.n,
                "intra_class_cosine_distance": None if dist is None else round(dist, 5),
                "classes": sum(1 for n in self.class_counts.values() if n >= 2),
                "value_mean": round(mean, 5), "value_std": round(var ** 0.5, 5),
                "value_min": round(self.low, 5), "value_max": round(self.high, 5),
                "bns_error": round(sum(self.bns) / len(self.bns), 6) if self.bns else None}


def has_module(net: nn.Module, name: str) -> bool:
    try:
        net.get_submodule(name)
        return True
    except AttributeError:
        return False


class TeacherProbe:
    """While active, gathers the teacher's pooled features and BNS error of every forward pass into a
    :class:`SetStats` (one pass serves top-1 and diagnostics)."""

    def __init__(self, teacher: nn.Module, pool_module: str):
        self.teacher, self.stats = teacher, SetStats()
        self._feature: torch.Tensor | None = None
        self._bns = BNStatHooks(teacher)
        self._handle = teacher.get_submodule(pool_module).register_forward_hook(self._keep)

    def _keep(self, module, inputs, output):
        self._feature = output

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with self._bns.recording():
            logits = self.teacher(images)
        self.stats.add(images, labels, self._feature, float(self._bns.loss()) if self._bns.layers else None)
        return logits

    def close(self) -> dict:
        self._handle.remove()
        self._bns.remove()
        return self.stats.summary()
