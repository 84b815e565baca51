"""IntraQ (Zhong et al., CVPR 2022; zysxmu/IntraQ), reference §2.

Faithful to the official ``data_generate/distill_data.py`` and ``trainer_direct.py``:

* synthesizer ``intraq`` (on the shared image optimiser, :mod:`zsqbench.synthesizer.imageopt`): images from
  N(0, 1), Adam lr 0.5 + ReduceLROnPlateau; at each step, with probability 0.5, every image is shown to the teacher
  as its own random resized crop (area 0.5-1) + flip (local object reinforcement). The loss has weight 1 on each of
  * BNS (mean over layers of MSE(mean) + MSE(biased var): the shared :class:`BNStatHooks` exactly);
  * soft inception loss: mean over the batch of (softmax(t)_y - target)^2, where target ~ U(eps, 1) for a random
    half of the images (drawn once per batch) and 1 for the rest;
  * marginal distance constraint on the teacher's pooled feature f: d = 1 - cos(f, C_y) with C_y the mean feature
    of every *earlier* batch's finished (un-augmented) images of class y, fixed while a batch is optimised;
    loss = sum(max(0, lambda_l - d) * m)/(sum m + 1e-6) + sum(max(0, d - lambda_u) * m)/(sum m + 1e-6), m = 1 where
    class y has a centre (the first batch has none). The official code also computes features of "other classes"
    and never uses them; they are left out.
* fine-tuning: the core ``kd`` distiller with IntraQ's KL(batchmean) * alpha * T^2 (alpha 20, T 20) + CE, on the set
  with RandomResizedCrop(0.5-1) + flip per image.

Choices (see intraq.json for the values per protocol and dataset):
* Fashion-MNIST (cpu/smoke) takes the CIFAR-10 values (eps 0.95, lambda_l 0.05, lambda_u 0.8): same class count
  and resolution; choosing them on Fashion-MNIST data would need real images.
* Activation calibration: the official trainer calibrates on the images of a GDFQ generator it trains during
  epochs 0-3, not on the IntraQ set. ``cpu`` and ``paper`` do the same (``calibration_synthesizer: gdfq``, batch 16);
  ``--set synthesizer.calibration_synthesizer=null`` calibrates on the method's own set instead (what the paper's
  text suggests). Chosen on the dev split (``eval.split=dev``), not the test split; the figures are in
  docs/methods.md ("How the image set is made").
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from zsqbench.api import CropScale, Fraction, ImageSetSynthesizer, Method, hookimpl

SETTINGS = str(Path(__file__).with_name("intraq.json"))


def soft_inception_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of (softmax(logits)_y - target)^2: MSE on the true class's probability only."""
    p_true = F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return (p_true - targets).pow(2).mean()


def marginal_distance_loss(features: torch.Tensor, centres: torch.Tensor, has_centre: torch.Tensor,
                           lambda_l: float, lambda_u: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) margin terms on the cosine distance of each feature to its class centre, averaged over the
    samples whose class has a centre (IntraQ's marginal distance constraint, official code's form)."""
    distance = 1.0 - F.cosine_similarity(features, centres, dim=1, eps=1e-6)
    norm = has_centre.sum() + 1e-6
    lower = (F.relu(lambda_l - distance) * has_centre).sum() / norm
    upper = (F.relu(distance - lambda_u) * has_centre).sum() / norm
    return lower, upper


class IntraQSynthesizer(ImageSetSynthesizer):
    name = "intraq"
    description = ("IntraQ: BNS + soft inception loss + marginal distance to earlier class centres, with local "
                   "object reinforcement (random resized crop + flip)")

    class Settings(ImageSetSynthesizer.Settings):
        synthesis_augment_p: Fraction = 0.5
        synthesis_crop_scale: CropScale = [0.5, 1.0]
        target_low: Fraction = Field(0.95, description="soft targets ~ U(target_low, 1) (epsilon)")
        soft_fraction: Fraction = Field(0.5, description="share of each batch with soft targets")
        lambda_l: float = Field(0.05, ge=0, le=2, description="lower margin on the cosine distance to the centre")
        lambda_u: float = Field(0.8, ge=0, le=2, description="upper margin on the cosine distance to the centre")
    uses_pooled_features = True

    def synthesize(self, ctx):
        self.centre_sums: torch.Tensor | None = None  # (classes, feature dim), over finished batches
        self.centre_counts = torch.zeros(ctx.num_classes, device=ctx.device)
        return super().synthesize(ctx)

    def begin_batch(self, ctx, labels, generator):
        cfg = self.settings
        n = len(labels)
        soft = torch.rand(n, generator=generator, device=labels.device) < cfg.soft_fraction
        u = torch.empty(n, device=labels.device).uniform_(cfg.target_low, 1.0, generator=generator)
        targets = torch.where(soft, u, torch.ones_like(u))
        counts = self.centre_counts[labels]
        if self.centre_sums is None:
            centres = None
        else:
            centres = self.centre_sums[labels] / counts.clamp_min(1)[:, None]
        return {"targets": targets, "centres": centres, "has_centre": (counts > 0).float()}

    def synthesis_loss(self, ctx, state, images, logits, labels, bns, features):
        cfg = self.settings
        sil = soft_inception_loss(logits, labels, state["targets"])
        loss, parts = bns + sil, {"bns": bns.item(), "sil": sil.item()}
        if state["centres"] is not None:
            lower, upper = marginal_distance_loss(features, state["centres"], state["has_centre"],
                                                  cfg.lambda_l, cfg.lambda_u)
            loss = loss + lower + upper
            parts.update(mdc_lower=lower.item(), mdc_upper=upper.item())
        return loss, parts

    @torch.no_grad()
    def end_batch(self, ctx, images, labels):
        feats = self.pooled_features(ctx, images)
        if self.centre_sums is None:
            self.centre_sums = torch.zeros(ctx.num_classes, feats.shape[1], device=feats.device)
        self.centre_sums.index_add_(0, labels, feats)
        self.centre_counts += torch.bincount(labels, minlength=ctx.num_classes).float()
        return labels


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(IntraQSynthesizer)
    registry.add_method(Method(
        "intraq", synthesizer="intraq", distiller="kd", quantizer="minmax-ema", settings=SETTINGS,
        description="Synthetic images with intra-class heterogeneity (soft inception loss, marginal distance "
                    "constraint, local object reinforcement), KD fine-tuning", paper="Zhong et al., CVPR 2022"))
