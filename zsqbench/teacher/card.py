"""Teacher cards: how a teacher expects its input (normalisation, and how small images reach the network's size),
declared with its weights, because a checkpoint trained with another normalisation is another function of the
pixels.

Where a run's card comes from, first match wins:

1. ``run --teacher-card FILE``;
2. ``<weights>.card.json`` beside a ``--weights`` file;
3. the embedded teacher's ``"card"`` entry in ``zsqbench/teacher/weights/manifest.json``;
4. the dataset's standard preprocessing (its registered :class:`~zsqbench.teacher.datasets.DatasetInfo`;
   reference §0), recorded as such.

A card file is JSON: ``{"mean": [0.2190], "std": [0.3318], "fit": "pad"}``. ``fit`` says how Fashion-MNIST's 28×28
images reach the 32×32 input — ``pad`` (2 zero pixels each side, before normalising) or ``resize`` (bilinear);
leave it out for datasets whose images already have the network's size (CIFAR) or a fixed recipe (ImageNet: resize
256, centre crop 224). Only datasets that declare a ``stored_size`` (images smaller than the network input) take a
``fit``; theirs defaults to the dataset's ``default_fit`` (``pad`` unless the dataset says ``resize``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from zsqbench.spine.errors import UserError
from zsqbench.spine.settings import Settings, check

CARD_SUFFIX = ".card.json"


class TeacherCard(Settings):
    mean: Annotated[list[float], Field(min_length=1)] = Field(description="per-channel mean, pixel values in [0, 1]")
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = Field(description="per-channel std")
    fit: Literal["pad", "resize"] | None = Field(
        None, description="28x28 -> 32x32: zero-pad (pad) or bilinear (resize); null: the dataset's standard")
    fp_top1: float | None = Field(None, ge=0, le=100, description="the teacher's FP top-1 (%) on the test split "
                                  "as measured with this card: a run whose FP top-1 is far from it is refused")
    num_classes: Annotated[int, Field(gt=0)] | None = Field(None, description="own networks: the number of classes")
    input_size: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=3, max_length=3)] | None = Field(
        None, description="own networks: the input (C, H, W) after the fit")


def default_card(dataset: str) -> dict:
    from zsqbench.spine.registry import dataset_info
    info = dataset_info(dataset)
    fit = (info.default_fit or "pad") if info.stored_size else None
    return {"mean": list(info.mean), "std": list(info.std), "fit": fit}


def _small_image_datasets() -> list[str]:
    from zsqbench.spine.registry import get_registry
    return sorted(name for name, e in get_registry().datasets.items() if e.obj.info.stored_size)


def check_card(card: dict, dataset: str, where: str) -> dict:
    """A complete card for ``dataset`` (``fit`` filled in), or one line saying what is wrong with it."""
    from zsqbench.spine.registry import dataset_info
    check(TeacherCard, card, f"teacher card {where}")
    info = dataset_info(dataset)
    channels = info.image_shape[0]
    for key in ("mean", "std"):
        if len(card[key]) != channels:
            raise UserError(f"teacher card {where}: {key} has {len(card[key])} values, but {dataset} images have "
                            f"{channels} channel(s)")
    fit = card.get("fit")
    if fit is not None and not info.stored_size:
        raise UserError(f"teacher card {where}: fit={fit!r} applies only to images smaller than the network input "
                        f"({', '.join(_small_image_datasets())}); leave it out for {dataset}")
    return {"mean": [float(m) for m in card["mean"]], "std": [float(s) for s in card["std"]],
            "fit": fit or default_card(dataset)["fit"],
            **({"fp_top1": float(card["fp_top1"])} if card.get("fp_top1") is not None else {})}


def claimed_fp_top1(card: dict, teacher_info: dict) -> float | None:
    """The FP top-1 the teacher's card claims: the card file's ``fp_top1``, or the manifest's for an embedded
    teacher fed its manifest card (None: no claim)."""
    if card.get("fp_top1") is not None:
        return card["fp_top1"]
    if card.get("source") == "manifest":
        return teacher_info.get("manifest_fp_top1")
    return None


def check_fp_claim(measured: float, card: dict, teacher_info: dict, images: int, split: str) -> None:
    """Refuse a teacher whose FP top-1 on the test split is far from its card's claim (wrong weights, a wrong
    normalisation): before any calibration or training. "Far": more than max(3 points, 4 binomial standard errors
    of the evaluated images). The dev split is not checked (a claim is about the test split)."""
    claim = claimed_fp_top1(card, teacher_info)
    if claim is None or split != "test" or not images:
        return
    p = min(max(claim / 100, 0.01), 0.99)
    tolerance = max(3.0, 400 * (p * (1 - p) / images) ** 0.5)
    if abs(measured - claim) > tolerance:
        where = "the manifest" if card.get("source") == "manifest" else f"teacher card {card.get('source')}"
        raise UserError(f"the teacher's FP top-1 is {measured:.2f} % on {images} test images, but {where} claims "
                        f"{claim:.2f} % (more than {tolerance:.1f} points apart): wrong weights or a wrong teacher "
                        "card (normalisation); no run started")


def read_card(path: Path, dataset: str) -> dict:
    try:
        card = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read teacher card {path}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"teacher card {path} is not JSON: {e}") from None
    if not isinstance(card, dict):
        raise UserError(f"teacher card {path} must be a JSON object such as "
                        '{"mean": [0.286], "std": [0.353], "fit": "pad"}')
    return check_card({k: v for k, v in card.items() if k != "about"}, dataset, str(path))


def preprocessing_identity(card: dict) -> dict:
    """What of a card changes results (its values, not where it was declared): part of a run's and a job's hash."""
    return {k: card[k] for k in ("mean", "std", "fit")}


def resolve_card(model_spec, weights: str | None, card_file: str | None) -> dict:
    """The preprocessing a run feeds its teacher, with ``source`` saying where it was declared."""
    dataset = model_spec.dataset
    if card_file:
        path = Path(card_file).expanduser()
        if not path.is_file():
            raise UserError(f"teacher card not found: {path}")
        return {**read_card(path, dataset), "source": str(path)}
    if weights:
        beside = Path(str(Path(weights).expanduser()) + CARD_SUFFIX)
        if beside.is_file():
            return {**read_card(beside, dataset), "source": str(beside)}
        return {**default_card(dataset), "source": f"dataset default (no {beside.name} beside the weights)"}
    if getattr(model_spec, "weights_file", None):  # a plugin teacher's own weights: its card beside them
        beside = Path(str(model_spec.weights_file) + CARD_SUFFIX)
        if beside.is_file():
            return {**read_card(beside, dataset), "source": str(beside)}
    if model_spec.embedded_weights:
        from zsqbench.teacher.zoo import MANIFEST, read_manifest
        entry = read_manifest().get(model_spec.embedded_weights) or {}
        if "card" in entry:
            return {**check_card(entry["card"], dataset, f"of {model_spec.key} in {MANIFEST}"), "source": "manifest"}
    return {**default_card(dataset), "source": "dataset default"}
