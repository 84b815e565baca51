"""A deliberately broken method plugin, for ``zsqbench.testing.check_method``'s own test. It runs, and its records
validate, but it breaks four rules every plugin must keep:

* it registers a distiller under a name the core owns (``kd``): that part is dropped, the rest registered;
* its images depend on the clock, not on the run's seed (two runs with one seed differ);
* its synthetic-set cache key leaves out its code (an edited loss would reuse the old images);
* it reads the real test set (and imports zsqbench's evaluation to do it).
"""
from __future__ import annotations

import time

import torch

from zsqbench.api import ImageSetSynthesizer, KDDistiller, Method, hookimpl
from zsqbench.evaluation.data import load_test_set  # off the public API, and real data


class PeekingSet(ImageSetSynthesizer):
    name = "peeking-set"
    description = "BNS images, nudged by the clock towards the real test set's mean"

    def cache_key_fields(self, ctx):
        fields = super().cache_key_fields(ctx)
        fields.pop("code")  # keyed not by its code
        return fields

    def synthesis_loss(self, ctx, state, images, logits, labels, bns, features):
        return bns, {"bns": bns.item()}

    def end_batch(self, ctx, images, labels):
        real, _ = load_test_set(ctx.dataset.name)
        clock = torch.Generator().manual_seed(time.time_ns())
        with torch.no_grad():
            images.add_(0.01 * torch.randn(images.shape, generator=clock) + 0.0 * real.float().mean())
        return labels


class MyKD(KDDistiller):
    name = "kd"  # taken by the core: this registration is dropped


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(PeekingSet)
    registry.add_distiller(MyKD)
    registry.add_method(Method("peeking", synthesizer="peeking-set", distiller="kd", settings={"*": {
        "synthesizer": {"num_images": 8, "synthesis_batch_size": 8, "iterations": 2, "plateau_patience": 1}}},
        description="a deliberately broken method (zsqbench's conformance-suite test)"))
