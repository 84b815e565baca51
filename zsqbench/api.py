"""zsqbench's public surface for plugin authors: import from here, nothing else from ``zsqbench``.

Everything below is stable across minor versions; the modules it comes from are not. The built-in plugins
(``plugins/``) import only from this module (``tests/test_api.py`` enforces it), so anything they can do, a
third-party package can do too. The author's guide is ``docs/plugins.md``.

A plugin is a module with one hook::

    from zsqbench.api import hookimpl, Method

    @hookimpl
    def zsqbench_register(registry):
        registry.add_synthesizer(MySynthesizer)           # a component class (name = its ``name``)
        registry.add_method(Method("mine", synthesizer="mine", distiller="kd", settings="mine.json"))

named in its package's ``[project.entry-points.zsqbench]`` table. ``registry`` (:class:`Registry`) also takes
``add_distiller``, ``add_quantizer``, ``add_model`` (a :class:`ModelSpec`), ``add_dataset`` and ``add_protocol``.

The pieces, along the data path:

* :class:`Synthesizer` — makes the images. Two family bases hold the shared machinery:

  - :class:`GeneratorSynthesizer` (GDFQ, AdaDFQ, BAG, Qimera): one generator step per student step. Override
    ``generator_loss`` (required), and where the method differs ``sample_conditioning`` (which classes or class
    mixtures, :class:`Conditioning`), ``build_generator``, ``generate``, ``student_feedback``/``student_logits``.
  - :class:`ImageSetSynthesizer` (ZeroQ, IntraQ, HAST, SynQ): optimise a fixed image set once, then sample it.
    Override ``synthesis_loss`` (required), and ``begin_batch``/``end_batch`` for state across batches.

  Both see the teacher's BN statistics through :class:`BNStatHooks` (``self.bns``): ``self.bns.loss()`` is the
  built-in BNS term, ``self.bns.stats()`` the per-layer :class:`BNLayerStats` (name, batch and per-sample moments,
  running statistics) of the last teacher pass, for a BNS variant of one's own (``bns_loss``, ``per_sample_bns_loss``).

* :class:`Distiller` — the student's loss on a :class:`Batch`; ``batch.label_loss(logits)`` scores against the
  batch's targets (hard labels, or ``batch.soft_labels``). :class:`KDDistiller` and :class:`ChannelAttentionKD` are
  the shared ones, to subclass or reuse by name (``"kd"``, ``"kd-ca"``).
* :class:`Quantizer` — the fake-quantized student; ``quantizer.require(capability, who)`` before asking for a
  capability (``"quantize_inputs"``, ``"activation_types"``, ``"freeze_ranges"``).
* :class:`RunContext` — what every component sees: teacher, student, dataset *metadata*, bit-widths, device,
  seed, step counts. Never real data.
* Settings: each component declares ``class Settings(<Base>.Settings)``, a pydantic model (``Field`` for ranges,
  ``Literal`` for choices); a bad value becomes a one-line error before the teacher loads.
* Teachers and datasets: ``registry.add_model(ModelSpec(...))`` (a network builder and its weights) and
  ``registry.add_dataset(DatasetInfo(...), loader)`` (metadata, and a :class:`DatasetLoader` that reads the real
  evaluation images; ``find_files``/``read_idx`` help, ``DataNotFound`` reports what is missing). Only the
  evaluation step calls loaders: methods see ``ctx.dataset`` (the :class:`DatasetInfo`), never images.
* Errors: raise :class:`UserError` for anything the user can fix — the CLI prints its message as one line, exits
  2 and writes no record.
"""
from __future__ import annotations

from pydantic import Field

from zsqbench.distiller.attention import ChannelAttentionKD, attention_loss, channel_attention
from zsqbench.distiller.kd import KDDistiller, kd_kl, teacher_logits
from zsqbench.evaluation.data import BatchSource, DataNotFound, DatasetLoader, candidate_dirs, find_files, read_idx
from zsqbench.spine.errors import Diverged, UserError
from zsqbench.spine.hookspecs import hookimpl
from zsqbench.spine.interfaces import (Batch, Component, Distiller, Method, Quantizer, RunContext, Synthesizer,
                                 soft_cross_entropy)
from zsqbench.spine.registry import Registry
from zsqbench.spine.settings import CropScale, Fraction, ScheduleFraction, Settings
from zsqbench.synthesizer.bns import BNLayerStats, BNStatHooks, bns_loss, per_sample_moment_loss, per_sample_bns_loss
from zsqbench.synthesizer.generator import Conditioning, Generator, GeneratorSynthesizer, upsample_conv
from zsqbench.synthesizer.imageopt import ImageSetSynthesizer
from zsqbench.teacher.datasets import DatasetInfo
from zsqbench.teacher.taps import FeatureTap
from zsqbench.teacher.zoo import ModelSpec

__all__ = [
    # plugin hook and registry
    "hookimpl", "Registry", "Method",
    # components and what flows between them
    "Component", "Synthesizer", "Distiller", "Quantizer", "Batch", "RunContext",
    # the generator family
    "GeneratorSynthesizer", "Conditioning", "Generator", "upsample_conv",
    # the image-set family
    "ImageSetSynthesizer",
    # shared losses and helpers
    "KDDistiller", "ChannelAttentionKD", "kd_kl", "teacher_logits", "soft_cross_entropy", "attention_loss",
    "channel_attention", "FeatureTap", "BNStatHooks", "per_sample_moment_loss",
    # BN statistics (per layer, per sample) and the built-in BNS losses written on them
    "BNLayerStats", "bns_loss", "per_sample_bns_loss",
    # settings
    "Settings", "Field", "Fraction", "ScheduleFraction", "CropScale",
    # teachers and datasets (a dataset plugin's loader: DatasetLoader; methods never see real images)
    "ModelSpec", "DatasetInfo", "DatasetLoader", "BatchSource", "DataNotFound", "find_files", "candidate_dirs",
    "read_idx",
    # errors
    "UserError", "Diverged",
]
