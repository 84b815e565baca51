"""SynQ (Kim, Kim & Kang, ICLR 2025; snudm-starlab/SynQ@8681480): synthesis-aware fine-tuning on HAST.

What the released code runs (``src/data_generate/*``, ``src/trainer_direct.py``, ``src/main_direct.py``,
``src/gradcam.py``; line numbers at that commit):

* synthesizer ``synq``: HAST's hard-sample synthesis (BNS + beta * mean[(1 - p_y)^gamma * CE], the shared
  :class:`zsqbench_plugins.hast.HardSampleSynthesizer`) with **beta 0.1, gamma 0.5 for CIFAR and ImageNet alike**
  (``run_generate_cifar100.sh``/``run_generate_imagenet.sh`` L8-9; HAST uses 10/2 on CIFAR); 5120 images in
  batches of 256, Adam lr 0.5, plateau patience 50, 1000 iterations; crop (0.4-1) + flip with p 0.5 on ImageNet only
  (``distill_data.py`` L394-429). Then a **Gaussian low-pass filter** G(u, v) = exp(-D(u, v)^2 / (2 D0^2)), D the
  distance to the centre of the fftshift-ed spectrum, x^F = Re F^-1(G * F(x)) (``trainer_direct.py`` L161-184,
  paper eq. 4), applied to every fine-tuning batch after its crop + flip (L480-483), D0 = 80 (``main_direct.py``
  L622). The teacher and the student both see the filtered images; activation calibration (a GDFQ generator during
  the warm-up, as HAST's trainer) does not.
* distiller ``synq`` (on HAST's): L = KL + lambda_CE * CE_easy + lambda * L_FA on the filtered batch x,
  + lambda_pert * (KL + lambda_CE * CE_easy [+ lambda * L_FA on ImageNet only, L526-529]) on x' = x + eps * sign(grad_x
  of the first part) (HAST's difficulty promotion, L511-524), + lambda_CAM * L_CAM(x) (L531-535).
  KL = alpha T^2 KL(batchmean), alpha = T = 20 (hocon); lambda = 1000, eps = 0.01 (``options.py`` L91-92 hard-codes
  them, as HAST's); lambda_pert 1 (``main_direct.py`` L618).
  - *Soft labels for difficult samples*: difficulty = 1 - softmax(teacher(x))_y; CE only where difficulty < tau
    (tau 0.5, L620; trainer L495-499): difficult samples learn from the teacher's soft output (KL) alone. The mask
    of x is reused on x'. The official CE averages over the whole batch (a masked sample adds the constant log C);
    here ``sum(mask * CE) / B``: the same gradient without the constant.
  - *CAM alignment*: L_CAM = mean over (B, 1, H, W) of (S_t - S_s)^2 (``F.mse_loss``, L255-274). S is Grad-CAM on
    each network's **last Conv2d** (in module order; ``gradcam.py`` L94-97 ignores the ``layer_name`` it is given):
    weights = spatial mean of d score / d A clamped at 1e-10 (L179), S = ReLU(sum_k w_k A_k), bilinear to the input
    size, min-max normalised per image (eps 1e-10). score = the logit of each network's **own predicted class**
    (L148-149). The gradient is taken without ``create_graph``, so the weights are constants and L_CAM trains the
    student through its activations A only; the teacher's map is a constant target.
  - lambda_CE 5 and lambda_CAM 200 are the argparse defaults (L617, L621); ``run_imagenet.sh`` passes 0.5 and 50.

Where the paper (ICLR 2025 camera-ready) differs, the code is the default and the paper is a setting:

* ``distiller.cam_class``: ``"predicted"`` (code) or ``"label"`` (eq. 5: the score of the true class y_i).
* ``distiller.cam_clamp_weights``: the code's clamp of the Grad-CAM weights at 1e-10 (eq. 5 has none).
* ``synthesizer.lowpass_at``: ``"batch"`` (code: every sampled batch, after its crop + flip) or ``"set"``
  (Algorithm 1 l. 5: the whole set once, before fine-tuning; crops are then taken from filtered images).
* eq. 6 has no channel-attention term and KL weight 1: the code keeps HAST's L_FA (lambda 1000) and alpha T^2;
  ``distiller.ca_weight=0`` drops L_FA. The paper's L_CAM is a squared Frobenius norm; the code's (used here) is the
  mean over pixels, the scale its lambda_CAM values were chosen for.
* Not implemented: the paper's synthesis baseline (App. D) adds TexQ's calibration centres and a layered BNS loss.
  The released code has them behind ``generate_data.py --lbns`` (``distill_data.py`` L53-198, L457-475: centres
  from 1500 Adam steps of CE*5 + layer-weighted BNS, then 0.4 * BNS + focal CE + 0.02 * L-BNS), but neither
  ``run_generate_*.sh`` passes it; what the scripts run is HAST's loss above.
* Better than the code, bit-identical where the code is finite: ``synthesizer.focal_floor`` (default 1e-12)
  floors 1 - p_y in the focal weight. With gamma 0.5, (1 - p_y)^gamma has an infinite derivative at p_y = 1, which
  float32 reaches once the teacher's logit margin passes ~17 (1 - p_y has a resolution of 6e-8 there, so a floor
  below it changes no other value); the official code then turns the images NaN. On the `cpu` ResNet-20 teacher
  that ended seed 0's synthesis at iteration 288. ``focal_floor=null`` is the code's unguarded weight.
* Better than the code, bit-identical where A has spatial extent: ``distiller.cam_flat`` (default ``"zero"``). The
  last Conv2d can be 1 x 1: MobileNetV2's classifier conv after the global pool (pytorchcv's, as on ImageNet). Its
  Grad-CAM map is constant, 0 after min-max normalisation in exact arithmetic; in float32 the upsampled copies differ
  in their last bit and the code's normalisation stretches that rounding to [0, 1], with a gradient of order 1 / A
  that grows without bound as the predicted logit nears 0. On the `cpu` MobileNetV2 W4A3 student (lambda_CAM 200,
  lr 1e-5) that ended seed 0 at chance (10.00 % test; KL 5e6, CE 5e7 on average over the run). ``"zero"`` gives such
  maps their exact value (0, no gradient), so on a 1 x 1 layer the CAM term is 0; ``"code"`` keeps the stretched
  rounding. ``distiller.cam_layer`` picks a layer with spatial extent instead (e.g. ``features.final_block.conv``).
* Not reproduced (official quirks): the trainer re-creates the student's Grad-CAM every iteration, which runs the
  student on an all-zero image (``gradcam.py`` L105-112) — during the four calibration epochs that zero image also
  moves the activation ranges; and ``while any(grad == 0): grad += 1e-10`` (L167-168), which changes the weights by
  at most 1e-10 before the clamp.

Per-dataset values (synq.json ``paper``): ImageNet lambda_CE 0.5, lambda_CAM 50 (``run_imagenet.sh``), batch 16 (paper
App. D; the hocon's 4 on one GPU), lr 1e-6; tau 0.7 on CIFAR-10 (App. C.11: the best tau for R-20 on CIFAR-10),
0.5 elsewhere. The paper gives no CIFAR lr, lambda_CE, lambda_CAM or D0 (searched over {1e-4, 1e-5, 1e-6}, {5, 0.5,
0.05, 0.005}, {20 ... 2000}, {20 ... 100}); the code's defaults are used, and the lr of IntraQ's trainer at the
paper's CIFAR batch 256 (1e-4). At 32 x 32, D0 = 80 is a mild filter (G >= exp(-512/12800) = 0.96 at the corners);
Fashion-MNIST (cpu/smoke) takes the CIFAR-10 values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from zsqbench.api import FeatureTap, Fraction, Method, UserError, attention_loss, hookimpl, kd_kl
from zsqbench_plugins.hast import HardSampleSynthesizer, HASTDistiller

SETTINGS = str(Path(__file__).with_name("synq.json"))


# --- the three ideas, as plain functions -----------------------------------------------------------------------

def guarded_focal_ce(logits: torch.Tensor, labels: torch.Tensor, gamma: float, floor: float | None) -> torch.Tensor:
    """HAST's focal CE, mean[(1 - p_y)^gamma * CE(logits, y)], with 1 - p_y floored at ``floor`` (None: unguarded,
    as the official code): for gamma < 1 the weight's derivative is infinite at p_y = 1."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    rest = 1 - F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    return ((rest if floor is None else rest.clamp_min(floor)).pow(gamma) * ce).mean()


def gaussian_lowpass(images: torch.Tensor, d0: float) -> torch.Tensor:
    """Re F^-1(G * F(x)) per image and channel, G = exp(-D^2 / (2 d0^2)) with D the distance of each frequency to
    the centre (W//2, H//2) of the fftshift-ed spectrum (paper eq. 4): the DC term is kept, frequency (u, v) is
    scaled by exp(-(u^2 + v^2) / (2 d0^2))."""
    h, w = images.shape[-2:]
    real = torch.float64 if images.dtype == torch.float64 else torch.float32
    ys = torch.arange(h, device=images.device, dtype=real) - h // 2
    xs = torch.arange(w, device=images.device, dtype=real) - w // 2
    gain = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * float(d0) ** 2))
    spectrum = torch.fft.fftshift(torch.fft.fft2(images, dim=(-2, -1)), dim=(-2, -1)) * gain
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1)), dim=(-2, -1)).real.to(images.dtype)


def grad_cam(logits: torch.Tensor, activations: torch.Tensor, classes: torch.Tensor, size: tuple[int, int],
             clamp_weights: bool = True, eps: float = 1e-10, flat: Literal["zero", "code"] = "zero") -> torch.Tensor:
    """Grad-CAM saliency (B, 1, H, W) in [0, 1] for ``classes``, as the official ``gradcam.py``: the weights are the
    spatial mean of d logit_c / d A (a constant: no ``create_graph``), clamped at 1e-10; ReLU of the weighted sum of
    the channels, bilinear to ``size``, min-max normalised per image. Differentiable in ``activations``.

    ``flat``: a map that is constant at A's own resolution (always where A is 1 x 1, e.g. a classifier after the
    global pool) is 0 after the normalisation in exact arithmetic. In float32 the bilinear weights of the upsampled
    copies differ in their last bit, and the code's normalisation stretches that rounding to [0, 1], with a gradient
    of order 1 / A. ``"zero"`` returns the exact value (0, no gradient) for such images and the code's map for every
    other image, bit for bit; ``"code"`` keeps the code's map everywhere."""
    score = logits.gather(1, classes[:, None]).sum()  # each image's score depends on its own activations only
    grads, = torch.autograd.grad(score, activations, retain_graph=True)
    weights = grads.mean(dim=(2, 3))
    if clamp_weights:
        weights = weights.clamp_min(1e-10)
    native = F.relu((weights[:, :, None, None] * activations).sum(1, keepdim=True))
    cam = F.interpolate(native, size=size, mode="bilinear", align_corners=False)
    lo = cam.flatten(1).min(1).values[:, None, None, None]
    hi = cam.flatten(1).max(1).values[:, None, None, None]
    normalised = (cam - lo) / (hi - lo + eps)
    if flat == "code":
        return normalised
    constant = (native.flatten(1).amax(1) == native.flatten(1).amin(1))[:, None, None, None]
    return torch.where(constant, torch.zeros_like(normalised), normalised)


def cam_alignment_loss(teacher_map: torch.Tensor, student_map: torch.Tensor) -> torch.Tensor:
    """Mean over every pixel of (S_t - S_s)^2, the teacher's map a constant."""
    return F.mse_loss(student_map, teacher_map.detach())


def easy_mask(teacher_logits: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """1.0 where the sample is easy, difficulty = 1 - softmax(teacher)_y < tau (the official strict '<'), else 0."""
    p_true = F.softmax(teacher_logits.detach(), dim=1).gather(1, labels[:, None]).squeeze(1)
    return ((1 - p_true) < tau).to(teacher_logits.dtype)


def selective_ce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(mask * CE) / B: cross-entropy on the easy samples only, averaged over the whole batch (difficult samples
    are left to the KL term's soft labels)."""
    return (F.cross_entropy(logits, labels, reduction="none") * mask).sum() / len(labels)


def last_conv(net: nn.Module) -> tuple[str, nn.Module]:
    """The last ``nn.Conv2d`` in module order (the official Grad-CAM target layer)."""
    found = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not found:
        raise UserError(f"SynQ's Grad-CAM needs a Conv2d layer; {type(net).__name__} has none")
    return found[-1]


# --- components --------------------------------------------------------------------------------------------------

class SynQSynthesizer(HardSampleSynthesizer):
    name = "synq"
    description = "SynQ: HAST hard samples (beta 0.1, gamma 0.5), Gaussian low-pass filtered for fine-tuning"
    USE_KEYS = HardSampleSynthesizer.USE_KEYS + ("lowpass_d0", "lowpass_at")  # the filter is not in the set's key

    class Settings(HardSampleSynthesizer.Settings):
        beta: float = Field(0.1, ge=0, description="weight of the focal CE (SynQ's scripts: 0.1 on every dataset)")
        gamma: float = Field(0.5, ge=0, description="focal exponent (SynQ's scripts: 0.5)")
        focal_floor: float | None = Field(
            1e-12, gt=0, lt=6e-8, description="floor on 1 - p_y in the focal weight, below float32's resolution of "
            "it: keeps the gradient finite at p_y = 1 (null: the code's unguarded weight, NaN there for gamma < 1)")
        lowpass_d0: float | None = Field(80.0, gt=0, description="Gaussian low-pass D0 (null: no filter)")
        lowpass_at: Literal["batch", "set"] = Field(
            "batch", description="filter each sampled batch after its crop + flip (code) or the set once (paper)")

    def synthesis_loss(self, ctx, state, images, logits, labels, bns, features):
        hard = guarded_focal_ce(logits, labels, self.settings.gamma, self.settings.focal_floor)
        return bns + self.settings.beta * hard, {"bns": bns.item(), "focal_ce": hard.item()}

    def _filtered(self, images: torch.Tensor) -> torch.Tensor:
        d0 = self.settings.lowpass_d0
        if d0 is None:
            return images
        return torch.cat([gaussian_lowpass(x, d0) for x in images.split(256)]) if len(images) else images

    def prepare(self, ctx):
        super().prepare(ctx)
        if self.settings.lowpass_at == "set":
            self.images = self._filtered(self.images)
        ctx.stats["synthesis"]["lowpass"] = {"d0": self.settings.lowpass_d0, "at": self.settings.lowpass_at}

    def next_batch(self, ctx, batch_size):
        batch = super().next_batch(ctx, batch_size)
        if self.settings.lowpass_at == "batch":
            batch.images = self._filtered(batch.images)
        return batch

    def diagnostic_images(self, ctx):
        """The set as the student sees it: filtered (the diagnostics compare it with the real test set)."""
        images = getattr(self, "images", None)
        if images is None:
            return None
        return (images if self.settings.lowpass_at == "set" else self._filtered(images)), self.labels


class SynQDistiller(HASTDistiller):
    name = "synq"
    description = ("SynQ: HAST's KL + channel-attention loss with difficulty promotion, + lambda_CE * CE on easy "
                   "samples only (teacher difficulty < tau) + lambda_CAM * Grad-CAM alignment on the last conv")

    class Settings(HASTDistiller.Settings):
        ce_weight: float = Field(5.0, ge=0, description="lambda_CE: weight of the CE on easy samples")
        difficulty_threshold: Fraction = Field(
            0.5, description="tau: CE only where 1 - p_teacher(y) < tau (1: every sample but p_y = 0)")
        cam_weight: float = Field(200.0, ge=0, description="lambda_CAM: weight of the Grad-CAM alignment")
        cam_class: Literal["predicted", "label"] = Field(
            "predicted", description="Grad-CAM score: each network's own argmax (code) or the label (paper eq. 5)")
        cam_clamp_weights: bool = Field(True, description="clamp the Grad-CAM channel weights at 1e-10 (code)")
        cam_layer: str | None = Field(None, description="module whose output is A (null: each net's last Conv2d)")
        cam_flat: Literal["zero", "code"] = Field(
            "zero", description="a Grad-CAM map constant at A's resolution (A 1 x 1) is 0, as in exact arithmetic "
            "(zero), or the code's upsampled rounding stretched to [0, 1] (code)")
        promoted_weight: float = Field(1.0, ge=0, description="lambda_pert: weight of the loss on x + eps*sign(g)")
        promoted_fa: Literal["imagenet", "always", "never"] = Field(
            "imagenet", description="channel-attention term on the promoted pass (code: ImageNet only)")

    def setup(self, ctx):
        super().setup(ctx)
        name = self.settings.cam_layer
        taps = {}
        for side, net in (("teacher", ctx.teacher), ("student", ctx.student)):
            if name is None:
                taps[side] = last_conv(net)
            else:
                try:
                    taps[side] = (name, net.get_submodule(name))
                except AttributeError:
                    raise UserError(f"distiller.cam_layer: the {side} has no module {name!r}") from None
        self.teacher_cam = FeatureTap(ctx.teacher, [taps["teacher"]])
        self.student_cam = FeatureTap(ctx.student, [taps["student"]])
        where = self.settings.promoted_fa
        self.fa_promoted = where == "always" or (where == "imagenet" and ctx.dataset.name == "imagenet")
        ctx.stats["synq"] = {**ctx.stats.pop("hast"), "cam_layer_teacher": taps["teacher"][0],
                             "cam_layer_student": taps["student"][0], "fa_promoted": self.fa_promoted}

    def synq_objective(self, s, t, t_feats, labels, easy, detach_teacher: bool, with_fa: bool):
        """KL + lambda_CE * CE on easy samples [+ lambda * L_FA] on one pass (student features from its latest
        forward)."""
        cfg = self.settings
        kl = kd_kl(s, t, cfg.temperature, cfg.kl_reduction, detach_teacher=detach_teacher)
        ce = selective_ce(s, labels, easy)
        loss = cfg.alpha * cfg.temperature ** 2 * kl + cfg.ce_weight * ce
        fa = torch.zeros((), device=s.device)
        if with_fa and self.lam:
            fa = attention_loss(self.student_tap.features, t_feats, normalize=cfg.ca_normalize,
                                channel_reduction=cfg.ca_channel_reduction,
                                layer_reduction=cfg.ca_layer_reduction, detach_teacher=detach_teacher)
            loss = loss + self.lam * fa
        return loss, kl, ce, fa

    def loss(self, ctx, batch):
        cfg, labels = self.settings, batch.labels
        x = batch.images.detach().requires_grad_(True)
        t = ctx.teacher(x)
        t_feats, t_act = list(self.teacher_tap.features), self.teacher_cam.features[0]
        s = ctx.student(x)
        s_act = self.student_cam.features[0]
        easy = easy_mask(t, labels, cfg.difficulty_threshold)
        attached = self.synq_objective(s, t, t_feats, labels, easy, False, True)[0]
        grad, = torch.autograd.grad(attached, x, retain_graph=True)
        clean, kl, ce, fa = self.synq_objective(s, t.detach(), [f.detach() for f in t_feats], labels, easy, True,
                                                True)
        cam = torch.zeros((), device=s.device)
        if cfg.cam_weight:
            size = tuple(x.shape[-2:])
            by_label = cfg.cam_class == "label"
            t_map = grad_cam(t, t_act, labels if by_label else t.detach().argmax(1), size, cfg.cam_clamp_weights,
                             flat=cfg.cam_flat)
            s_map = grad_cam(s, s_act, labels if by_label else s.detach().argmax(1), size, cfg.cam_clamp_weights,
                             flat=cfg.cam_flat)
            cam = cam_alignment_loss(t_map, s_map)
        hard = (x + self.eps * grad.sign()).detach()
        with torch.no_grad():
            t_hard = ctx.teacher(hard)
        t_hard_feats = [f.detach() for f in self.teacher_tap.features]
        promoted, kl_p, ce_p, fa_p = self.synq_objective(ctx.student(hard), t_hard, t_hard_feats, labels, easy, True,
                                                         self.fa_promoted)
        loss = clean + cfg.promoted_weight * promoted + cfg.cam_weight * cam
        return loss, {"kl": kl.item(), "ce_easy": ce.item(), "fa": fa.item(), "cam": cam.item(),
                      "easy_fraction": easy.mean().item(), "kl_promoted": kl_p.item(), "ce_promoted": ce_p.item(),
                      "fa_promoted": fa_p.item()}


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(SynQSynthesizer)
    registry.add_distiller(SynQDistiller)
    registry.add_method(Method(
        "synq", synthesizer="synq", distiller="synq", quantizer="minmax-ema", settings=SETTINGS,
        description="Synthesis-aware fine-tuning on HAST: low-pass filtered hard samples, Grad-CAM alignment, "
                    "CE only on samples the teacher finds easy", paper="Kim et al., ICLR 2025"))
