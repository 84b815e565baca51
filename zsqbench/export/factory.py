"""Your own network: ``--model package.module:factory`` (any callable returning an ``nn.Module``), and the checks that
refuse, in one line and before the teacher is used, a network a method cannot serve."""
from __future__ import annotations

import importlib
import re

import torch
import torch.nn as nn

from zsqbench.spine.errors import UserError

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
# Modules that own parameters and that the shared quantizer leaves in floating point on purpose.
FLOAT_OK = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
WRAPPED = (nn.Conv2d, nn.Linear)


def is_factory(model: str) -> bool:
    return ":" in model


def import_factory(text: str):
    if not _FACTORY.match(text):
        raise UserError(f"--model {text!r}: give an architecture name (resnet20) or package.module:factory")
    mod_name, attr = text.split(":", 1)
    try:
        obj = importlib.import_module(mod_name)
    except Exception as e:  # ModuleNotFoundError, or the module itself raising
        raise UserError(f"--model {text}: cannot import {mod_name}: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--model {text}: {mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"--model {text}: {attr} is a {type(obj).__name__}, not a callable returning an nn.Module")
    return obj


def call_factory(text: str) -> nn.Module:
    factory = import_factory(text)
    try:
        net = factory()
    except Exception as e:
        raise UserError(f"--model {text}: the factory raised {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:160]}") from None
    if not isinstance(net, nn.Module):
        raise UserError(f"--model {text}: the factory returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def unservable(net: nn.Module, uses_bn_statistics: bool) -> str | None:
    """Why the shared quantizer (and a method that reads BN statistics) cannot serve ``net``, or None."""
    for name, mod in net.named_modules():
        if any(True for _ in mod.parameters(recurse=False)) and type(mod) not in WRAPPED \
                and not isinstance(mod, FLOAT_OK):
            return (f"module {name or '(root)'!r} is a {type(mod).__name__} with weights, which the quantizer cannot "
                    "wrap (it quantizes Conv2d and Linear layers; norm layers stay float)")
    if not any(type(m) in WRAPPED for m in net.modules()):
        return "it has no Conv2d or Linear layer for the quantizer to wrap"
    if uses_bn_statistics and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        return "it has no BatchNorm2d layer, and the method's synthesizer matches BN statistics"
    return None


def register_factory_model(spec, registry, protocol: dict) -> str:
    """Register ``spec.model`` (package.module:factory) as a model on ``spec.dataset`` (default: the protocol's
    first teacher's dataset) and return its key. The factory is called once here: its errors surface now."""
    from zsqbench.teacher.zoo import ModelSpec
    text, _, at = spec.model.partition("@")
    call_factory(text)
    dataset = at or spec.dataset or protocol["models"][0].split("@")[1]
    registry.dataset(dataset, needed_by=f"model {text}")
    key = f"{text}@{dataset}"
    if registry._lookup("models", key) is None:
        registry.add_model(ModelSpec(text, dataset, lambda: call_factory(text), block_types=(),
                                     notes=f"your own network from {text}"))
    return key


def check_servable(resolved: dict, card_file: str | None) -> None:
    """One line, before the teacher is used, when the run's network cannot be served: called for own networks."""
    model_spec = resolved.model_spec
    synth_cls = resolved.components["synthesizer"].cls
    net = model_spec.build()
    why = unservable(net, bool(getattr(synth_cls, "uses_bn_statistics", False)))
    method = resolved.method.name
    if why:
        raise UserError(f"{method} cannot serve {model_spec.name}: {why}")
    info = resolved.dataset
    shape = tuple(info.image_shape)
    extra = card_extras(card_file)
    if "input_size" in extra and tuple(extra["input_size"]) != shape:
        raise UserError(f"teacher card {card_file}: input_size {extra['input_size']} but {info.name} images reach the "
                        f"network as {list(shape)}")
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(1, *shape))
    except Exception as e:
        dims = ", ".join(map(str, shape))
        raise UserError(f"{model_spec.name} cannot take a {info.name} input of shape (1, {dims}): "
                        f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}") from None
    classes = extra.get("num_classes", info.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{model_spec.name} returns {got} for one image; the teacher card and {info.name} say "
                        f"(1, {classes}) logits")
    if classes != info.num_classes:
        raise UserError(f"teacher card {card_file}: num_classes {classes}, but {info.name} has {info.num_classes}")


def card_extras(card_file: str | None) -> dict:
    """``num_classes`` and ``input_size`` of a teacher card (optional keys, checked by the card's own model)."""
    if not card_file:
        return {}
    import json
    from pathlib import Path
    try:
        card = json.loads(Path(card_file).expanduser().read_text())
    except (OSError, ValueError):
        return {}  # resolve_card reports it
    return {k: card[k] for k in ("num_classes", "input_size") if isinstance(card, dict) and k in card}


def build_architecture(arch: dict) -> nn.Module:
    """The untrained network a student file names: a registered model, or a factory."""
    if arch.get("factory"):
        return call_factory(arch["factory"])
    from zsqbench.spine.registry import get_registry
    return get_registry().get("models", arch["key"]).build()
