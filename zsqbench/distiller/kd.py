"""Logit distillation: CE(student, y) + alpha * T^2 * KL(teacher || student at temperature T).

``kl_reduction`` matters and differs between the official codes (reference §9.2):
* ``"mean"`` — ``nn.KLDivLoss()``'s default as in GDFQ/Qimera: averaged over batch x classes, so the effective
  KL weight is alpha*T^2/C (40 for CIFAR-10 at T=20);
* ``"batchmean"`` — summed over classes, averaged over the batch, as in IntraQ/HAST (alpha=20, T=20).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from zsqbench.spine.interfaces import Batch, Distiller, RunContext


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
          reduction: str = "mean", detach_teacher: bool = True) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) with the given reduction (no T^2 factor). ``detach_teacher=False`` lets a
    gradient reach the teacher's input too (HAST's difficulty promotion differentiates the loss w.r.t. the images)."""
    if reduction not in ("mean", "batchmean"):
        raise ValueError(f"kl_reduction must be 'mean' or 'batchmean', got {reduction!r}")
    total = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                     F.softmax((teacher_logits.detach() if detach_teacher else teacher_logits) / temperature, dim=1), reduction="sum")
    # "mean" is spelled out (sum / numel) rather than passed to torch, which deprecates that reduction
    return total / (student_logits.numel() if reduction == "mean" else student_logits.shape[0])


def teacher_logits(ctx: RunContext, batch: Batch) -> torch.Tensor:
    if batch.teacher_logits is not None:
        return batch.teacher_logits
    with torch.no_grad():
        return ctx.teacher(batch.images)


class KDDistiller(Distiller):
    name = "kd"
    description = "CE + alpha*T^2*KL on logits (GDFQ: reduction 'mean'; IntraQ/HAST: 'batchmean', alpha 20)"

    class Settings(Distiller.Settings):
        temperature: float = Field(20.0, gt=0, description="KD temperature T")
        alpha: float = Field(1.0, ge=0, description="weight of T^2 * KL")
        kl_reduction: Literal["mean", "batchmean"] = Field("mean", description="element mean (GDFQ) or batch mean")
        ce_weight: float = Field(1.0, ge=0, description="weight of CE(student, label)")

    def loss(self, ctx: RunContext, batch: Batch):
        cfg = self.settings
        s = ctx.student(batch.images)
        t = teacher_logits(ctx, batch)
        ce = batch.label_loss(s)
        kl = kd_kl(s, t, cfg.temperature, cfg.kl_reduction)
        loss = cfg.ce_weight * ce + cfg.alpha * cfg.temperature ** 2 * kl
        return loss, {"ce": ce.item(), "kl": kl.item()}
