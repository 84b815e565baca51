"""Reading a network's intermediate features: the teacher's (and the student's) outputs at chosen modules, which
synthesizers (pooled features) and distillers (attention maps) both use."""
from __future__ import annotations

import torch
import torch.nn as nn


class FeatureTap:
    """Keeps the outputs of ``modules`` from the latest forward pass of ``net``.

    It also remembers which input tensor that pass saw (storage pointer, shape, version), so a distiller can reuse
    the teacher features a generator step already computed on the very same images instead of running the teacher
    again; :meth:`saw` tells whether that is the case.
    """

    def __init__(self, net: nn.Module, modules: list[tuple[str, nn.Module]], detach: bool = False):
        if not modules:
            raise ValueError("the model zoo names no feature blocks for this network")
        self.names = [n for n, _ in modules]
        self.detach = detach
        self.features: list[torch.Tensor | None] = [None] * len(modules)
        self._input_key = None
        self._handles = [net.register_forward_pre_hook(self._pre)]
        for i, (_, m) in enumerate(modules):
            self._handles.append(m.register_forward_hook(self._make_hook(i)))

    @staticmethod
    def _key(x: torch.Tensor):
        return (x.data_ptr(), tuple(x.shape), x._version)

    def _pre(self, module, inputs):
        self._input_key = self._key(inputs[0])
        self.features = [None] * len(self.features)

    def _make_hook(self, i: int):
        def hook(module, inputs, output):
            self.features[i] = output.detach() if self.detach else output
        return hook

    def saw(self, x: torch.Tensor) -> bool:
        return self._input_key == self._key(x) and all(f is not None for f in self.features)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
