"""The core's own components, registered through the ``zsqbench`` entry point like any third-party plugin."""
from __future__ import annotations

from zsqbench.distiller.attention import ChannelAttentionKD
from zsqbench.distiller.kd import KDDistiller
from zsqbench.evaluation.data import CIFARLoader, FashionMNISTLoader, ImageNetValLoader
from zsqbench.protocols import BUILTIN_DIR
from zsqbench.quantizer.components import MinMaxEMAQuantizer, NoQuantizer
from zsqbench.spine.hookspecs import hookimpl
from zsqbench.teacher.datasets import CIFAR10, CIFAR100, FMNIST, IMAGENET
from zsqbench.teacher.zoo import builtin_models


@hookimpl
def zsqbench_register(registry):
    registry.add_quantizer(MinMaxEMAQuantizer)
    registry.add_quantizer(NoQuantizer)
    registry.add_distiller(KDDistiller)
    registry.add_distiller(ChannelAttentionKD)
    registry.add_dataset(FMNIST, FashionMNISTLoader)
    registry.add_dataset(CIFAR10, CIFARLoader(10))
    registry.add_dataset(CIFAR100, CIFARLoader(100))
    registry.add_dataset(IMAGENET, ImageNetValLoader)
    for spec in builtin_models():
        registry.add_model(spec)
    for path in sorted(BUILTIN_DIR.glob("*.json")):
        registry.add_protocol(path)
