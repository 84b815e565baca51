"""Reference points: ``fp`` (the teacher itself) and ``noise`` (activation ranges calibrated on Gaussian noise,
no fine-tuning) — the floor every zero-shot method must clear."""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from zsqbench.api import Batch, Method, RunContext, Synthesizer, hookimpl


class GaussianNoise(Synthesizer):
    name = "noise"
    description = "i.i.d. N(mean, std) images in the teacher's normalised input space, random labels"

    class Settings(Synthesizer.Settings):
        mean: float = 0.0
        std: float = Field(1.0, gt=0)

    def next_batch(self, ctx: RunContext, batch_size: int) -> Batch:
        x = torch.randn(batch_size, *ctx.image_shape, device=ctx.device) * self.settings.std + self.settings.mean
        return Batch(x, ctx.random_labels(batch_size))


SETTINGS = Path(__file__).with_name("references.json")


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(GaussianNoise)
    registry.add_method(Method(
        "fp", synthesizer="noise", distiller="kd", quantizer="none", settings=str(SETTINGS), role="ceiling",
        description="The full-precision teacher, unquantized (upper reference)"))
    registry.add_method(Method(
        "noise", synthesizer="noise", distiller="kd", quantizer="minmax-ema", settings=str(SETTINGS), role="floor",
        description="Activation ranges calibrated on Gaussian noise, no fine-tuning (lower reference)"))
