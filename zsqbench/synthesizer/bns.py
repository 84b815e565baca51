"""Batch-norm statistics (BNS) matching: the data-free prior every method here uses.

BNS = mean over the teacher's BatchNorm2d layers of MSE(batch mean, running_mean) + MSE(biased batch variance,
running_var), each averaged over channels — the variance, not the std (GDFQ trainer.py, IntraQ/HAST
distill_data.py compute the same quantity: their "mean over layers of MSE(mean) + mean over layers of MSE(var)" is
this mean over layers of the sum, exactly).

``form="per-sample"`` is ZeroQ's statistic (reference §6): per *sample* and channel, the spatial mean and std
(unbiased variance, + 1e-6) of each BN input against running_mean and sqrt(running_var + 1e-6); squared L2 over
channels averaged over samples, summed (not averaged) over layers. ZeroQ hooks the conv outputs feeding each BN;
the BN inputs are the same tensors in every zoo model (each BN follows a conv).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def per_sample_moment_loss(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6
                           ) -> torch.Tensor:
    """ZeroQ's statistic loss: per sample and channel, the spatial mean and std (unbiased) of ``x`` (B, C, H, W)
    against the targets ``mean`` and ``std`` (C,); squared L2 over channels, averaged over samples."""
    flat = x.flatten(2)
    m, s = flat.mean(2), (flat.var(2) + eps).sqrt()
    return ((m - mean).pow(2).sum(1) + (s - std).pow(2).sum(1)).mean()


class BNStatHooks:
    """Forward hooks on every BatchNorm2d of ``model`` that record the BNS error of the current forward pass.

    Recording is off unless inside ``with hooks.recording():`` so the teacher's other forwards cost nothing."""

    FORMS = ("batch", "per-sample")
    ZEROQ_EPS = 1e-6

    def __init__(self, model: nn.Module, form: str = "batch"):
        if form not in self.FORMS:
            raise ValueError(f"BNS form must be one of {', '.join(self.FORMS)}, got {form!r}")
        self.form = form
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self._losses: list[torch.Tensor] = []
        self._on = False
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs, output) -> None:
        if not self._on:
            return
        x = inputs[0]
        if self.form == "per-sample":
            self._losses.append(per_sample_moment_loss(x, module.running_mean,
                                                       (module.running_var + self.ZEROQ_EPS).sqrt(), self.ZEROQ_EPS))
            return
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self._losses.append(F.mse_loss(mean, module.running_mean) + F.mse_loss(var, module.running_var))

    def recording(self):
        hooks = self

        class _Ctx:
            def __enter__(self_):
                hooks._losses.clear()
                hooks._on = True
                return hooks

            def __exit__(self_, *exc):
                hooks._on = False
                return False
        return _Ctx()

    def loss(self) -> torch.Tensor:
        if not self._losses:
            raise RuntimeError("no BatchNorm2d layer saw data while recording")
        stacked = torch.stack(self._losses)
        return stacked.sum() if self.form == "per-sample" else stacked.mean()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
