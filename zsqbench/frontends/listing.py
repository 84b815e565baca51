"""``zsqbench list settings METHOD``: every setting a method's run resolves, with its declared type, its default
and its value under each protocol (and each dataset entry of the method's settings where one differs)."""
from __future__ import annotations

import json

from rich.markup import escape
from rich.table import Table

from zsqbench.protocols import deep_merge
from zsqbench.spine.settings import SECTION_MODELS, describe, defaults_of


def _text(value) -> str:
    return escape(json.dumps(value))


def _columns(registry, method) -> list[tuple[str, str, str | None, dict]]:
    """(label, protocol, dataset, resolved config) per protocol the method has settings for, plus one per dataset
    entry of its settings that changes something."""
    out = []
    for pname, entry in sorted(registry.protocols.items()):
        proto = entry.obj
        base = method.settings_for(pname)
        if base is None:
            continue
        datasets = sorted({m.split("@")[1] for m in proto["models"]})
        configs = {d: _config(registry, method, proto, method.settings_for(pname, d)) for d in datasets}
        first = configs[datasets[0]]
        out.append((pname if len(datasets) == 1 else f"{pname} ({datasets[0]})", pname, datasets[0], first))
        for d in datasets[1:]:
            if configs[d] != first:
                out.append((f"{pname} ({d})", pname, d, configs[d]))
    return out


def _config(registry, method, protocol: dict, settings: dict) -> dict:
    config = deep_merge({"train": protocol["train"], "eval": protocol["eval"]}, settings)
    for kind in ("synthesizer", "distiller", "quantizer"):
        cls = registry.get(kind + "s", getattr(method, kind))
        config[kind] = {**cls.defaults, **config.get(kind, {})}
    return config


def settings_table(registry, method_name: str) -> Table:
    method = registry.get("methods", method_name)
    columns = _columns(registry, method)
    t = Table(title=escape(f"settings of {method_name} ({method.synthesizer} + {method.distiller} + "
                           f"{method.quantizer}); override any with --set KEY=VALUE"), title_justify="left")
    t.add_column("setting", style="bold", no_wrap=True)  # a name is never broken mid-word; values fold
    t.add_column("type", overflow="fold")
    t.add_column("default", overflow="fold")
    for label, *_ in columns:
        t.add_column(escape(label), overflow="fold")
    sections = list(SECTION_MODELS.items())
    sections += [(kind, registry.get(kind + "s", getattr(method, kind)).Settings)
                 for kind in ("synthesizer", "distiller", "quantizer")]
    for section, model in sections:
        for key in model.model_fields:
            default = defaults_of(model).get(key, "—")
            values = [config.get(section, {}).get(key, default) for *_, config in columns]
            t.add_row(escape(f"{section}.{key}"), escape(describe(model, key)),
                      "—" if default == "—" else _text(default),
                      *("—" if v == "—" else _text(v) for v in values))
    return t


def protocol_budget(proto: dict) -> tuple[str, str]:
    """(grid, budget) text of a protocol for ``zsqbench list protocols``: what it runs and how long each run trains.
    Methods may set their own batch, steps or lr under a protocol (``zsqbench list settings METHOD``)."""
    bits_by_model = proto.get("bits_by_model", {})
    cells = []
    for model in proto["models"]:
        bits = bits_by_model.get(model, proto["bits"])
        cells.append(f"{model} " + "/".join(f"W{w}A{a}" for w, a in bits))
    seeds = proto["seeds"]
    grid = "; ".join(cells) + f"; seeds {','.join(str(s) for s in seeds)}"
    train, ev = proto["train"], proto["eval"]
    schedule = (f"x{train['gamma']} at {'/'.join(f'{m:g}' for m in train['milestones'])}"
                if train.get("milestones") else "constant lr")
    limit = ev.get("limit")
    scored = f"first {limit} test images" if limit else "full test set"
    every = ev.get("every")
    average = (f", scoring the weights averaged over the last {train['steps'] - round(train['average_from'] * train['steps'])}"
               f" steps" if train.get("average_from") is not None else "")
    budget = (f"{train['warmup_steps']} warm-up + {train['steps']} steps at batch {train['batch_size']}, "
              f"{train['optimizer']} lr {train['lr']:g} ({schedule}){average}; {scored}"
              + (f", every {every} steps" if every else ", at the end"))
    return grid, budget
