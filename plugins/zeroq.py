"""ZeroQ-style reference points (Cai et al., CVPR 2020; amirgholami/ZeroQ), reference §6 and zysxmu/IntraQ#1.

* synthesizer ``zeroq``: images distilled from N(0, 1) with ZeroQ's statistic loss only — per sample and channel,
  the spatial mean/std of every BN input against running_mean/sqrt(running_var + eps), summed over layers
  (:class:`zsqbench.synthesizer.bns.BNStatHooks` ``form="per-sample"``), plus ZeroQ's input prior (per-sample channel
  mean 0, std 1); Adam lr 0.5, plateau patience 100, 500 iterations in ZeroQ. ``bns_form="batch"`` swaps in the
  GDFQ/IntraQ batch statistic instead. ZeroQ images have no class: their label is the teacher's prediction.
* method ``zeroq``: post-training quantization only — activation ranges calibrated on the distilled set, no
  fine-tuning (``train.steps = 0``), with ZeroQ's own range rule, the running global min/max
  (``quantizer.range_rule = minmax``), not the shared EMA; images un-augmented, as ZeroQ uses them.
* method ``zeroq-kd``: the same set (the same cache entry) fine-tuned with IntraQ's trainer and logit KD only
  (KL batchmean x alpha 20 x T^2, T = 20, no CE: the images carry no labels), calibrated with the shared EMA —
  what the IntraQ paper's tables call ZeroQ (zysxmu/IntraQ#1: "ZeroQ's data was used for fine-tuning with KD").
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from zsqbench.api import ImageSetSynthesizer, Method, hookimpl, per_sample_moment_loss

SETTINGS = str(Path(__file__).with_name("zeroq.json"))


class ZeroQSynthesizer(ImageSetSynthesizer):
    name = "zeroq"
    description = "ZeroQ distilled data: per-sample BN mean/std matching + N(0,1) input prior, no class terms"

    class Settings(ImageSetSynthesizer.Settings):
        iterations: int = Field(500, ge=0, le=1_000_000)
        plateau_patience: int = Field(100, ge=0)
        bns_form: Literal["zeroq", "batch"] = Field("zeroq",
                                                     description="ZeroQ's own (per-sample) statistic or the batch one")
        input_prior: bool = Field(True, description="per-sample N(0, 1) prior on the images")

    @property
    def bns_form(self) -> str:  # the setting keeps v4's value name, so its jobs keep their identity
        return "per-sample" if self.settings.bns_form == "zeroq" else self.settings.bns_form

    def synthesis_loss(self, ctx, state, images, logits, labels, bns, features):
        parts = {"bns": bns.item()}
        loss = bns
        if self.settings.input_prior:
            prior = per_sample_moment_loss(images, torch.zeros((), device=images.device),
                                           torch.ones((), device=images.device))
            loss = loss + prior
            parts["input_prior"] = prior.item()
        return loss, parts

    def end_batch(self, ctx, images, labels):
        with torch.no_grad():
            return torch.cat([ctx.teacher(x).argmax(1) for x in images.split(256)])


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(ZeroQSynthesizer)
    registry.add_method(Method(
        "zeroq", synthesizer="zeroq", distiller="kd", quantizer="minmax-ema", settings=SETTINGS,
        description="ZeroQ reference: activation ranges (running min/max) calibrated on BN-distilled images, "
                    "no fine-tuning", paper="Cai et al., CVPR 2020"))
    registry.add_method(Method(
        "zeroq-kd", synthesizer="zeroq", distiller="kd", quantizer="minmax-ema", settings=SETTINGS,
        description="ZeroQ's distilled images fine-tuned with logit KD (the 'ZeroQ' rows of IntraQ's tables)",
        paper="Cai et al., CVPR 2020; as used by Zhong et al., CVPR 2022"))
