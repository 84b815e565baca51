"""Qimera (Choi et al., NeurIPS 2021; iamkanghyunchoi/qimera@2f48cba), reference §6: GDFQ with *superposed latent
embeddings*, generator inputs that mix several classes so that the images land near the teacher's decision
boundaries (boundary supporting samples).

What the official code does (file:line at 2f48cba), and here:

* conditioning (``trainer.py`` L211-235): with probability ``mix_prob`` (0.4 in the run scripts) a generator batch
  is *mixed*: every image gets ``mix_classes`` = k classes drawn with replacement (``randint``) and weights
  softmax(N(0, 1)^k); its target is the (B, C) mixture (``scatter_add``, so a class drawn twice adds its weights).
  Otherwise one uniform class per image with a one-hot target. k per run script: CIFAR-10 2, CIFAR-100 10 (5-bit:
  50), ImageNet ResNet-18 500 (5-bit: 100), MobileNetV2 100, ResNet-50 500 (with p = 0.7);
* generator input (``main.py`` L66-90): e_j = E[y_j] + noise_scale * z_j, with its own z_j per mixed class, is
  standardised with no affine (``embed_normalizer``, L37), optionally passed through the disentanglement mapping
  layer (``fc_reducer``, a Linear), then summed with the weights, sum_j w_j * e_j; the rest is GDFQ's generator
  (Linear -> BN -> 2 x [up x2, conv, BN(eps 0.8), LeakyReLU] -> conv -> tanh -> BN). The ImageNet form
  (L93-156) takes the same input and adds GDFQ's class-conditional BN, whose gamma/beta for a mixed image are
  ``mean_j(w_j * gamma[y_j])`` (``conditional_batchnorm.py`` L62-68): the weighted sum divided by k;
* generator loss (``trainer.py`` L242-254): CE(teacher(x), soft target) + 0.1 * BNS, which is GDFQ's loss (the
  inherited ``generator_loss``: ``cond.cross_entropy`` scores against the soft target);
* student loss (``trainer.py`` L109-130): nn.KLDivLoss's element mean * alpha * T^2 (T = 20, alpha = 1) plus CE
  against the same soft target. That is the core ``kd`` distiller, which reads the batch's ``soft_labels``;
* schedule: GDFQ's (400 x 200 iterations; CIFAR batch 200, warm-up 4 epochs, lr_S 1e-4; ImageNet batch 16,
  warm-up 50 epochs, lr_S 1e-6, whose hocon gives the milestones [100, 200, 300] that GDFQ's leaves open).

Where the released code and the paper (or the code and itself) differ, the code's behaviour is the default and
the other is a setting:

* ``mix_unit = "batch"``: the code tosses one coin per *batch* (``torch.rand(1)``, L211-215), so a batch is either
  all mixed or all plain. ``"image"`` tosses one per image.
* ``embed_norm = "official"``: the code applies ``BatchNorm1d(affine=False, track_running_stats=False)`` to the
  *transposed* input. For a plain batch (B, D) -> (D, B) this standardises each image's vector over its D latent
  dimensions; for a mixed batch (B, k, D), where ``.T`` reverses all three dims, it standardises each of the k
  slots over batch x latent. ``"sample"`` standardises every vector over its latent dims in both cases; ``"none"``
  skips the step.
* ``mapping_layer = false``: the paper proposes the disentanglement mapping layer (its abstract: "an additional
  disentanglement mapping layer"), but the code's switch is ``--no_DM`` with ``action='store_false'``
  (``main.py`` L427). Without the flag no_DM is True and the layer is *off*, and no run script passes it, so the
  published runs had none. ``true`` adds Linear(latent_dim, mapping_dim). The code's width is 100
  (``options.py`` L76-78 would choose 64 for ``network == "resnet20"``, but the network is named
  ``resnet20_cifar10``/``_cifar100``, so that branch never runs).
* ``embed_init = "random"``: the paper's "extracting information from the full-precision model" initialises the
  embedding table with the teacher's classifier weights (C x F, so latent_dim must equal F) and trains it
  (``main.py`` L449-452, L35). The run scripts turn this off with ``--randemb`` (a random N(0, 1) table) for
  CIFAR-10, ResNet-18 and MobileNetV2, and keep it on for CIFAR-100 and ResNet-50. ``paper`` sets ``"teacher"``
  for cifar100.
* ``cbn_mix = "mean"`` (the code's 1/k scaling of the mixed conditional-BN gamma/beta) or ``"sum"``.
* ``mix_replacement = true`` (``randint``: a mixed row may repeat a class) or ``false`` (k distinct classes).

Not expressible in ``paper``, whose settings are keyed by dataset only: k per bit-width (CIFAR-100 5-bit k = 50;
ResNet-18 5-bit k = 100) and per-model ImageNet values (MobileNetV2: k 100 and latent 1280; ResNet-50: p 0.7 and
a teacher-initialised 2048-d table). ``paper`` uses the 4-bit scripts and ResNet-18's values for ImageNet; pass
the others with ``--set synthesizer.mix_classes=...``. The ``cpu`` entry is gdfq's for now.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from zsqbench.api import Conditioning, Field, Generator, Method, UserError, hookimpl, upsample_conv
from zsqbench_plugins.gdfq import GDFQSynthesizer

NORM_EPS = 1e-5  # BatchNorm1d's default eps, as in the official embed_normalizer


@dataclass
class MixedConditioning(Conditioning):
    """A Qimera batch: ``labels`` (argmax of the target) and ``soft_labels`` (B, C) as in :class:`Conditioning`,
    plus the slots the generator superposes: ``components`` (B, k) class indices, ``weights`` (B, k) rows summing
    to 1, and ``mixed`` (B,) which rows are mixtures (a plain row has weight 1 on slot 0 and 0 elsewhere)."""

    components: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    mixed: torch.Tensor | None = None


def standardize(x: torch.Tensor, dims) -> torch.Tensor:
    """(x - mean) / sqrt(biased var + eps) over ``dims``: BatchNorm without affine or running statistics."""
    mean = x.mean(dims, keepdim=True)
    var = x.var(dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + NORM_EPS)


def teacher_classifier_weight(teacher: nn.Module, num_classes: int) -> torch.Tensor:
    """The (C, F) weight of the teacher's last classifier layer: a Linear, or a 1x1 conv (MobileNetV2), with
    ``num_classes`` outputs."""
    found = None
    for m in teacher.modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            found = m.weight
        elif isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1):
            found = m.weight.flatten(1)
    if found is None:
        raise UserError(f"qimera: synthesizer.embed_init='teacher' found no Linear or 1x1 conv with {num_classes} "
                        "outputs in the teacher; use embed_init='random'")
    return found.detach().clone()


class QimeraGenerator(Generator):
    """GDFQ's generator with Qimera's input: per slot j, e_j = E[y_j] + noise_scale * z_j, standardised
    (``embed_norm``), optionally mapped by a Linear (the disentanglement mapping), then sum_j w_j * e_j.

    ``forward(z, labels)`` with labels (B,) and z (B, D) is a plain batch; ``forward(z, labels, weights, mixed)``
    with labels and weights (B, k), z (B, k, D) and mixed (B,) bool superposes the k slots of each row."""

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], latent_dim: int, width: int,
                 conditional_bn: bool, *, embed_norm: str = "official", noise_scale: float = 1.0,
                 mapping_dim: int | None = None, cbn_mix: str = "mean",
                 embed_weight: torch.Tensor | None = None):
        super().__init__(num_classes, image_shape, mapping_dim or latent_dim, width, conditional_bn)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.embed_norm, self.noise_scale, self.cbn_mix = embed_norm, noise_scale, cbn_mix
        # Qimera keeps the embedding input in both forms (GDFQ's ImageNet generator drops it)
        self.label_emb = nn.Embedding(num_classes, latent_dim)
        if embed_weight is not None:
            with torch.no_grad():
                self.label_emb.weight.copy_(embed_weight)
        self.mapping = nn.Linear(latent_dim, mapping_dim) if mapping_dim else None

    def _normalize(self, e: torch.Tensor, mixed: torch.Tensor) -> torch.Tensor:
        """e: (B, k, D). 'official': plain rows over their latent dims, mixed rows per slot over rows x latent."""
        if self.embed_norm == "none":
            return e
        if self.embed_norm == "sample" or not bool(mixed.any()):
            return standardize(e, -1)
        if bool(mixed.all()):
            return standardize(e, (0, 2))
        out = standardize(e, -1)
        out[mixed] = standardize(e[mixed], (0, 2))
        return out

    def latent(self, z: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
               mixed: torch.Tensor | None = None) -> torch.Tensor:
        """The input of the first Linear (B, D or mapping_dim)."""
        if labels.dim() == 1:  # a plain batch: one slot with weight 1
            labels, z = labels[:, None], z[:, None]
            weights = torch.ones(labels.shape, device=z.device, dtype=z.dtype)
            mixed = torch.zeros(labels.shape[0], dtype=torch.bool, device=z.device)
        elif mixed is None:
            mixed = torch.ones(labels.shape[0], dtype=torch.bool, device=z.device)
        e = self._normalize(self.label_emb(labels) + self.noise_scale * z, mixed)
        if self.mapping is not None:
            e = self.mapping(e)
        return (e * weights[..., None].to(e.dtype)).sum(1)

    def _cbn_condition(self, labels, weights, mixed):
        """Class indices (B,) for a plain batch, else the (B, C) gamma/beta mixing matrix."""
        if labels.dim() == 1:
            return labels
        scale = torch.ones_like(weights)
        if self.cbn_mix == "mean":
            scale = torch.where(mixed[:, None], scale / labels.shape[1], scale)
        matrix = torch.zeros(labels.shape[0], self.num_classes, device=weights.device, dtype=weights.dtype)
        return matrix.scatter_add_(1, labels, weights * scale)

    def forward(self, z, labels, weights=None, mixed=None):
        if labels.dim() == 2 and mixed is None:
            mixed = torch.ones(labels.shape[0], dtype=torch.bool, device=labels.device)
        x = self.latent(z, labels, weights, mixed)
        cond = self._cbn_condition(labels, weights, mixed) if self.conditional_bn else None
        x = self.l1(x).view(x.shape[0], self.width, self.init_size, self.init_size)
        x = self._bn(self.bn0, x, cond)
        x = self.act1(self._bn(self.bn1, upsample_conv(self.conv1, x), cond))  # = conv1(upsample x2)
        x = self.act2(self._bn(self.bn2, upsample_conv(self.conv2, x), cond))
        return self.bn_out(self.tanh(self.conv3(x)))


class QimeraSynthesizer(GDFQSynthesizer):
    name = "qimera"
    description = ("Qimera: GDFQ generator fed superposed class embeddings (p=mix_prob, k=mix_classes, softmax "
                   "weights); CE against the soft mixture + 0.1*BNS")

    class Settings(GDFQSynthesizer.Settings):
        latent_dim: int = Field(64, ge=1, description="embedding / noise width (official: 64 CIFAR, 512 ResNet-18)")
        mix_prob: float = Field(0.4, ge=0, le=1, description="probability that a batch (or image) is mixed")
        mix_classes: int = Field(2, ge=2, description="k, classes superposed per mixed image")
        mix_unit: Literal["batch", "image"] = Field(
            "batch", description="one mixing coin per batch (official code) or per image")
        mix_replacement: bool = Field(True, description="draw the k classes with replacement (official randint)")
        embed_norm: Literal["official", "sample", "none"] = Field(
            "official", description="standardisation of E[y] + z: the code's (per image; mixed: per slot over "
                                    "batch x latent), per vector, or none")
        noise_scale: float = Field(1.0, ge=0, description="e = E[y] + noise_scale * z")
        mapping_layer: bool = Field(False, description="the disentanglement mapping Linear (off in the run scripts)")
        mapping_dim: int = Field(100, ge=1, description="output width of the mapping layer")
        embed_init: Literal["random", "teacher"] = Field(
            "random", description="embedding table: N(0,1), or the teacher's classifier weights (latent_dim = F)")
        cbn_mix: Literal["mean", "sum"] = Field(
            "mean", description="class-conditional BN of a mixed image: mean_j (official) or sum_j of w_j*gamma")

    def build_generator(self, ctx):
        cfg = self.settings
        if not cfg.mix_replacement and cfg.mix_classes > ctx.num_classes:
            raise UserError(f"qimera: synthesizer.mix_classes={cfg.mix_classes} distinct classes, but the "
                            f"dataset has {ctx.num_classes}; lower it or set synthesizer.mix_replacement=true")
        weight = None
        if cfg.embed_init == "teacher":
            weight = teacher_classifier_weight(ctx.teacher, ctx.num_classes)
            if weight.shape[1] != cfg.latent_dim:
                raise UserError(f"qimera: synthesizer.embed_init='teacher' needs synthesizer.latent_dim equal to the "
                                f"teacher classifier's input width {weight.shape[1]}, got {cfg.latent_dim}")
        return QimeraGenerator(ctx.num_classes, ctx.image_shape, cfg.latent_dim, cfg.width,
                               cfg.conditional_bn, embed_norm=cfg.embed_norm, noise_scale=cfg.noise_scale,
                               mapping_dim=cfg.mapping_dim if cfg.mapping_layer else None,
                               cbn_mix=cfg.cbn_mix, embed_weight=weight)

    def sample_conditioning(self, ctx, batch_size):
        cfg = self.settings
        n, k, dev = ctx.num_classes, cfg.mix_classes, ctx.device
        coins = torch.rand(1 if cfg.mix_unit == "batch" else batch_size, device=dev)
        mixed = (coins < cfg.mix_prob).expand(batch_size).clone()
        if cfg.mix_replacement:
            components = torch.randint(0, n, (batch_size, k), device=dev)
        else:
            components = torch.rand(batch_size, n, device=dev).argsort(1)[:, :k]
        plain = F.one_hot(torch.zeros(batch_size, dtype=torch.long, device=dev), k).float()
        weights = torch.where(mixed[:, None], torch.softmax(torch.randn(batch_size, k, device=dev), 1), plain)
        soft = torch.zeros(batch_size, n, device=dev).scatter_add_(1, components, weights)
        return MixedConditioning(soft.argmax(1), soft, components, weights, mixed)

    def generate(self, ctx, z, cond):
        if not isinstance(cond, MixedConditioning) or not bool(cond.mixed.any()):
            return self.generator(z, cond.labels)  # a plain batch: labels = the drawn classes
        k = cond.components.shape[1]
        extra = torch.randn(z.shape[0], k - 1, z.shape[1], device=z.device, dtype=z.dtype)
        return self.generator(torch.cat([z[:, None], extra], 1), cond.components, cond.weights, cond.mixed)

    def generator_loss(self, ctx, images, cond, teacher_logits, student_logits=None):
        loss, parts = super().generator_loss(ctx, images, cond, teacher_logits, student_logits)
        if isinstance(cond, MixedConditioning):
            parts["g_mixed"] = cond.mixed.float().mean().item()
        return loss, parts


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(QimeraSynthesizer)
    registry.add_method(Method(
        "qimera", synthesizer="qimera", distiller="kd", quantizer="minmax-ema",
        settings=str(Path(__file__).with_name("qimera.json")),
        description="Qimera: boundary supporting samples from superposed class embeddings (GDFQ generator, "
                    "soft-label CE/KL distillation)",
        paper="Choi et al., NeurIPS 2021"))
