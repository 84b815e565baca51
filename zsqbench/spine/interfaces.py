"""The three component interfaces and the Method recipe.

The engine (:mod:`zsqbench.spine.loop`) only ever calls these methods, so both synthesizer families fit without a
special case:

* image-optimisation synthesizers (ZeroQ, IntraQ, HAST, SynQ) build a fixed set in :meth:`Synthesizer.prepare`
  and sample from it in :meth:`Synthesizer.next_batch`;
* generator synthesizers (GDFQ, AdaDFQ/AdaSG, BAG, Qimera) build their generator in ``prepare`` and, in
  ``next_batch``, take one generator step from teacher (and student) feedback before handing the detached batch to
  the distiller.
"""
from __future__ import annotations

import abc
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal

import torch
import torch.nn as nn

from zsqbench.spine import settings as settings_mod
from zsqbench.spine.errors import Diverged, UserError

if TYPE_CHECKING:  # annotations only: the interfaces import no stage and nothing that imports the registry
    from zsqbench.teacher.datasets import DatasetInfo
    from zsqbench.teacher.zoo import ModelSpec


@dataclass
class Batch:
    """What a synthesizer hands the distiller for one step.

    ``labels`` is always set: the class each image was made for. ``soft_labels`` is set by synthesizers whose
    images stand for a mixture of classes (Qimera's superposed embeddings, SynQ's soft targets): a (B, C) row-
    stochastic target. Distillers score labels through :meth:`label_loss`, which uses the soft target when there is
    one, so a method that only changes its targets needs no distiller of its own."""

    images: torch.Tensor                         # (B, C, H, W) in the teacher's normalised input space
    labels: torch.Tensor                         # (B,) the class the image was made for (argmax of soft_labels)
    teacher_logits: torch.Tensor | None = None   # if the synthesizer already ran the teacher on these images
    metrics: dict[str, float] = field(default_factory=dict)  # e.g. the generator's loss terms, for the record
    soft_labels: torch.Tensor | None = None      # (B, num_classes) target distribution, rows summing to 1

    def label_loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits`` against this batch's targets: soft when given, else the hard labels."""
        return soft_cross_entropy(logits, self.labels if self.soft_labels is None else self.soft_labels)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against hard labels (B,) or a target distribution (B, C) — the latter is
    ``-sum_c p_c log softmax(logits)_c``, equal to F.cross_entropy's probability-target form."""
    import torch.nn.functional as F
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


class RunContext:
    """What every component may see: networks, dataset *metadata*, device, seed, helpers. Never real data."""

    def __init__(self, *, teacher: nn.Module, student: nn.Module | None, model: ModelSpec, dataset: DatasetInfo,
                 wbits: int, abits: int, quantizer: "Quantizer", device: torch.device, seed: int,
                 total_steps: int, warmup_steps: int, progress: Any = None,
                 cache_dir: str | None = None, teacher_hash: str | None = None, teacher_card: dict | None = None):
        self.teacher, self.student, self.model, self.dataset = teacher, student, model, dataset
        self.wbits, self.abits, self.quantizer, self.device = wbits, abits, quantizer, device
        self.seed = seed
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.progress = progress
        self.cache_dir, self.teacher_hash = cache_dir, teacher_hash
        self.teacher_card = teacher_card  # the teacher's input preprocessing (mean, std, fit), when the run knows it
        self.phase = "setup"
        self.step = 0
        self.stats: dict[str, Any] = {}  # components put timings/diagnostics here; they go into the record

    def check_finite(self, value: torch.Tensor, what: str = "loss") -> None:
        """Stop the run at the first NaN/Inf, naming the phase and step (never train on with a broken model)."""
        if not bool(torch.isfinite(value).all()):
            raise Diverged(self.phase, self.step, what)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.dataset.image_shape

    def random_labels(self, n: int) -> torch.Tensor:
        return torch.randint(0, self.num_classes, (n,), device=self.device)


class Component(abc.ABC):
    """Base for synthesizers, distillers and quantizers: a name and typed settings.

    A component declares its settings as a nested ``class Settings(<parent>.Settings)`` pydantic model (type,
    range, choices, default per field; :mod:`zsqbench.spine.settings`); ``defaults`` is derived from it. A component
    that gives only a plain ``defaults`` dict gets a model with types inferred from those values.

    ``self.settings`` is the validated instance (read ``self.settings.lr``: typed, and a misspelt name fails at
    once); ``self.config`` is a read-only dict view of the same values as given (``self.config["lr"]``), kept for
    plugins written against it. The engine builds components from the run plan with ``cls(settings, **values)``;
    ``cls(**values)`` (a test, a helper) validates the values itself."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Settings: ClassVar[type[settings_mod.Settings]] = settings_mod.Settings
    defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "Settings" in cls.__dict__:
            cls.defaults = settings_mod.defaults_of(cls.Settings)
        elif "defaults" in cls.__dict__:
            cls.Settings = settings_mod.model_from_defaults(f"{cls.__name__}Settings", cls.Settings, cls.defaults)

    def __init__(self, settings: settings_mod.Settings | None = None, /, **config: Any):
        values = {**self.defaults, **config}
        self.settings = settings_mod.check(self.Settings, values, self.kind) if settings is None else settings
        self.config = MappingProxyType(values)

    kind: ClassVar[str] = "component"


class Synthesizer(Component):
    kind = "synthesizer"

    def prepare(self, ctx: RunContext) -> None:
        """Build what is needed before training: a generator and its optimiser, or a whole image set."""

    @abc.abstractmethod
    def next_batch(self, ctx: RunContext, batch_size: int) -> Batch:
        """Images for one step (generators update themselves here first). Called in calibration and distill."""

    def calibration_batch(self, ctx: RunContext, batch_size: int) -> Batch:
        """Images for one activation-calibration step; the same stream as training unless overridden."""
        return self.next_batch(ctx, batch_size)

    def diagnostic_images(self, ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(images, labels) the evaluation compares with the real test set after the run (teacher features, value
        range, BNS error: record "diagnostics.data"); None (the default) skips the comparison."""
        return None


class Distiller(Component):
    kind = "distiller"

    def setup(self, ctx: RunContext) -> None:
        """Register feature hooks etc. on ctx.teacher / ctx.student."""

    @abc.abstractmethod
    def loss(self, ctx: RunContext, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """The student's loss on one batch and its named parts (floats, for the record)."""


class Quantizer(Component):
    """Turns a network into its fake-quantized copy and owns its activation ranges.

    ``capabilities`` says what a component may ask beyond :meth:`quantize`'s defaults; a caller that needs one
    calls :meth:`require` first and gets a one-line :class:`UserError` naming the quantizer if it is missing:

    * ``"quantize_inputs"``: ``quantize(..., quantize_inputs=True)`` also puts an activation quantizer on the input
      of every conv/linear layer (BAG's quantized generator, whose activations are not all ReLUs);
    * ``"activation_types"``: ``quantize(..., activation_types=(...))`` chooses after which modules activations are
      quantized (``()``: none);
    * ``"freeze_ranges"``: :meth:`set_calibrating` and :meth:`ranges_frozen` really stop range updates;
    * ``"first_last_bits"``: ``quantize(..., first_last_bits=8)`` keeps the first and last conv/linear layers'
      weights and the classifier's input activations at that many bits (a protocol's ``quantization`` block).
    """

    kind = "quantizer"
    capabilities: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def quantize(self, model: nn.Module, wbits: int, abits: int, *, quantize_inputs: bool = False,
                 activation_types: tuple[type[nn.Module], ...] | None = None) -> nn.Module:
        """A fake-quantized copy of ``model`` (its parameters trainable). The keyword arguments are capabilities
        (see the class docstring); a quantizer without them is only called with their defaults."""

    def require(self, capability: str, who: str) -> None:
        """Raise a one-line UserError unless this quantizer has ``capability`` (``who``: the method asking)."""
        if capability not in self.capabilities:
            have = ", ".join(sorted(self.capabilities)) or "none"
            raise UserError(f"{who} needs a quantizer that can {capability.replace('_', ' ')}; {self.name!r} "
                            f"cannot (its capabilities: {have}) — use quantizer minmax-ema")

    def set_calibrating(self, model: nn.Module, on: bool) -> None:
        """Start/stop updating activation ranges."""

    @contextmanager
    def ranges_frozen(self, model: nn.Module) -> Iterator[None]:
        """Within the block, activation ranges do not move (e.g. a generator's feedback pass through the
        student); the previous state is restored after it."""
        yield

    def uncalibrated(self, model: nn.Module) -> list[str]:
        """Names of activation quantizers that never saw data (the engine refuses to train with any)."""
        return []


@dataclass
class Method:
    """A named recipe: which components, and their settings per protocol (data, usually a JSON file)."""

    name: str
    synthesizer: str
    distiller: str
    quantizer: str = "minmax-ema"
    settings: dict[str, dict[str, Any]] | str | None = None  # {protocol: {...}} or a path to such a JSON file
    description: str = ""
    paper: str = ""
    # "floor" / "ceiling": a reference point every method is read against (the page draws it as a line), not a
    # method to rank; "" for a method
    role: Literal["", "floor", "ceiling"] = ""
    provider: str = field(default="", compare=False)

    def settings_for(self, protocol: str, dataset: str | None = None) -> dict[str, Any] | None:
        """This method's settings for ``protocol``; a ``"datasets": {name: {...}}`` entry inside them is merged
        over the rest for that dataset (e.g. AdaDFQ's T = 5 on ImageNet, 20 on CIFAR)."""
        import json
        from pathlib import Path
        from zsqbench.protocols import deep_merge
        data = self.settings
        if isinstance(data, (str, Path)):
            try:
                data = json.loads(Path(data).read_text())
            except (OSError, ValueError) as e:
                from zsqbench.spine.errors import UserError
                raise UserError(f"cannot read method {self.name!r}'s settings file {data}: {e}") from None
            if not isinstance(data, dict):
                from zsqbench.spine.errors import UserError
                raise UserError(f"method {self.name!r}'s settings file {data} is not a JSON object")
        if data is None:
            return None
        if "methods" in data:  # one file for several methods: {"methods": {name: {protocol: ...}}}
            data = data["methods"].get(self.name, {})
        entry = data.get(protocol, data.get("*"))
        if entry is None:
            return None
        per_dataset = entry.get("datasets", {})
        entry = {k: v for k, v in entry.items() if k != "datasets"}
        return deep_merge(entry, per_dataset.get(dataset, {})) if dataset else entry
