"""BAG: Bit-width Aware Generator + channel-attention KD (Baek et al., JKSCI 29(7):11-20, 2024). No public code.

From the paper (§III-3, III-4, IV-1):
* the generator is GDFQ's (label embedding ⊙ z -> linear -> 3 conv + BN + LeakyReLU -> tanh) whose linear and conv
  layers — weights *and* activations — are fake-quantized at the student's bit-width "with the same method" as the
  student: here the shared quantizer (per-channel min/max weights, per-tensor EMA activation ranges);
* generator loss CE(teacher(G(z|y)), y) + lambda*BNS, lambda = 0.1 (eq. 7);
* student loss CE + KL + gamma*CA, gamma = 30 (eq. 13), CA = (1/L_B) sum_l ||Attn(F_t) - Attn(F_s)||^2 on the
  residual blocks' outputs (two conv + two BN + one ReLU: pytorchcv's ``ResUnit.body``), Attn = per-channel
  spatial mean of F^2 (eq. 10-12) — the shared ``kd-ca`` distiller;
* SGD lr 1e-4 (student, x0.1 every 100 of 400 epochs), Adam lr 1e-3 (generator), batch 16, 4 generator-only
  warm-up epochs.

Chosen here, because the paper leaves it open (each is a setting):
* *which activations*: the input of every quantized linear/conv layer (``quantize_inputs``) — so the latent
  ⊙ embedding, the BN outputs and the LeakyReLU outputs the layers consume are all on the k-bit grid; the final
  tanh/BN output (the image) is not a layer input and stays FP, like the student's network input;
* *generator activation ranges*: ``g_act_ranges = "track"`` keeps them following an EMA(0.9) of batch min/max on
  every generator step, because the generator keeps training all run and ranges frozen after warm-up would clip
  its later activations; ``"warmup"`` freezes them after the warm-up steps like the student's;
* *KD form*: GDFQ's (reference [10] of the paper): alpha*T^2*KL with T = 20 and nn.KLDivLoss's element mean;
* *attention*: L2-normalised over channels as in HAST, whose loss BAG cites: the paper's eq. 11 shows no
  normalisation, but with it gamma = 30 swamps CE and KL (CA about 200 against CE 2 on the Fashion-MNIST ResNet-20
  at W4A4) and the student diverged within two steps; ``distiller.ca_normalize=false`` gives the literal form;
* *generator lr schedule*: GDFQ's (x0.1 at 1/4, 1/2, 3/4 of the run) in ``paper``; constant in ``cpu``, as gdfq.
* *ImageNet* (the paper reports CIFAR-100 only): GDFQ's ImageNet schedule and class-conditional-BN generator.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from zsqbench.api import Method, hookimpl
from zsqbench_plugins.gdfq import GDFQSynthesizer


class BitwidthAwareSynthesizer(GDFQSynthesizer):
    name = "bag"
    description = "GDFQ generator fake-quantized at the student's bit-width (weights and layer inputs); CE + 0.1*BNS"

    class Settings(GDFQSynthesizer.Settings):
        g_act_ranges: Literal["track", "warmup"] = Field(
            "track", description="generator activation ranges: keep tracking, or freeze after warm-up")

    def build_generator(self, ctx):
        generator = super().build_generator(ctx)
        for capability in ("quantize_inputs", "activation_types", "freeze_ranges"):
            ctx.quantizer.require(capability, "bag's quantized generator")
        quantized = ctx.quantizer.quantize(generator, ctx.wbits, ctx.abits, activation_types=(),
                                           quantize_inputs=True)
        ctx.quantizer.set_calibrating(quantized, True)
        self._steps = 0
        return quantized

    def next_batch(self, ctx, batch_size):
        batch = super().next_batch(ctx, batch_size)
        self._steps += 1
        if self.settings.g_act_ranges == "warmup" and self._steps == ctx.warmup_steps:
            ctx.quantizer.set_calibrating(self.generator, False)
        return batch


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(BitwidthAwareSynthesizer)
    registry.add_method(Method(
        "bag", synthesizer="bag", distiller="kd-ca", quantizer="minmax-ema",
        settings=str(Path(__file__).with_name("bag.json")),
        description="Bit-width aware (quantized) generator + channel-attention KD on residual-block outputs",
        paper="Baek et al., JKSCI 2024"))
