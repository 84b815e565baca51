"""What a method may know about a dataset: its shape, classes and normalisation — never its images.

Datasets are a registry kind like models and methods: a plugin registers one with
``registry.add_dataset(DatasetInfo(...), loader)`` (see :meth:`zsqbench.spine.registry.Registry.add_dataset`; the loader
interface is :class:`zsqbench.evaluation.data.DatasetLoader`), and the core finds it by the name a
:class:`~zsqbench.teacher.zoo.ModelSpec` gives (``ModelSpec.dataset``). The built-in Fashion-MNIST, CIFAR-10/100 and
ImageNet below are registered that way by :mod:`zsqbench.builtin`. Look a dataset up with
:func:`zsqbench.spine.registry.dataset_info`.

The images themselves are read only by :mod:`zsqbench.evaluation.data` (and the teacher-training script).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset as methods see it.

    ``name`` is the registry key, the ``@dataset`` part of a model key (``resnet20@fmnist``).
    ``image_shape`` is (C, H, W) as the *network* sees it. ``mean``/``std`` are the standard per-channel
    normalisation of pixels in [0, 1] (one value per channel): what a teacher without a teacher card is fed.
    ``stored_size`` is (H, W) of the stored images when they are smaller than the network input (Fashion-MNIST's
    28x28 under a 32x32 network): the evaluation step brings them to ``image_shape`` as the teacher card's ``fit``
    says (zero-pad by default, or resize), and only such datasets accept a ``fit`` in a card. Leave it ``None``
    when the loader's images already have the network's size. ``default_fit`` (``"pad"`` or ``"resize"``, with a
    ``stored_size`` only) is how this dataset's small images reach the network when a teacher's card does not say
    (default: ``"pad"``).
    """
    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (C, H, W) as the network sees it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str = ""
    stored_size: tuple[int, int] | None = None  # (H, W) on disk, when smaller than image_shape[1:]
    default_fit: str | None = None  # "pad" | "resize": the fit of a teacher whose card names none (default pad)

    def __post_init__(self):
        if self.default_fit is not None and (self.default_fit not in ("pad", "resize") or not self.stored_size):
            raise ValueError(f"dataset {self.name!r}: default_fit must be 'pad' or 'resize', and only with a "
                             f"stored_size (images smaller than the network input), got {self.default_fit!r}")
        c = self.image_shape[0] if len(self.image_shape) == 3 else None
        if c is None or len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"dataset {self.name!r}: image_shape must be (C, H, W) and mean/std have C values, "
                             f"got image_shape={self.image_shape}, mean={self.mean}, std={self.std}")


# The built-in datasets (registered with their loaders by zsqbench.builtin).

# Fashion-MNIST 28x28 zero-padded to 32x32 so CIFAR architectures apply unchanged. Mean/std are the
# 28x28 train-split statistics (0.2860, 0.3530); padding is added in pixel space, before normalising.
FMNIST = DatasetInfo("fmnist", 10, (1, 32, 32), (0.2860,), (0.3530,), "Fashion-MNIST, 1x28x28 zero-padded to 32x32",
                     stored_size=(28, 28))
# Normalisations as in the GDFQ-lineage dataloaders (reference §0).
CIFAR10 = DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR-10")
CIFAR100 = DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4867, 0.4408), (0.2675, 0.2557, 0.2761),
                       "CIFAR-100")
IMAGENET = DatasetInfo("imagenet", 1000, (3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                       "ImageNet-1k val: resize 256, centre crop 224")
