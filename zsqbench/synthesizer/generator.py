"""The GDFQ conditional generator and the generator-synthesizer skeleton shared by GDFQ, AdaDFQ and BAG.

Generator (GDFQ main.py, CIFAR form): label embedding (classes x latent) multiplied by z ~ N(0, I), Linear to
128*(s/4)^2, BN(128); upsample x2, conv3x3 128->128, BN(eps=0.8), LeakyReLU(0.2); upsample x2, conv 128->64,
BN(eps=0.8), LeakyReLU(0.2), conv 64->C, Tanh, BN(C, affine=False). The ImageNet form replaces the label
product by class-conditional BN (per-class gamma/beta). It always runs in train mode (batch statistics).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from zsqbench.quantizer.fakequant import QuantConv2d, QuantizedInput, quantize_weight
from zsqbench.spine import speed
from zsqbench.spine.interfaces import Batch, RunContext, Synthesizer, soft_cross_entropy
from zsqbench.synthesizer.bns import BNStatHooks


class ConditionalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm without its own affine, followed by a per-class gamma/beta looked up from the labels."""

    def __init__(self, num_classes: int, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x, labels=None):
        out = super().forward(x)
        return out * embed(self.gamma, labels)[:, :, None, None] + embed(self.beta, labels)[:, :, None, None]


def embed(table: nn.Embedding, labels: torch.Tensor) -> torch.Tensor:
    """Rows of ``table`` for class indices (B,), or their mixture for a (B, num_classes) weight matrix
    (Qimera's superposed embeddings: sum_c w_c E[c])."""
    return table(labels) if labels.dim() == 1 else labels.to(table.weight.dtype) @ table.weight


def _phase_kernels(w: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) -> (4*O, I, 2, 2): the 2x2 kernels of the four output phases (a, b) of a 3x3 convolution on a
    nearest x2 upsampled input. Along one axis, phase 0 sees low-res offsets (-1, 0) with taps (w0, w1 + w2) and
    phase 1 offsets (0, +1) with taps (w0 + w1, w2)."""
    rows = (torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2), torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2))
    out = []
    for r in rows:  # r: (O, I, 2, 3)
        for cols in ((r[..., 0], r[..., 1] + r[..., 2]), (r[..., 0] + r[..., 1], r[..., 2])):
            out.append(torch.stack(cols, 3))
    return torch.cat(out, 0)


def upsample_conv(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(F.interpolate(x, scale_factor=2))`` (nearest), computed without the upsampled tensor when the
    ``phase_conv`` speed switch is on and ``conv`` is a 3x3, stride-1, padding-1 convolution (plain, weight
    fake-quantized, or with an input quantizer in front): the output pixel (2i + a, 2j + b) depends on the 2x2
    low-res neighbourhood of (i, j) only, through summed taps, so one 2x2 convolution with the four phases' kernels
    stacked as output channels gives all four phases — 16 instead of 36 multiply-adds per low-res pixel and
    channel pair. The same function up to float rounding (the summed taps); an input quantizer sees the same values
    (nearest upsampling repeats them: same min/max, same rounding)."""
    pre, layer = (conv[0], conv[1]) if isinstance(conv, QuantizedInput) else (None, conv)
    if not (speed.current().phase_conv and isinstance(layer, nn.Conv2d) and layer.kernel_size == (3, 3)
            and layer.stride == (1, 1) and layer.padding == (1, 1) and layer.dilation == (1, 1)
            and layer.groups == 1 and layer.padding_mode == "zeros"):
        return conv(F.interpolate(x, scale_factor=2))
    if pre is not None:
        x = pre(x)
    w = quantize_weight(layer.weight, layer.wbits) if isinstance(layer, QuantConv2d) else layer.weight
    o = w.shape[0]
    bias = None if layer.bias is None else layer.bias.repeat(4)
    y = F.conv2d(x, _phase_kernels(w), bias, padding=1)  # (B, 4*O, H+1, W+1); phase (a, b) at rows i+a, cols j+b
    n, _, h1, w1 = y.shape
    h, wd = h1 - 1, w1 - 1
    phases = [y[:, k * o:(k + 1) * o, a:a + h, b:b + wd] for k, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))]
    return torch.stack(phases, 2).view(n, o, 2, 2, h, wd).permute(0, 1, 4, 2, 5, 3).reshape(n, o, 2 * h, 2 * wd)


class Generator(nn.Module):
    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], latent_dim: int = 100,
                 width: int = 128, conditional_bn: bool = False):
        super().__init__()
        c, h, w = image_shape
        if h != w or h % 4:
            raise ValueError(f"the GDFQ generator needs square images with side divisible by 4, got {h}x{w}")
        self.latent_dim, self.init_size, self.width, self.conditional_bn = latent_dim, h // 4, width, conditional_bn
        self.label_emb = None if conditional_bn else nn.Embedding(num_classes, latent_dim)
        self.l1 = nn.Linear(latent_dim, width * self.init_size ** 2)

        def bn(n, eps=1e-5):
            return ConditionalBatchNorm2d(num_classes, n, eps) if conditional_bn else nn.BatchNorm2d(n, eps=eps)
        self.bn0 = bn(width)
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1)
        self.bn1 = bn(width, 0.8)
        self.act1 = nn.LeakyReLU(0.2, inplace=True)
        self.conv2 = nn.Conv2d(width, width // 2, 3, 1, 1)
        self.bn2 = bn(width // 2, 0.8)
        self.act2 = nn.LeakyReLU(0.2, inplace=True)
        self.conv3 = nn.Conv2d(width // 2, c, 3, 1, 1)
        self.tanh = nn.Tanh()
        self.bn_out = nn.BatchNorm2d(c, affine=False)

    def _bn(self, layer, x, labels):
        return layer(x, labels) if self.conditional_bn else layer(x)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``labels``: class indices (B,), or a (B, num_classes) mixture whose embeddings are superposed."""
        x = z if self.conditional_bn else embed(self.label_emb, labels) * z
        x = self.l1(x).view(x.shape[0], self.width, self.init_size, self.init_size)
        x = self._bn(self.bn0, x, labels)
        x = self.act1(self._bn(self.bn1, upsample_conv(self.conv1, x), labels))  # = conv1(upsample x2)
        x = self.act2(self._bn(self.bn2, upsample_conv(self.conv2, x), labels))
        return self.bn_out(self.tanh(self.conv3(x)))


@dataclass
class Conditioning:
    """What one generator batch is made for. ``labels``: the class of each image (B,); ``soft_labels``: an optional
    (B, num_classes) mixture the images stand for (Qimera's superposed embeddings), which becomes the distiller's
    target through :attr:`Batch.soft_labels`."""

    labels: torch.Tensor
    soft_labels: torch.Tensor | None = None

    def cross_entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """CE of ``logits`` against the soft mixture when there is one, else the hard labels."""
        return soft_cross_entropy(logits, self.labels if self.soft_labels is None else self.soft_labels)


class GeneratorSynthesizer(Synthesizer):
    """One generator step per call of :meth:`next_batch`, then the detached batch goes to the distiller.

    The step (:meth:`next_batch`) is shared; a method overrides only where it differs:

    * :meth:`sample_conditioning` — which classes (or class mixtures) each image is made for;
    * :meth:`build_generator` — the network (e.g. BAG quantizes it, Qimera adds a mapping layer);
    * :meth:`generate` — how the generator is called with the noise and the conditioning;
    * :meth:`generator_loss` — required: the generator's loss;
    * ``student_feedback = True`` and :meth:`student_logits` — the student runs on the generated images too and
      its logits (not detached) reach :meth:`generator_loss` (AdaDFQ).

    :meth:`prepare` creates ``self.generator``, ``self.optimizer`` (Adam), ``self.scheduler`` and ``self.bns`` (the
    teacher's BN-statistics hooks: ``self.bns.loss()`` is the BNS term of the last teacher pass, ``self.bns.stats()``
    its per-layer statistics). The teacher's
    logits from the generator step are handed on, so the distiller does not run it again (the official GDFQ
    trainer reuses them the same way).
    """

    uses_bn_statistics = True  # self.bns matches the teacher's BN statistics: an own network needs BatchNorm2d layers

    student_feedback: bool = False

    class Settings(Synthesizer.Settings):
        latent_dim: int = Field(100, ge=1)
        width: int = Field(128, ge=1, description="generator channels")
        conditional_bn: bool = Field(False, description="class-conditional BN (GDFQ's ImageNet generator)")
        lr: float = Field(1e-3, gt=0, description="generator Adam lr")
        betas: Annotated[list[Annotated[float, Field(ge=0, lt=1)]], Field(min_length=2, max_length=2)] = [0.5, 0.999]
        milestones: list[Annotated[float, Field(gt=0, le=1)]] = Field(
            [0.25, 0.5, 0.75], description="generator lr x gamma at these fractions of warm-up + steps")
        gamma: float = Field(0.1, gt=0, le=1)

    def build_generator(self, ctx: RunContext) -> nn.Module:
        """The generator network (GDFQ's by default); called once by :meth:`prepare`."""
        cfg = self.settings
        return Generator(ctx.num_classes, ctx.image_shape, cfg.latent_dim, cfg.width, cfg.conditional_bn)

    def prepare(self, ctx: RunContext) -> None:
        cfg = self.settings
        # stays NCHW: with phase_conv, channels-last made its step slower (336 against 288 ms, docs/speed.md)
        self.generator = self.build_generator(ctx).to(ctx.device).train()
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
        total = max(1, ctx.warmup_steps + ctx.total_steps)  # the official schedule counts warm-up epochs too
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(
            self.optimizer, [max(1, round(f * total)) for f in cfg.milestones], cfg.gamma)
        self.bns = BNStatHooks(ctx.teacher)

    def sample_conditioning(self, ctx: RunContext, batch_size: int) -> Conditioning:
        """One uniformly drawn class per image (GDFQ)."""
        return Conditioning(ctx.random_labels(batch_size))

    def generate(self, ctx: RunContext, z: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Images from noise ``z`` (B, latent_dim) and the conditioning: ``self.generator(z, cond.labels)``."""
        return self.generator(z, cond.labels)

    @abc.abstractmethod
    def generator_loss(self, ctx: RunContext, images: torch.Tensor, cond: Conditioning,
                       teacher_logits: torch.Tensor, student_logits: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's loss for one batch and its named parts (floats). ``cond.labels`` are the classes the
        images were made for; ``cond.cross_entropy(logits)`` scores logits against them (soft when mixed)."""

    def student_logits(self, ctx: RunContext, images: torch.Tensor) -> torch.Tensor:
        """The student's logits on the generated images, as feedback for the generator: its activation ranges
        do not move on this pass and no gradient is kept for its weights (only the generator steps here)."""
        params = [p for p in ctx.student.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            with ctx.quantizer.ranges_frozen(ctx.student):
                return ctx.student(images)
        finally:
            for p in params:
                p.requires_grad_(True)

    def next_batch(self, ctx: RunContext, batch_size: int) -> Batch:
        z = torch.randn(batch_size, self.settings.latent_dim, device=ctx.device)
        cond = self.sample_conditioning(ctx, batch_size)
        images = self.generate(ctx, z, cond)
        with self.bns.recording():
            teacher_logits = ctx.teacher(images)
        student_logits = self.student_logits(ctx, images) if self.student_feedback else None
        loss, parts = self.generator_loss(ctx, images, cond, teacher_logits, student_logits)
        ctx.check_finite(loss, "generator")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        soft = None if cond.soft_labels is None else cond.soft_labels.detach()
        return Batch(images.detach(), cond.labels, teacher_logits.detach(), {"loss_g": loss.item(), **parts},
                     soft_labels=soft)
