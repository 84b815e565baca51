"""Top-1 on the real test set: the only place where real images meet a network."""
from __future__ import annotations

import torch
import torch.nn as nn

from zsqbench.evaluation.data import ImageFolderVal, load_test_set
from zsqbench.evaluation.diagnostics import TeacherProbe, has_module


class Evaluator:
    def __init__(self, dataset: str, data_root: str | None, device: torch.device, limit: int | None = None,
                 batch_size: int = 100):
        self.dataset, self.device, self.batch_size = dataset, device, batch_size
        data = load_test_set(dataset, data_root)  # fails early, with how-to-get-it, if missing
        if isinstance(data, ImageFolderVal):
            self.folder, self.images, self.labels = data, None, None
            self.n = min(len(data), limit) if limit else len(data)
        else:
            x, y = data
            if limit:
                x, y = x[:limit], y[:limit]
            self.folder, self.images, self.labels = None, x.to(device), y.to(device)
            self.n = len(y)
        self.limit = limit
        self.real_stats: dict | None = None

    def batches(self):
        if self.folder is not None:
            for x, y in self.folder.batches(self.batch_size, self.limit):
                yield x.to(self.device), y.to(self.device)
        else:
            for i in range(0, self.n, self.batch_size):
                yield self.images[i:i + self.batch_size], self.labels[i:i + self.batch_size]

    @torch.no_grad()
    def top1(self, model: nn.Module, pool_module: str | None = None) -> float:
        """Top-1 (%) on the test set. With ``pool_module`` (the teacher's pooled-feature module) the same pass
        also gathers the real set's diagnostics (:attr:`real_stats`, see :mod:`zsqbench.evaluation.diagnostics`)."""
        was_training = model.training
        model.eval()
        probe = TeacherProbe(model, pool_module) if pool_module and has_module(model, pool_module) else None
        correct = 0
        try:
            for x, y in self.batches():
                correct += ((probe(x, y) if probe else model(x)).argmax(1) == y).sum().item()
        finally:
            if probe:
                self.real_stats = probe.close()
        model.train(was_training)
        return 100.0 * correct / self.n

    @torch.no_grad()
    def compare(self, teacher: nn.Module, pool_module: str, images: torch.Tensor, labels: torch.Tensor) -> dict:
        """The diagnostics of a synthetic set beside the real test set's, in the same normalised space."""
        if not has_module(teacher, pool_module):
            return {"unavailable": f"the teacher has no module {pool_module!r} (ModelSpec.pool_module)"}
        if self.real_stats is None:
            self.top1(teacher, pool_module)
        probe = TeacherProbe(teacher, pool_module)
        try:
            for x, y in zip(images.split(self.batch_size), labels.split(self.batch_size)):
                probe(x.to(self.device), y.to(self.device))
        finally:
            synthetic = probe.close()
        return {"synthetic": synthetic, "real": self.real_stats, "batch_size": self.batch_size}
