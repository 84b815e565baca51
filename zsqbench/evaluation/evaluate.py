"""Top-1 on the real test set (or the dev split, for choosing settings): the only place where real images meet a
network."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from zsqbench.evaluation.data import load_eval_set
from zsqbench.evaluation.diagnostics import TeacherProbe, has_module


class Evaluator:
    def __init__(self, dataset: str, data_root: str | None, device: torch.device, limit: int | None = None,
                 batch_size: int = 100, split: str = "test", card: dict | None = None):
        self.dataset, self.device, self.batch_size = dataset, device, batch_size
        data = load_eval_set(dataset, split, data_root, card)  # fails early, with how-to-get-it, if missing
        if hasattr(data, "batches"):  # a BatchSource (ImageNet val), decoded batch by batch
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

    @torch.inference_mode()  # no autograd bookkeeping at all (issue 29)
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

    def data_hash(self) -> str | None:
        """sha256 of the evaluated tensors (in-memory datasets only; an image folder is not hashed)."""
        if self.images is None:
            return None
        h = hashlib.sha256()
        for t in (self.images, self.labels):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def reference(self, teacher: nn.Module, pool_module: str | None, teacher_sha: str | None,
                  cache_root: Path | None) -> tuple[float, str]:
        """The FP teacher's top-1 and the real set's diagnostics, cached on disk under ``cache_root`` keyed by
        (teacher sha256, evaluated data sha256, batch size, device type, pool module): the same teacher on the same
        images always gives the same figures, and a sweep would otherwise pay for this pass in every run.
        Returns (top-1, "hit" | "miss" | "off")."""
        data_sha = self.data_hash() if teacher_sha and cache_root else None
        if data_sha is None:
            return self.top1(teacher, pool_module), "off"
        key = hashlib.sha256(json.dumps([teacher_sha, data_sha, self.batch_size, self.device.type, pool_module,
                                         self.dataset]).encode()).hexdigest()[:24]
        path = Path(cache_root) / f"fp_{key}.json"
        try:
            cached = json.loads(path.read_text())
            self.real_stats = cached["real_stats"]
            return float(cached["top1"]), "hit"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        top1 = self.top1(teacher, pool_module)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"top1": top1, "real_stats": self.real_stats, "teacher_sha256": teacher_sha,
                                   "data_sha256": data_sha, "images": self.n}))
        os.replace(tmp, path)  # atomic: parallel sweep jobs may write the same entry
        return top1, "miss"

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
