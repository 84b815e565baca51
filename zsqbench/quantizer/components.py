"""Quantizer components registered by the built-in plugin."""
from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from zsqbench.quantizer.fakequant import act_quantizers, quantize_model, ranges_frozen, set_calibrating
from zsqbench.spine.interfaces import Quantizer


class MinMaxEMAQuantizer(Quantizer):
    name = "minmax-ema"
    description = ("GDFQ-lineage fake quant: per-channel min/max weights, per-tensor EMA(0.9) activation ranges "
                   "after ReLU/ReLU6, frozen after calibration, pass-through STE, all conv/linear layers")

    class Settings(Quantizer.Settings):
        range_rule: Literal["ema", "ema-official", "minmax"] = Field(
            "ema", description="activation ranges: EMA of batch min/max, the official update, or running min/max")
        momentum: float = Field(0.9, gt=0, lt=1, description="EMA momentum of the activation ranges")

    capabilities = frozenset({"quantize_inputs", "activation_types", "freeze_ranges", "first_last_bits"})
    keeps_integer_weights = True  # its students can be saved as integer codes and exported (zsqbench.export)

    def quantize(self, model: nn.Module, wbits: int, abits: int, *, quantize_inputs: bool = False,
                 activation_types=None, first_last_bits: int | None = None) -> nn.Module:
        kw = {} if activation_types is None else {"activation_types": activation_types}
        return quantize_model(model, wbits, abits, range_rule=self.settings.range_rule,
                              momentum=self.settings.momentum, quantize_inputs=quantize_inputs,
                              first_last_bits=first_last_bits, **kw)

    def set_calibrating(self, model: nn.Module, on: bool) -> None:
        set_calibrating(model, on)

    def ranges_frozen(self, model: nn.Module):
        return ranges_frozen(model)

    def uncalibrated(self, model: nn.Module) -> list[str]:
        names = {id(m): n for n, m in model.named_modules()}
        return [names[id(q)] for q in act_quantizers(model) if not q.calibrated]


class NoQuantizer(Quantizer):
    name = "none"
    description = "Leaves the network in floating point (the FP reference)"
    capabilities = frozenset({"first_last_bits"})  # no layer is quantized: any bit-width rule holds

    def quantize(self, model: nn.Module, wbits: int, abits: int, *, quantize_inputs: bool = False,
                 activation_types=None, first_last_bits: int | None = None) -> nn.Module:
        import copy
        return copy.deepcopy(model)
