"""Channel-attention feature distillation, shared by BAG (paper eq. 10-13) and HAST (reference §4).

attention(F) = per channel, the spatial mean of F^2 -> one C-vector per sample (optionally L2-normalised over the
channels, as HAST does). The blocks whose outputs are compared are chosen by the model zoo
(:meth:`zsqbench.teacher.zoo.ModelSpec.block_modules`: ResNet ``ResUnit.body``, MobileNetV1 ``pw_conv.bn``,
MobileNetV2 ``conv3``), never by the method, so this part works with any synthesizer.

Reductions differ between the two sources and are settings:
* BAG: ``(1/L) sum_l ||a_t - a_s||^2`` -> ``channel_reduction="sum"``, ``layer_reduction="mean"``; the paper's
  eq. 11 shows no normalisation, but unnormalised attentions make gamma = 30 swamp CE/KL (about 200 against 2 on
  the Fashion-MNIST ResNet-20 at W4A4; the student diverged within two steps), so ``normalize=True`` as in HAST,
  the code BAG cites for this loss (CA then starts near 0.5);
* HAST: ``lambda * sum_l mean((a_s - a_t)^2)`` -> ``channel_reduction="mean"``, ``layer_reduction="sum"``,
  ``normalize=True``.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from zsqbench.distiller.kd import KDDistiller, kd_kl
from zsqbench.spine.interfaces import Batch, RunContext
from zsqbench.teacher.taps import FeatureTap


def channel_attention(f: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, C): spatial mean of f^2 per channel, optionally L2-normalised over channels."""
    a = f.pow(2).mean(dim=(2, 3))
    return F.normalize(a, dim=1) if normalize else a


def attention_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor], *,
                   normalize: bool = False, channel_reduction: str = "sum",
                   layer_reduction: str = "mean", detach_teacher: bool = True) -> torch.Tensor:
    """Distance between the channel attentions of matching blocks (teacher features are constants unless
    ``detach_teacher=False``, for a gradient w.r.t. the input images as in HAST's difficulty promotion)."""
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(f"need matching, non-empty block lists (student {len(student_feats)}, "
                         f"teacher {len(teacher_feats)})")
    if channel_reduction not in ("sum", "mean") or layer_reduction not in ("sum", "mean"):
        raise ValueError("channel_reduction and layer_reduction must be 'sum' or 'mean'")
    per_layer = []
    for fs, ft in zip(student_feats, teacher_feats):
        d = (channel_attention(fs, normalize) - channel_attention(ft.detach() if detach_teacher else ft, normalize)).pow(2)
        per_layer.append(d.sum(1).mean() if channel_reduction == "sum" else d.mean())
    stacked = torch.stack(per_layer)
    return stacked.mean() if layer_reduction == "mean" else stacked.sum()


class ChannelAttentionKD(KDDistiller):
    """CE + alpha*T^2*KL on logits + ca_weight * channel-attention loss on the zoo's block outputs."""

    name = "kd-ca"
    description = ("CE + alpha*T^2*KL + ca_weight * channel-attention distance on block outputs "
                   "(BAG: weight 30, L2-normalised, channel sum, layer mean; HAST: channel mean, layer sum)")

    class Settings(KDDistiller.Settings):
        ca_weight: float = Field(30.0, ge=0, description="weight of the channel-attention loss")
        ca_normalize: bool = Field(True, description="L2-normalise attentions over channels (HAST)")
        ca_channel_reduction: Literal["sum", "mean"] = "sum"
        ca_layer_reduction: Literal["sum", "mean"] = "mean"

    def setup(self, ctx: RunContext) -> None:
        self.teacher_tap = FeatureTap(ctx.teacher, ctx.model.block_modules(ctx.teacher), detach=True)
        self.student_tap = FeatureTap(ctx.student, ctx.model.block_modules(ctx.student))
        if len(self.teacher_tap.names) != len(self.student_tap.names):
            raise RuntimeError("teacher and student have different feature blocks")

    def teacher_outputs(self, ctx: RunContext, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits and block features for ``batch``, reusing the synthesizer's teacher pass if it was on
        exactly these images."""
        if batch.teacher_logits is not None and self.teacher_tap.saw(batch.images):
            return batch.teacher_logits.detach(), list(self.teacher_tap.features)
        with torch.no_grad():
            logits = ctx.teacher(batch.images)
        return logits, list(self.teacher_tap.features)

    def ca_loss(self, teacher_feats: list[torch.Tensor]) -> torch.Tensor:
        cfg = self.settings
        return attention_loss(self.student_tap.features, teacher_feats, normalize=cfg.ca_normalize,
                              channel_reduction=cfg.ca_channel_reduction,
                              layer_reduction=cfg.ca_layer_reduction)

    def loss(self, ctx: RunContext, batch: Batch):
        cfg = self.settings
        t, t_feats = self.teacher_outputs(ctx, batch)
        s = ctx.student(batch.images)
        ce = batch.label_loss(s)
        kl = kd_kl(s, t, cfg.temperature, cfg.kl_reduction)
        ca = self.ca_loss(t_feats)
        loss = cfg.ce_weight * ce + cfg.alpha * cfg.temperature ** 2 * kl + cfg.ca_weight * ca
        return loss, {"ce": ce.item(), "kl": kl.item(), "ca": ca.item()}
