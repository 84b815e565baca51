"""Protocols are versioned data files (JSON): which teachers, bit-widths and seeds; the shared training budget;
and the evaluation rule. A protocol's hash (of its canonical JSON) goes into every record; methods keep their
own per-protocol settings beside their code."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from zsqbench.spine.errors import UserError
from zsqbench.spine.settings import SECTION_MODELS

BUILTIN_DIR = Path(__file__).parent
REQUIRED = ("name", "version", "description", "models", "bits", "seeds", "train", "eval")
# outside the hash, because they do not change what any one job computes: where a job may run (Ray resources),
# the prose (description, notes: a note can be corrected without re-running a grid), and which seeds the grid has
# (each job's own seed is in its identity; adding seeds 3-4 for statistical power keeps seeds 0-2 done) and how
# many of them a row gets (frontends/seed_rule.py; a changed rule still needs a new protocol version), and which
# teachers are held out from choosing settings (``transfer``: what the leaderboard sets side by side)
UNHASHED_KEYS = ("resources", "description", "notes", "seeds", "seed_rule", "transfer")


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def bits_for(protocol: dict, model_key: str) -> list[list[int]]:
    """The protocol's bit-widths for one teacher: ``bits_by_model[model]`` where the protocol narrows them (a
    bit-width measured not to separate methods on that teacher), else ``bits``."""
    return [list(b) for b in protocol.get("bits_by_model", {}).get(model_key, protocol["bits"])]


def outside_grid(protocol: dict, model_key: str, wbits: int, abits: int, seed: int) -> list[str]:
    """Why a job is outside the protocol's grid — its teacher, bit-width or seed is not the protocol's — one reason
    per axis; empty when inside. The one rule: ``run`` records such a job as off-protocol (with these reasons,
    so ``leaderboard build`` refuses the record) and ``sweep``, which makes only the protocol's grid, refuses it."""
    name = protocol["name"]
    reasons = []
    if model_key not in protocol["models"]:
        reasons.append(f"model {model_key} is not in protocol {name}")
    if [wbits, abits] not in bits_for(protocol, model_key):
        reasons.append(f"W{wbits}A{abits} is not in protocol {name} for {model_key}")
    if seed not in protocol["seeds"]:
        reasons.append(f"seed {seed} is not in protocol {name}'s seeds ({', '.join(map(str, protocol['seeds']))})")
    return reasons


def load_protocol_file(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read protocol file {path}: {e}") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(f"protocol file {path} lacks {', '.join(missing)}")
    unknown = set(data.get("bits_by_model", {})) - set(data["models"])
    if unknown:
        raise UserError(f"protocol file {path}: bits_by_model names {', '.join(sorted(unknown))}, not in its models")
    if "quantization" in data:
        check_quantization(data["quantization"], path)
    if "transfer" in data:
        check_transfer(data, path)
    data["hash"] = canonical_hash({k: v for k, v in data.items() if k not in ("hash", *UNHASHED_KEYS)})
    data["path"] = str(path)
    return data


def check_quantization(quant, path) -> None:
    """A protocol's ``quantization`` block: the bit-width convention every student of it follows beyond the run's
    bits. Today one key, ``first_last_bits`` (the first and last layers' bits)."""
    fl = quant.get("first_last_bits") if isinstance(quant, dict) else None
    if not (isinstance(quant, dict) and set(quant) == {"first_last_bits"} and isinstance(fl, int)
            and not isinstance(fl, bool) and 2 <= fl <= 16):
        raise UserError(f"protocol file {path}: quantization must be {{\"first_last_bits\": N}} with N in 2..16, "
                        f"got {json.dumps(quant)}")


def check_transfer(data: dict, path) -> None:
    """A protocol's ``transfer`` block, ``{"held-out teacher": "teacher the settings were chosen on"}``: both are
    the protocol's models, and a held-out teacher is never one settings were chosen on."""
    pairs = data["transfer"]
    hint = 'transfer must map a held-out teacher to the teacher its settings were chosen on, e.g. ' \
           '{"resnet20-b@fmnist": "resnet20@fmnist"}'
    if not isinstance(pairs, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
        raise UserError(f"protocol file {path}: {hint}, got {json.dumps(pairs)}")
    unknown = sorted({m for pair in pairs.items() for m in pair} - set(data["models"]))
    if unknown:
        raise UserError(f"protocol file {path}: transfer names {', '.join(unknown)}, not in its models")
    both = sorted(set(pairs) & set(pairs.values()))
    if both:
        raise UserError(f"protocol file {path}: transfer holds out {', '.join(both)} and chooses settings on it too")


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_value(text: str) -> Any:
    """`--set` values: JSON if it parses (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Apply ``KEY=VALUE`` overrides with dotted keys (``train.steps=100``, ``distiller.temperature=4``). A
    ``train.``/``eval.`` key must be a field of the protocol's settings models, given by the protocol or not; a
    component's keys are checked against its own settings model when the run is resolved."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got {item!r} (e.g. --set train.steps=100)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or parts[0] not in ("train", "synthesizer", "distiller", "quantizer", "eval"):
            raise UserError(f"--set key {key!r} must start with train., synthesizer., distiller., quantizer. "
                            "or eval. (e.g. train.steps=100)")
        node = config
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set key {key!r}: {p!r} is not a section")
        model = SECTION_MODELS.get(parts[0])
        if model is not None and parts[-1] not in model.model_fields:
            raise UserError(f"--set key {key!r} is not a known setting; {parts[0]} has: "
                            f"{', '.join(model.model_fields)}")
        node[parts[-1]] = parse_value(value)
    return config


ALLOW_CPU_ENV = "ZSQBENCH_ALLOW_CPU"  # "1": run a protocol that requires CUDA on the CPU anyway


def check_protocol_requirements(protocol: dict, device, off_protocol: bool = False) -> None:
    """Refuse, in one line and before any work, a run the protocol's ``requires`` says this machine cannot do.

    ``requires.device == "cuda"`` (the ``paper`` protocol: ~80k steps a run) refuses a CPU device unless the run is
    off-protocol already (``--set`` / a swapped component: a deliberate, e.g. shortened, try) or
    ``$ZSQBENCH_ALLOW_CPU=1``. ``requires.data`` is enforced by the evaluator, which fails in one line (what is
    missing, where to put it) before the teacher is loaded; ``requires.weights`` by the teacher zoo.
    """
    req = protocol.get("requires") or {}
    dev = str(getattr(device, "type", device))
    if req.get("device") == "cuda" and not dev.startswith("cuda") and not off_protocol \
            and os.environ.get(ALLOW_CPU_ENV, "") not in ("1", "true", "yes"):
        steps = protocol.get("train", {}).get("steps")
        budget = f" ({steps} training steps a run)" if steps else ""
        raise UserError(f"protocol {protocol['name']!r} needs a CUDA GPU{budget}, but the run would use {dev}: run it "
                        "on a GPU machine with --device cuda (the real test set via --data-root, pretrained teachers "
                        f"online or --weights), try --protocol cpu here, or set {ALLOW_CPU_ENV}=1 to run it on the CPU "
                        "anyway")
