"""Batch-norm statistics (BNS) matching: the data-free prior every method here uses.

BNS = mean over the teacher's BatchNorm2d layers of MSE(batch mean, running_mean) + MSE(biased batch variance,
running_var), each averaged over channels — the variance, not the std (GDFQ trainer.py, IntraQ/HAST
distill_data.py compute the same quantity).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BNStatHooks:
    """Forward hooks on every BatchNorm2d of ``model`` that record the BNS error of the current forward pass.

    Recording is off unless inside ``with hooks.recording():`` so the teacher's other forwards cost nothing."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self._losses: list[torch.Tensor] = []
        self._on = False
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.BatchNorm2d, inputs, output) -> None:
        if not self._on:
            return
        x = inputs[0]
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
        return torch.stack(self._losses).mean()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
