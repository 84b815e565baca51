"""What a method may know about a dataset: its shape, classes and normalisation — never its images.

The images themselves are read only by :mod:`zsqbench.evaluation.data` (and the teacher-training script).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) as the network sees it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""


DATASETS: dict[str, DatasetInfo] = {
    # Fashion-MNIST 28x28 zero-padded to 32x32 so CIFAR architectures apply unchanged. Mean/std are the
    # 28x28 train-split statistics (0.2860, 0.3530); padding is added in pixel space, before normalising.
    "fmnist": DatasetInfo("fmnist", 10, (1, 32, 32), (0.2860,), (0.3530,),
                          "Fashion-MNIST, 1x28x28 zero-padded to 32x32"),
    # Normalisations as in the GDFQ-lineage dataloaders (reference §0).
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                           "CIFAR-10"),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4867, 0.4408), (0.2675, 0.2557, 0.2761),
                            "CIFAR-100"),
    "imagenet": DatasetInfo("imagenet", 1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                            "ImageNet-1k val: resize 256, centre crop 224"),
}
