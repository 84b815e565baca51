"""Image-optimisation synthesizers (ZeroQ, IntraQ, HAST, SynQ): optimise a fixed image set once, then sample from it.

Synthesis, shared by all of them (the skeleton of ZeroQ's and IntraQ/HAST's ``distill_data.py``):

* the set is built ``synthesis_batch_size`` images at a time; a whole batch is one leaf tensor initialised from
  N(0, 1) in the teacher's normalised input space, optimised by Adam (lr 0.5) with ReduceLROnPlateau on the total
  loss (factor 0.1, ``plateau_patience``, ``min_lr``) for ``iterations`` steps;
* each step may show the teacher a random resized crop + flip of every image instead (probability
  ``synthesis_augment_p`` per step, crop area ``synthesis_crop_scale``: IntraQ's local object reinforcement, HAST's
  ImageNet augmentation);
* the teacher's BatchNorm inputs are matched to its running statistics (:class:`BNStatHooks`); a subclass adds its
  own terms in :meth:`ImageSetSynthesizer.synthesis_loss` and may keep state across batches
  (:meth:`begin_batch` / :meth:`end_batch`: IntraQ's class centres).

All randomness of synthesis comes from its own generator seeded with the run's seed, so a set depends only on
(the synthesizer's code and the core's, synthesis settings, teacher weights and input card, seed, device type) —
that tuple, and nothing else (not the bit-width, not the fine-tuning settings), is the key of the on-disk cache
(:func:`cache_root`, :meth:`ImageSetSynthesizer.cache_key_fields`). A cached set is a plain
``torch.save`` of tensors and JSON-able values, loaded with ``weights_only=True``.

Fine-tuning samples the set without replacement, epoch by epoch, and by default applies RandomResizedCrop(0.5-1)
+ flip per image (IntraQ/HAST ``main_direct.py``). Activation ranges calibrate on the same stream, unless
``calibration_synthesizer`` names another registered synthesizer: the official IntraQ/HAST code calibrates on a
GDFQ generator trained during the warm-up (``calibration_synthesizer=gdfq``, ``calibration_batch_size=16``).
"""
from __future__ import annotations

import abc
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator

from zsqbench.protocols import canonical_hash
from zsqbench.spine.errors import UserError
from zsqbench.spine.interfaces import Batch, RunContext, Synthesizer
from zsqbench.spine.settings import CropScale, Fraction
from zsqbench.synthesizer.augment import random_resized_crop_flip
from zsqbench.synthesizer.bns import BNStatHooks
from zsqbench.synthesizer.preview import class_grid, write_png
from zsqbench.teacher.taps import FeatureTap

CACHE_FORMAT = 2  # 2: the key holds the synthesizer's code and the teacher's card
from zsqbench.spine.cache import ENV_CACHE_DIR, cache_base  # noqa: F401  (ENV_CACHE_DIR: re-exported for callers)


def cache_root(cache_dir: str | None) -> Path:
    """Where synthetic sets live: ``<--cache-dir>/synthetic``, else ``$ZSQBENCH_CACHE_DIR/synthetic``, else
    ``~/.cache/zsqbench/synthetic``."""
    return cache_base(cache_dir) / "synthetic"


def mean_parts(parts: list[dict[str, float]]) -> dict[str, float]:
    """Per loss term, the mean over the batches that have it (IntraQ's first batch has no MDC term)."""
    keys = sorted({k for p in parts for k in p})
    return {k: round(sum(p[k] for p in parts if k in p) / sum(k in p for p in parts), 6) for k in keys}


class ImageSetSynthesizer(Synthesizer):
    """A fixed synthetic set, optimised in :meth:`prepare` (or loaded from the cache) and sampled in
    :meth:`next_batch`. Subclasses give :meth:`synthesis_loss`."""

    # settings that only change how the finished set is used: left out of the cache key
    USE_KEYS = ("train_augment", "train_crop_scale", "calibration_synthesizer", "calibration_synthesizer_config",
                "calibration_batch_size")
    bns_form = "batch"             # BNStatHooks form (ZeroQ: "per-sample")
    uses_pooled_features = False   # hand the teacher's pooled features to synthesis_loss (IntraQ's MDC)
    uses_bn_statistics = True      # matches the teacher's BN statistics: an own network needs BatchNorm2d layers

    class Settings(Synthesizer.Settings):
        num_images: int = Field(512, ge=1, le=1_000_000, description="size of the synthetic set")
        synthesis_batch_size: int = Field(128, ge=1, le=8192)
        iterations: int = Field(200, ge=0, le=1_000_000, description="optimisation steps per batch")
        lr: float = Field(0.5, gt=0)
        plateau_patience: int = Field(50, ge=0)
        min_lr: float = Field(1e-4, ge=0)
        synthesis_augment_p: Fraction = Field(0.0, description="probability of a crop + flip synthesis step")
        synthesis_crop_scale: CropScale = [0.5, 1.0]
        train_augment: bool = Field(True, description="crop + flip the set's images during fine-tuning")
        train_crop_scale: CropScale = [0.5, 1.0]
        calibration_synthesizer: str | None = Field(None, description="calibrate on another synthesizer")
        calibration_synthesizer_config: dict = {}
        calibration_batch_size: int | None = Field(None, ge=1)

        @model_validator(mode="after")
        def _crop_scales_ordered(self):
            for key in ("synthesis_crop_scale", "train_crop_scale"):
                low, high = getattr(self, key)
                if low > high:
                    raise ValueError(f"{key} must be [low, high] with low <= high, got {[low, high]}")
            return self

    # --- what a method adds ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def synthesis_loss(self, ctx: RunContext, state: dict, images: torch.Tensor, logits: torch.Tensor,
                       labels: torch.Tensor, bns: torch.Tensor, features: torch.Tensor | None
                       ) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss of one synthesis step on the ``images`` the teacher saw (``bns`` is the BNS term of this
        forward pass, ``features`` its pooled features if :attr:`uses_pooled_features`) and its parts.
        ``self.bns.stats()`` holds the pass's per-layer BN statistics, for a BNS variant of one's own."""

    def begin_batch(self, ctx: RunContext, labels: torch.Tensor, generator: torch.Generator) -> dict:
        """Per-batch state for :meth:`synthesis_loss` (soft targets, class centres, ...)."""
        return {}

    def end_batch(self, ctx: RunContext, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Called with each finished batch; returns the labels to store (ZeroQ: the teacher's predictions)."""
        return labels

    # --- the set -----------------------------------------------------------------------------------------------

    def cache_key_fields(self, ctx: RunContext) -> dict[str, Any]:
        """Everything that made the set: the synthesizer (name, class, its code and the core's computing code, by
        the fingerprints a record's ``code`` holds), its synthesis settings, the teacher (weights' sha256, model key,
        input card), the seed and the device type. An edit to the synthesizer's code is a new key: a cache miss."""
        from zsqbench.spine.provenance import component_code
        from zsqbench.teacher.card import preprocessing_identity
        synthesis = {k: v for k, v in sorted(self.config.items()) if k not in self.USE_KEYS}
        card = preprocessing_identity(ctx.teacher_card) if ctx.teacher_card else None
        return {"format": CACHE_FORMAT, "synthesizer": self.name, "class": type(self).__qualname__,
                "code": component_code(type(self)), "bns_form": self.bns_form, "synthesis": synthesis,
                "teacher_sha256": ctx.teacher_hash, "teacher_card": card, "model": ctx.model.key, "seed": ctx.seed,
                "device": ctx.device.type}

    def cache_path(self, ctx: RunContext) -> Path | None:
        """The set's file, or None when the teacher has no content hash (then nothing is cached)."""
        if not ctx.teacher_hash:
            return None
        key = canonical_hash(self.cache_key_fields(ctx))
        return cache_root(ctx.cache_dir) / f"{self.name}_{ctx.model.key.replace('@', '-')}_seed{ctx.seed}_{key[:16]}.pt"

    def prepare(self, ctx: RunContext) -> None:
        t0 = time.perf_counter()
        path = self.cache_path(ctx)
        if path is not None and path.exists():
            images, labels, stats = self.load(ctx, path)
            stats = {**stats, "cache": "hit", "load_s": round(time.perf_counter() - t0, 3)}
        else:
            images, labels, stats = self.synthesize(ctx)
            stats["cache"] = "miss" if path is not None else "off (the teacher weights have no sha256)"
            if path is not None:
                self.save(ctx, path, images, labels, stats)
        if path is not None:
            stats["cache_file"] = str(path)
        self.images, self.labels = images.to(ctx.device), labels.to(ctx.device)
        self.cache_hit = stats["cache"] == "hit"
        ctx.stats["synthesis"] = stats
        self._queue = torch.empty(0, dtype=torch.long)
        self._calibrator = self.build_calibrator(ctx)

    def synthesize(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor, dict]:
        cfg, dev = self.settings, ctx.device
        gen = torch.Generator(device=dev).manual_seed(ctx.seed)
        n_total, bsz, iters = cfg.num_images, cfg.synthesis_batch_size, cfg.iterations
        n_batches = math.ceil(n_total / bsz)
        try:
            bns = self.bns = BNStatHooks(ctx.teacher, self.bns_form)  # self.bns.stats(): per-layer statistics
        except ValueError as e:
            raise UserError(f"synthesizer {self.name!r}: {e}") from None
        tap = self.pool_tap(ctx) if self.uses_pooled_features else None
        task = ctx.progress.add_task("synthesis", total=n_batches * iters, info="") if ctx.progress else None
        images, labels, final_parts = [], [], []
        t0 = time.perf_counter()
        try:
            for b in range(n_batches):
                n = min(bsz, n_total - b * bsz)
                x = torch.randn((n, *ctx.image_shape), generator=gen, device=dev).requires_grad_(True)
                y = torch.randint(0, ctx.num_classes, (n,), generator=gen, device=dev)
                state = self.begin_batch(ctx, y, gen)
                opt = torch.optim.Adam([x], lr=cfg.lr)
                sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=cfg.plateau_patience,
                                                                   min_lr=cfg.min_lr)
                parts: dict[str, float] = {}
                for it in range(iters):
                    ctx.step = b * iters + it
                    view = x
                    if cfg.synthesis_augment_p > 0 and \
                            float(torch.rand((), generator=gen, device=dev)) < cfg.synthesis_augment_p:
                        view = random_resized_crop_flip(x, tuple(cfg.synthesis_crop_scale), generator=gen)
                    with bns.recording():
                        logits = ctx.teacher(view)
                    features = tap.features[0].flatten(1) if tap else None
                    loss, parts = self.synthesis_loss(ctx, state, view, logits, y, bns.loss(), features)
                    ctx.check_finite(loss, "synthesis loss")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step(loss.item())
                    if task is not None:
                        ctx.progress.update(task, advance=1, info=f"batch {b + 1}/{n_batches} loss {loss.item():.4g}")
                done = x.detach()
                images.append(done)
                labels.append(self.end_batch(ctx, done, y))
                final_parts.append({"loss": loss.item(), **parts} if iters else {})
        finally:
            bns.remove()
            if tap:
                tap.remove()
        wall = time.perf_counter() - t0
        images_t, labels_t = torch.cat(images), torch.cat(labels)
        stats = {"images": n_total, "iterations": iters, "batches": n_batches, "wall_s": round(wall, 3),
                 "image_iterations_per_s": round(n_total * iters / wall, 2) if wall > 0 else None,
                 "final": mean_parts(final_parts),  # each batch's last step, averaged over batches
                 "teacher_agrees": round(self.teacher_agreement(ctx, images_t, labels_t), 4)}
        return images_t, labels_t, stats

    def pool_tap(self, ctx: RunContext) -> FeatureTap:
        name = ctx.model.pool_module
        try:
            module = ctx.teacher.get_submodule(name)
        except AttributeError:
            raise UserError(f"{ctx.model.key} has no module {name!r} (its ModelSpec.pool_module)") from None
        return FeatureTap(ctx.teacher, [(name, module)])

    @torch.no_grad()
    def pooled_features(self, ctx: RunContext, images: torch.Tensor) -> torch.Tensor:
        """The teacher's pooled features (N, D) of ``images``, in chunks of 256."""
        tap = self.pool_tap(ctx)
        feats = []
        try:
            for x in images.split(256):
                ctx.teacher(x)
                feats.append(tap.features[0].flatten(1))
        finally:
            tap.remove()
        return torch.cat(feats)

    @torch.no_grad()
    def teacher_agreement(self, ctx: RunContext, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of the set the teacher classifies as its label (in chunks; 1.0 for ZeroQ by construction)."""
        hits = sum(int((ctx.teacher(x).argmax(1) == y).sum()) for x, y in zip(images.split(256), labels.split(256)))
        return hits / max(1, len(labels))

    # --- cache -------------------------------------------------------------------------------------------------

    def save(self, ctx: RunContext, path: Path, images: torch.Tensor, labels: torch.Tensor, stats: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = self.cache_key_fields(ctx)
        tmp = path.with_suffix(".tmp")
        torch.save({"images": images.detach().float().cpu().contiguous(), "labels": labels.long().cpu(),
                    "key": json.dumps(fields, sort_keys=True), "stats": json.dumps(stats)}, tmp)
        os.replace(tmp, path)  # atomic: a run killed mid-write never leaves a half file under the real name
        path.with_suffix(".json").write_text(json.dumps({"key": fields, "stats": stats}, indent=2) + "\n")
        write_png(path.with_suffix(".png"), class_grid(images, labels, ctx.num_classes, ctx.dataset.mean,
                                                        ctx.dataset.std))

    def load(self, ctx: RunContext, path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
        def bad(why: str) -> UserError:
            return UserError(f"synthetic-set cache {path} {why}; delete it and run again to rebuild it")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise bad(f"is unreadable ({type(e).__name__})") from None
        if not isinstance(data, dict) or not {"images", "labels", "key", "stats"} <= set(data):
            raise bad("is not a zsqbench synthetic set")
        images, labels = data["images"], data["labels"]
        expect = (self.settings.num_images, *ctx.image_shape)
        if not (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)):
            raise bad("holds no image/label tensors")
        if tuple(images.shape) != expect or images.dtype != torch.float32 or tuple(labels.shape) != expect[:1]:
            raise bad(f"holds {tuple(images.shape)} images, expected {expect}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= ctx.num_classes):
            raise bad("has labels outside the teacher's classes")
        if not bool(torch.isfinite(images).all()):
            raise bad("holds non-finite values")
        try:
            key, stats = json.loads(data["key"]), json.loads(data["stats"])
        except (TypeError, json.JSONDecodeError):
            raise bad("has an unreadable header") from None
        if key != json.loads(json.dumps(self.cache_key_fields(ctx), sort_keys=True)):
            raise bad("was built for other settings than its name says")
        return images, labels.long(), stats

    # --- using the set -----------------------------------------------------------------------------------------

    def build_calibrator(self, ctx: RunContext) -> Synthesizer | None:
        name = self.settings.calibration_synthesizer
        if not name:
            return None
        from zsqbench.spine.registry import get_registry
        cls = get_registry().get("synthesizers", name)
        calibrator = cls(**self.settings.calibration_synthesizer_config)
        calibrator.prepare(ctx)
        return calibrator

    def calibration_batch(self, ctx: RunContext, batch_size: int) -> Batch:
        if self._calibrator is None:
            return self.next_batch(ctx, batch_size)
        return self._calibrator.next_batch(ctx, self.settings.calibration_batch_size or batch_size)

    def take(self, batch_size: int) -> torch.Tensor:
        """Indices for one batch: the set in a fresh random order each epoch, no image twice in an epoch."""
        while len(self._queue) < batch_size:
            self._queue = torch.cat([self._queue, torch.randperm(len(self.labels))])
        idx, self._queue = self._queue[:batch_size], self._queue[batch_size:]
        return idx.to(self.images.device)

    def next_batch(self, ctx: RunContext, batch_size: int) -> Batch:
        self._calibrator = None  # calibration is over; let a calibration generator go
        idx = self.take(batch_size)
        images, labels = self.images[idx], self.labels[idx]
        if self.settings.train_augment:
            images = random_resized_crop_flip(images, tuple(self.settings.train_crop_scale))
        return Batch(images, labels)

    def diagnostic_images(self, ctx: RunContext):
        images = getattr(self, "images", None)
        return None if images is None else (images, self.labels)
