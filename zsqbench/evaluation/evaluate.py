"""Top-1 on the real test set: the only place where real images meet a network."""
from __future__ import annotations

import torch
import torch.nn as nn

from zsqbench.evaluation.data import ImageFolderVal, load_test_set


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

    def batches(self):
        if self.folder is not None:
            for x, y in self.folder.batches(self.batch_size, self.limit):
                yield x.to(self.device), y.to(self.device)
        else:
            for i in range(0, self.n, self.batch_size):
                yield self.images[i:i + self.batch_size], self.labels[i:i + self.batch_size]

    @torch.no_grad()
    def top1(self, model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        correct = 0
        for x, y in self.batches():
            correct += (model(x).argmax(1) == y).sum().item()
        model.train(was_training)
        return 100.0 * correct / self.n
