"""Speed switches (issue 29): how the passes are computed, never what they compute.

Each switch computes the same function as the plain eager code up to float rounding (docs/speed.md gives the
measured tolerance); each can be turned off for debugging, for a GPU, or to check a result against the eager code.
The switches a run used are written into its record (``record["speed"]``). They are not part of the run's
configuration hash: a record made with them off is the same experiment.

* ``phase_conv``: a generator's nearest x2 upsample followed by a 3x3 convolution is computed as one 2x2
  convolution per output phase on the low-resolution input (the four phases stacked as output channels): 2.25x
  fewer multiply-adds for the same function (:func:`zsqbench.synthesizer.generator.upsample_conv`).
* ``channels_last``: teacher and student run in the NHWC memory format, which oneDNN's CPU convolutions use
  natively (no reorder per call). A generator stays NCHW: with ``phase_conv`` channels-last made it slower. ``"auto"``: on for the CPU, off for CUDA (where fp32 without
  tensor cores gains nothing from it); ``--speed channels_last=1`` forces it.
* ``fused_fakequant``: the fake quantizer is one compiled C loop per call on the CPU (a single pass instead of six
  elementwise ops, bit-identical to them); CUDA tensors and machines without a C compiler use the eager ops.

Set them with ``ZSQBENCH_SPEED`` (e.g. ``ZSQBENCH_SPEED=eager``, or ``ZSQBENCH_SPEED=channels_last=0,phase_conv=1``);
``eager`` turns every switch off.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace

import torch

ENV = "ZSQBENCH_SPEED"


@dataclass(frozen=True)
class Speed:
    phase_conv: bool = True
    channels_last: bool | str = "auto"
    fused_fakequant: bool = True

    def channels_last_on(self, device: torch.device | str) -> bool:
        if self.channels_last == "auto":
            return torch.device(device).type == "cpu"
        return bool(self.channels_last)

    def resolved(self, device: torch.device | str) -> dict:
        """What the run actually used (``auto`` resolved), for the record."""
        return {**asdict(self), "channels_last": self.channels_last_on(device)}


def env_value(used: dict) -> str:
    """The ``ZSQBENCH_SPEED`` value that repeats the switches a record says it used (``record["speed"]``)."""
    names = {f.name for f in fields(Speed)}
    return ",".join(f"{k}={int(bool(v))}" for k, v in sorted(used.items()) if k in names)


EAGER = Speed(phase_conv=False, channels_last=False, fused_fakequant=False)


def parse(text: str | None) -> Speed:
    """``"eager"``, ``"fast"``/empty (the defaults), or ``key=value`` items separated by commas."""
    text = (text or "").strip()
    if text in ("", "fast", "default"):
        return Speed()
    if text == "eager":
        return EAGER
    values: dict = {}
    names = {f.name: f for f in fields(Speed)}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip().lower()
        if not sep or key not in names:
            from zsqbench.spine.errors import UserError
            raise UserError(f"{ENV}: bad item {item!r}; use eager, or key=value with keys {', '.join(names)}")
        if key == "channels_last" and raw == "auto":
            values[key] = "auto"
        else:
            values[key] = raw in ("1", "true", "on", "yes")
    return replace(Speed(), **values)


_current = parse(os.environ.get(ENV))


def current() -> Speed:
    return _current


@contextmanager
def using(speed: Speed):
    """Within the block, :func:`current` is ``speed``."""
    global _current
    before = _current
    _current = speed
    try:
        yield speed
    finally:
        _current = before


def to_memory_format(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``module`` in channels-last if the current switches say so for ``device`` (in place, returned)."""
    if current().channels_last_on(device):
        module.to(memory_format=torch.channels_last)
    return module
