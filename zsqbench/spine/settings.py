"""Typed settings: every component's settings and the protocol's ``train``/``eval`` sections are pydantic models,
checked (never converted) before a run does any work, so a bad value is one line naming the key, the value and
what is allowed.

Validation is strict — ``"3"`` is not an integer, ``1`` is not ``true``, NaN/inf are not numbers — and runs once per
run, in :func:`zsqbench.spine.plan.resolve`: components and the loop read the validated instances, while the
configuration a record keeps (and a job's hash) is the data as given, not a re-serialised copy.

A component declares its settings as a nested ``Settings`` model (its field defaults are the component's
``defaults``); a plugin that gives only a plain ``defaults`` dict gets a model whose types are inferred from those
values (see :func:`model_from_defaults`).
"""
from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, Mapping

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from zsqbench.spine.errors import UserError


class Settings(BaseModel):
    """Base of every settings model: strict types, unknown keys refused, finite numbers only."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


Fraction = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
ScheduleFraction = Annotated[float, Field(gt=0, le=1)]  # a milestone: a fraction of the run's steps
CropScale = Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=2, max_length=2)]


# Sane maxima (a typo such as train.steps=10000000000 would start a run of years): 12x the paper protocol's
# 79 200 steps; a batch far above any protocol's (200) and any method's official one.
MAX_STEPS = 1_000_000
MAX_BATCH = 8192


class TrainSettings(Settings):
    """The protocol's ``train`` section (a method's settings may override any of it)."""

    steps: int = Field(ge=0, le=MAX_STEPS, description="student (distillation) steps")
    warmup_steps: int = Field(ge=0, le=MAX_STEPS,
                              description="calibration / generator warm-up steps before distillation")
    batch_size: int = Field(ge=1, le=MAX_BATCH)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: Positive = Field(description="student learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: NonNegative = 0.0
    milestones: list[ScheduleFraction] = Field(description="lr x gamma at these fractions of the steps")
    gamma: float = Field(gt=0, le=1)
    average_from: float | None = Field(
        None, ge=0, lt=1, description="score the average of the student's weights over the steps after this "
        "fraction of the run (stochastic weight averaging); null: the last weights")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.optimizer == "sgd" and self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=true needs momentum > 0 (set train.nesterov=false or a momentum)")
        return self


class EvalSettings(Settings):
    """The protocol's ``eval`` section."""

    every: int | None = Field(None, ge=0, description="evaluate every N steps (0/null: at the end only)")
    limit: int | None = Field(None, ge=1, description="the first N evaluation images (null: all)")
    batch_size: int = Field(100, ge=1, le=MAX_BATCH)
    split: Literal["test", "dev"] = Field("test", description="dev: held-out train images, to choose settings")


SECTION_MODELS: dict[str, type[Settings]] = {"train": TrainSettings, "eval": EvalSettings}


# --- models from plain defaults (plugins that declare no Settings model) -------------------------------------

def _inferred_type(value: Any) -> Any:
    if value is None:
        return Any
    if isinstance(value, bool):
        return bool
    if isinstance(value, float):
        return float
    if isinstance(value, int):
        return int
    if isinstance(value, str):
        return str
    if isinstance(value, (list, tuple)):
        return list
    if isinstance(value, dict):
        return dict
    return Any


def model_from_defaults(name: str, base: type[Settings], defaults: dict[str, Any]) -> type[Settings]:
    """A settings model for a plain ``defaults`` dict: keys the base model declares keep its type and bounds (with
    the new default); new keys get the type of their default value (``None``: any)."""
    from pydantic.fields import FieldInfo
    fields = {}
    for key, value in defaults.items():
        if key in base.model_fields:
            info = base.model_fields[key]
            fields[key] = (info.annotation, FieldInfo.merge_field_infos(info, default=value))
        else:
            fields[key] = (_inferred_type(value), value)
    return create_model(name, __base__=base, **fields)


def defaults_of(model: type[Settings]) -> dict[str, Any]:
    """Field defaults of a settings model (fields without one are left out)."""
    from pydantic_core import PydanticUndefined
    out = {}
    for key, info in model.model_fields.items():
        if info.default is not PydanticUndefined:
            out[key] = info.default
        elif info.default_factory is not None:
            out[key] = info.default_factory()
    return out


# --- checking ---------------------------------------------------------------------------------------------------

def check(model: type[Settings], values: dict, prefix: str, source=None) -> Settings:
    """``values`` (a ``prefix`` section) as a validated ``model`` instance, or a one-line UserError for the first bad
    value, naming the key, the value, what is allowed and — through ``source(key)`` — where the value came from."""
    if not isinstance(values, Mapping):
        raise UserError(f"setting {prefix} must be a section of KEY: VALUE settings, got {_short(values)}")
    try:
        return model.model_validate(dict(values))
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        top = loc[0] if loc else ""
        key = f"{prefix}.{top}" if top else prefix
        where = f" (from {source(key)})" if source and top else ""
        if err["type"] == "extra_forbidden":
            raise UserError(f"{key} is not a setting of {prefix}{where}; its settings are: "
                            f"{', '.join(model.model_fields)}") from None
        if err["type"] == "missing":
            raise UserError(f"setting {key} is missing{where}: give it a value ({describe(model, top)})") from None
        detail = err["msg"].removeprefix("Value error, ")
        if not top:  # a rule across settings (a model validator)
            raise UserError(f"bad {prefix} settings{where}: {detail}") from None
        value = values.get(top, err.get("input"))
        allowed = describe(model, top) if top in model.model_fields else "?"
        nested = f" (item {'.'.join(loc[1:])}: {detail[0].lower() + detail[1:]})" if len(loc) > 1 else ""
        raise UserError(f"bad setting {key}={_short(value)}{where}: expected {allowed}{nested}") from None


def _short(value: Any, limit: int = 60) -> str:
    import json
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --- describing (zsqbench list settings, error messages) ----------------------------------------------------------

_BOUNDS = ((annotated_types.Gt, ">", "gt"), (annotated_types.Ge, "≥", "ge"), (annotated_types.Lt, "<", "lt"),
           (annotated_types.Le, "≤", "le"))


def _bounds(metadata) -> list[str]:
    """Bounds and lengths from pydantic/annotated-types metadata (a FieldInfo inside Annotated holds its own)."""
    out = []
    for m in metadata:
        if hasattr(m, "metadata") and not isinstance(m, annotated_types.BaseMetadata):  # a FieldInfo
            out += _bounds(m.metadata)
            continue
        for cls, sign, attr in _BOUNDS:
            if isinstance(m, cls):
                out.append(f"{sign} {getattr(m, attr)}")
        if isinstance(m, annotated_types.MinLen):
            out.append(f"≥ {m.min_length} items")
        if isinstance(m, annotated_types.MaxLen):
            out.append(f"≤ {m.max_length} items")
    for n in {b.split()[1] for b in out if b.endswith(" items")}:  # "≥ 2 items, ≤ 2 items" -> "2 items"
        if f"≥ {n} items" in out and f"≤ {n} items" in out:
            out = [b for b in out if b not in (f"≥ {n} items", f"≤ {n} items")] + [f"{n} items"]
    return out


def type_text(annotation: Any, metadata=()) -> str:
    """A short human description of a type: ``int ≥ 0``, ``'sum' | 'mean'``, ``list[float > 0, ≤ 1]``,
    ``float ≥ 0 or null``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return type_text(args[0], [*args[1:], *metadata])
    bounds = _bounds(metadata)
    suffix = (" " + ", ".join(bounds)) if bounds else ""
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        text = " | ".join(type_text(a) for a in parts) + suffix
        return text + (" or null" if len(parts) < len(args) else "")
    if origin in (list, tuple):
        return f"list[{type_text(args[0]) if args else 'any'}]" + suffix
    if origin is dict or annotation is dict:
        return "dict" + suffix
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation)) + suffix


def describe(model: type[Settings], key: str) -> str:
    info = model.model_fields[key]
    return type_text(info.annotation, info.metadata)
