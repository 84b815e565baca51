"""Batch-norm statistics (BNS): the teacher's BN layers, what a batch does to them, and the data-free prior every
method here uses — a public API (``zsqbench.api``) any synthesizer can build its own BNS variant on.

:class:`BNStatHooks` hooks every ``BatchNorm2d`` of the teacher; inside ``with hooks.recording():`` each layer's
forward pass leaves a :class:`BNLayerStats` — the layer's qualified name and position, its input, the batch moments
(per channel) and, where asked, the per-sample moments (per image and channel), beside the teacher's running
statistics. ``hooks.stats()`` is the list of the last pass, in forward order; ``hooks.loss()`` the built-in loss of
its form, written on that list:

* ``form="batch"`` (:func:`bns_loss`): mean over the layers of MSE(batch mean, running_mean) + MSE(biased batch
  variance, running_var), each averaged over channels — the variance, not the std (GDFQ trainer.py, IntraQ/HAST
  distill_data.py compute the same quantity: their "mean over layers of MSE(mean) + mean over layers of MSE(var)"
  is this mean over layers of the sum, exactly).
* ``form="per-sample"`` (:func:`per_sample_bns_loss`): ZeroQ's statistic (reference §6): per *sample* and channel, the
  spatial mean and std (unbiased variance, + 1e-6) of each BN input against running_mean and sqrt(running_var +
  1e-6); squared L2 over channels averaged over samples, summed (not averaged) over layers. ZeroQ hooks the conv
  outputs feeding each BN; the BN inputs are the same tensors in every zoo model (each BN follows a conv).

Moments are computed only where asked for, from the kept input (mean and variance as two passes, which keeps the
figures of the old hooks to the last bit). Everything stays on the autograd graph: a loss built on the
statistics differentiates back to the images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

ZEROQ_EPS = 1e-6


def per_sample_moment_loss(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = ZEROQ_EPS
                           ) -> torch.Tensor:
    """ZeroQ's statistic loss: per sample and channel, the spatial mean and std (unbiased) of ``x`` (B, C, H, W)
    against the targets ``mean`` and ``std`` (C,); squared L2 over channels, averaged over samples."""
    var, m = torch.var_mean(x.flatten(2), dim=2, correction=1)
    return _moment_distance(m, (var + eps).sqrt(), mean, std)


def _moment_distance(m: torch.Tensor, s: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((m - mean).pow(2).sum(1) + (s - std).pow(2).sum(1)).mean()


@dataclass(eq=False)
class BNLayerStats:
    """One teacher ``BatchNorm2d`` on one recorded forward pass.

    ``name`` (qualified, as in ``teacher.named_modules()``), ``index`` (its position among the teacher's BN layers,
    module order) and ``module``; ``input``, the (B, C, H, W) tensor the layer normalised; ``mean`` and ``var``,
    its batch moments per channel (C,) — the variance biased, as BN's; :meth:`per_sample`, the spatial moments of
    each image (B, C); ``running_mean``, ``running_var`` and ``eps``, the teacher's statistics (constants)."""

    name: str
    index: int
    module: nn.BatchNorm2d
    input: torch.Tensor
    _batch: tuple[torch.Tensor, torch.Tensor] | None = None
    _per_sample: dict[bool, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def _moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._batch is None:
            # two passes, not torch.var_mean: the one-pass moments differ in the last float bits, which a
            # low-bit student amplifies into different smoke figures; and they measured no faster here
            self._batch = (self.input.mean(dim=(0, 2, 3)), self.input.var(dim=(0, 2, 3), unbiased=False))
        return self._batch

    @property
    def mean(self) -> torch.Tensor:
        """Batch mean per channel, (C,)."""
        return self._moments()[0]

    @property
    def var(self) -> torch.Tensor:
        """Biased batch variance per channel, (C,) (what BN normalises by in training mode)."""
        return self._moments()[1]

    def per_sample(self, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, var) over each image's spatial positions, per image and channel: two (B, C) tensors. The variance
        is biased unless ``unbiased`` (ZeroQ's statistic uses the unbiased one)."""
        if unbiased not in self._per_sample:
            flat = self.input.flatten(2)
            self._per_sample[unbiased] = (flat.mean(2), flat.var(2, unbiased=unbiased))
        return self._per_sample[unbiased]

    @property
    def running_mean(self) -> torch.Tensor:
        return self.module.running_mean

    @property
    def running_var(self) -> torch.Tensor:
        return self.module.running_var

    @property
    def eps(self) -> float:
        return self.module.eps


def bns_loss(stats: list[BNLayerStats]) -> torch.Tensor:
    """The batch-form BNS loss (every built-in generator method, IntraQ, HAST, SynQ): mean over layers of
    MSE(mean, running_mean) + MSE(var, running_var)."""
    return torch.stack([F.mse_loss(s.mean, s.running_mean) + F.mse_loss(s.var, s.running_var) for s in stats]).mean()


def per_sample_bns_loss(stats: list[BNLayerStats], eps: float = ZEROQ_EPS) -> torch.Tensor:
    """ZeroQ's per-sample BNS loss: summed over layers, per layer the squared L2 over channels of (per-sample mean
    - running_mean) and (per-sample std - sqrt(running_var + eps)), averaged over samples."""
    terms = []
    for s in stats:
        mean, var = s.per_sample(unbiased=True)
        terms.append(_moment_distance(mean, (var + eps).sqrt(), s.running_mean, (s.running_var + eps).sqrt()))
    return torch.stack(terms).sum()


class BNStatHooks:
    """Forward hooks on every ``BatchNorm2d`` of ``model`` that record its :class:`BNLayerStats` on each forward pass
    inside ``with hooks.recording():`` (outside it the hooks do nothing, so the teacher's other forwards cost
    nothing). ``layers`` and ``names`` are the BN modules and their qualified names in module order; ``stats()`` the
    records of the current recording, in forward order; ``loss()`` the ``form``'s built-in loss on them.
    ``per_sample=True`` computes the per-sample moments in the hook (else on first use)."""

    FORMS = ("batch", "per-sample")
    ZEROQ_EPS = ZEROQ_EPS
    LOSSES = {"batch": bns_loss, "per-sample": per_sample_bns_loss}

    def __init__(self, model: nn.Module, form: str = "batch", per_sample: bool = False):
        if form not in self.FORMS:
            raise ValueError(f"BNS form must be one of {', '.join(self.FORMS)}, got {form!r}")
        self.form = form
        self.per_sample = per_sample
        named = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        self.names = [n for n, _ in named]
        self.layers = [m for _, m in named]
        self._index = {id(m): i for i, m in enumerate(self.layers)}
        self._stats: list[BNLayerStats] = []
        self._on = False
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs, output) -> None:
        if not self._on:
            return
        i = self._index[id(module)]
        s = BNLayerStats(self.names[i], i, module, inputs[0])
        if self.form == "batch":
            s._moments()  # one pass, while the input is fresh
        if self.form == "per-sample" or self.per_sample:
            s.per_sample(unbiased=self.form == "per-sample")
        self._stats.append(s)

    def recording(self):
        hooks = self

        class _Ctx:
            def __enter__(self_):
                hooks._stats = []
                hooks._on = True
                return hooks

            def __exit__(self_, *exc):
                hooks._on = False
                return False
        return _Ctx()

    def stats(self) -> list[BNLayerStats]:
        """The BN layers' statistics of the current (or last) recording, in the order the layers ran."""
        if not self._stats:
            raise RuntimeError("no BatchNorm2d layer saw data while recording")
        return list(self._stats)

    def loss(self) -> torch.Tensor:
        """The built-in BNS loss of ``form`` on :meth:`stats` (:func:`bns_loss` or :func:`per_sample_bns_loss`)."""
        return self.LOSSES[self.form](self.stats())

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
