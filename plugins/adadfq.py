"""AdaDFQ (Qian et al., CVPR 2023; hfutqian/AdaDFQ) and its special case AdaSG (AAAI 2023), reference §3.

Faithful to the official CIFAR trainer:

* synthesizer ``adadfq``: the GDFQ generator (shared, :mod:`zsqbench.synthesizer.generator`) trained with
  ``margin + beta*(alpha_ds*CE(t - q, y) + alpha_as*CE(t + q, y)) + bns_weight*BNS``, where t and q are the
  teacher's and the student's logits (the student is not detached: the generator gets its feedback through it) and
  ``margin = mean max(0, lambda_l - h') + mean max(0, h' - lambda_u)`` on the batch-normalised entropy
  ``h' = (h - min h)/(log C - min h)``, ``h = H(softmax(t - q))``;
* distiller ``logit-entropy``: the student loss ``-T^2 * mean H(softmax((t - q)/T))`` — no CE and no KL (the
  official hocon's alpha/temperature are unused by its code).

What the official code hard-codes becomes a setting: the margin loss's zero vector of size 16 (so the official code
runs only at batch 16) is gone — the loss works at any batch size; T (20 for CIFAR, 5 for ImageNet) is
``distiller.temperature``. ``adasg`` is the AdaSG setting of the same plugin (lambda_l 0.3, lambda_u 0.8, both CE
weights 0.1, BNS weight 1), not a copy. Hyper-parameters per protocol and dataset are data: ``adadfq.json``.

One deliberate difference: the student's feedback pass for the generator does not move its activation ranges
(the official code lets it during warm-up epochs 0-3, so each batch is seen twice by the EMA); ranges calibrate on
the student's own forward pass, once per step, like every other method here.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from zsqbench.api import Distiller, GeneratorSynthesizer, Method, hookimpl
from zsqbench.api import teacher_logits as batch_teacher_logits

SETTINGS = str(Path(__file__).with_name("adadfq.json"))


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample entropy of softmax(logits / T)."""
    logp = F.log_softmax(logits / temperature, dim=1)
    return -(logp.exp() * logp).sum(1)


def margin_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor, lambda_l: float,
                lambda_u: float) -> torch.Tensor:
    """AdaDFQ's adaptive margin on the batch-normalised disagreement entropy (any batch size)."""
    h = entropy(teacher_logits - student_logits)
    h_min = h.min()
    h_norm = (h - h_min) / (math.log(teacher_logits.shape[1]) - h_min).clamp_min(1e-12)
    return F.relu(lambda_l - h_norm).mean() + F.relu(h_norm - lambda_u).mean()


class AdaDFQSynthesizer(GeneratorSynthesizer):
    name = "adadfq"
    description = ("GDFQ generator with AdaDFQ's loss: entropy margin on softmax(t-q) + disagreement/agreement CE "
                   "+ BNS (student feedback)")

    class Settings(GeneratorSynthesizer.Settings):
        lambda_l: float = Field(0.1, ge=0, le=1, description="lower entropy margin")
        lambda_u: float = Field(0.8, ge=0, le=1, description="upper entropy margin")
        alpha_ds: float = Field(0.2, ge=0, description="weight of the disagreement CE(t - q)")
        alpha_as: float = Field(0.1, ge=0, description="weight of the agreement CE(t + q)")
        beta: float = Field(1.0, ge=0, description="weight of both CE terms")
        bns_weight: float = Field(1.0, ge=0)
    student_feedback = True

    def generator_loss(self, ctx, images, cond, teacher_logits, student_logits=None):
        cfg = self.settings
        labels = cond.labels
        t, q = teacher_logits, student_logits
        margin = margin_loss(t, q, cfg.lambda_l, cfg.lambda_u)
        ds = F.cross_entropy(t - q, labels)   # disagreement: images the student gets wrong
        agree = F.cross_entropy(t + q, labels)  # agreement: images both still classify as y
        bns = self.bns.loss()
        loss = margin + cfg.beta * (cfg.alpha_ds * ds + cfg.alpha_as * agree) + cfg.bns_weight * bns
        return loss, {"g_margin": margin.item(), "g_ds": ds.item(), "g_as": agree.item(), "g_bns": bns.item()}


class LogitEntropyDistiller(Distiller):
    name = "logit-entropy"
    description = "AdaDFQ's student loss: -T^2 * mean entropy of softmax((t - q)/T) (logit matching up to a shift)"

    class Settings(Distiller.Settings):
        temperature: float = Field(20.0, gt=0, description="T of -T^2 * H(softmax((t - q)/T))")

    def loss(self, ctx, batch):
        t = batch_teacher_logits(ctx, batch).detach()
        q = ctx.student(batch.images)
        temperature = self.settings.temperature
        h = entropy(t - q, temperature).mean()
        return -temperature ** 2 * h, {"entropy": h.item()}


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(AdaDFQSynthesizer)
    registry.add_distiller(LogitEntropyDistiller)
    registry.add_method(Method(
        "adadfq", synthesizer="adadfq", distiller="logit-entropy", quantizer="minmax-ema", settings=SETTINGS,
        description="Adaptive data-free quantization: generator with an adaptive entropy margin on the student's "
                    "disagreement", paper="Qian et al., CVPR 2023"))
    registry.add_method(Method(
        "adasg", synthesizer="adadfq", distiller="logit-entropy", quantizer="minmax-ema", settings=SETTINGS,
        description="AdaSG: the AdaDFQ plugin with AdaSG's values (lambda_l 0.3, CE weights 0.1, BNS weight 1)",
        paper="Qian et al., AAAI 2023"))
