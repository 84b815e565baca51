"""zsqbench-example: a complete zsqbench method plugin in one module.

The method ``balanced-smooth`` is GDFQ with two changes, each one override of the generator family's base class
(``GeneratorSynthesizer``). Everything else is zsqbench's: the generator network, its Adam optimiser and schedule,
the teacher's BN-statistics hooks, one generator step per student step, the distiller (the core ``kd``), the
quantizer (the core ``minmax-ema``), the training loop, the evaluation and the run record.

1. ``sample_conditioning`` says which classes a batch is made for. GDFQ draws each image's class at random, so a
   batch of 16 images over 10 classes usually misses a few; here every class appears equally often
   (``labels="balanced"``). The targets are label-smoothed, ``(1 - smoothing) * onehot + smoothing / C``, and
   travel with the batch (``Batch.soft_labels``) to the distiller, whose CE term scores the student against them.
2. ``generator_loss`` is GDFQ's loss against those soft targets: CE(teacher(G(z | y)), target) + bns_weight * BNS.

Its settings per protocol are data: ``balanced_smooth.json`` beside this file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from zsqbench.api import Conditioning, Field, GeneratorSynthesizer, Method, hookimpl


class BalancedSmoothSynthesizer(GeneratorSynthesizer):
    name = "balanced-smooth"
    description = "GDFQ generator made for class-balanced batches with label-smoothed targets: CE + BNS"

    class Settings(GeneratorSynthesizer.Settings):   # GDFQ's generator settings (width, lr, ...) plus these
        labels: Literal["balanced", "uniform"] = Field(
            "balanced", description="each class equally often in a batch, or drawn at random (GDFQ)")
        smoothing: float = Field(0.1, ge=0, lt=1, description="targets (1 - smoothing) * onehot + smoothing / C")
        bns_weight: float = Field(0.1, ge=0, description="weight of the BNS term in the generator loss")

    def sample_conditioning(self, ctx, batch_size):
        c = ctx.num_classes
        if self.settings.labels == "balanced":
            offset = torch.randint(c, (1,), device=ctx.device)  # which classes get the remainder's extra images
            labels = (torch.arange(batch_size, device=ctx.device) + offset) % c
            labels = labels[torch.randperm(batch_size, device=ctx.device)]
        else:
            labels = ctx.random_labels(batch_size)
        s = self.settings.smoothing
        return Conditioning(labels, soft_labels=(1 - s) * F.one_hot(labels, c).float() + s / c)

    def generator_loss(self, ctx, images, cond, teacher_logits, student_logits=None):
        ce = cond.cross_entropy(teacher_logits)  # against cond.soft_labels
        bns = self.bns.loss()                    # BN-statistics error of the teacher's pass on these images
        loss = ce + self.settings.bns_weight * bns
        return loss, {"g_ce": ce.item(), "g_bns": bns.item()}


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(BalancedSmoothSynthesizer)
    registry.add_method(Method(
        "balanced-smooth", synthesizer="balanced-smooth", distiller="kd", quantizer="minmax-ema",
        settings=str(Path(__file__).with_name("balanced_smooth.json")),
        description="GDFQ with class-balanced, label-smoothed generator targets (the zsqbench-example plugin)"))
