"""The run plan: one frozen, typed description of a run, resolved and checked before any work starts.

    RunSpec (what was asked: ``zsqbench run``'s options, a sweep job, a test) --resolve()--> RunPlan

Settings, lowest first: a component's ``Settings`` defaults < the protocol's ``train``/``eval`` < the method's
settings for the protocol (per dataset) < ``--set``. Each section is validated once, here, into a pydantic
instance — ``plan.train``, ``plan.eval``, ``plan.components[kind].settings`` — and a component built from the plan
reads that instance as ``self.settings``. ``plan.config`` keeps the values as given: it is what a record stores and
what the job's identity hashes, so re-serialising validated values can never change a hash without changing a
result.

The plan carries the job's identity (what was asked, named by ``settings_hash``: a sweep job's directory) and its
hash (``job_hash``: the identity plus the teacher's input preprocessing and the code versions that run it), the
one hash the record (``config_hash``) and the sweep (``sweep_job``) both use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from zsqbench.protocols import apply_overrides, bits_for, canonical_hash, deep_merge, outside_grid
from zsqbench.spine.errors import UserError
from zsqbench.spine.interfaces import Component, Method
from zsqbench.spine.registry import Registry, get_registry
from zsqbench.spine.settings import SECTION_MODELS, EvalSettings, Settings, TrainSettings, check as settings_check
from zsqbench.teacher.card import preprocessing_identity, resolve_card
from zsqbench.teacher.datasets import DatasetInfo
from zsqbench.teacher.zoo import ModelSpec

COMPONENT_KINDS = ("synthesizer", "distiller", "quantizer")


@dataclass
class RunSpec:
    method: str
    model: str                      # "resnet20" or "resnet20@fmnist"
    wbits: int
    abits: int
    protocol: str = "cpu"
    seed: int = 0
    dataset: str | None = None      # default: the protocol's dataset for this model name
    device: str = "auto"
    out: str = "results"
    overrides: list[str] = field(default_factory=list)
    synthesizer: str | None = None  # component overrides (ablations)
    distiller: str | None = None
    quantizer: str | None = None
    weights: str | None = None
    teacher_card: str | None = None  # JSON: the teacher's input normalisation (default: beside --weights, manifest)
    data_root: str | None = None
    cache_dir: str | None = None
    quiet: bool = False
    record_file: str | None = None  # write the record exactly here (a sweep's job directory) instead of out/
    sweep_job: str | None = None    # the sweep job's hash, kept in the record (resume check)
    save_student: bool = False      # write the student beside the record (zsqbench.export)
    threads: int | None = None      # intra-op threads (None: what the environment gives); recorded either way
    export_dir: str | None = None   # export it to ONNX there and measure it (zsqbench.export)


@dataclass(frozen=True)
class ComponentPlan:
    """One component of the run: its registered class and its validated settings."""
    kind: str
    name: str
    cls: type[Component]
    provider: str
    settings: Settings
    config: Mapping[str, Any]  # the values as given (defaults < protocol < method < --set): recorded and hashed

    def build(self, **changes: Any) -> Component:
        """A fresh instance (components hold per-run state); ``changes`` replace settings (``zsqbench synth``)."""
        settings = self.settings.model_copy(update=changes) if changes else self.settings
        try:
            return self.cls(settings, **{**self.config, **changes})
        except TypeError as e:  # e.g. a plugin class that leaves an abstract method out
            raise UserError(f"{self.kind} {self.name!r} from {self.provider} cannot be built: {e}") from None


@dataclass(frozen=True)
class RunPlan:
    spec: RunSpec
    registry: Registry
    method: Method
    protocol: Mapping[str, Any]
    model_key: str
    model_spec: ModelSpec
    dataset: DatasetInfo
    card: Mapping[str, Any]          # the teacher's input preprocessing and where it was declared
    train: TrainSettings
    eval: EvalSettings
    components: Mapping[str, ComponentPlan]
    config: Mapping[str, Any]        # {"train", "eval", components, "quantization" if the protocol has one}: as given
    off_protocol: tuple[str, ...]

    def build_components(self) -> dict[str, Component]:
        return {kind: c.build() for kind, c in self.components.items()}

    @property
    def quantization(self) -> dict[str, Any]:
        """The protocol's bit-width convention beyond the run's bits (``first_last_bits``): quantize()'s keywords."""
        return dict(self.config.get("quantization", {}))

    @cached_property
    def identity(self) -> dict:
        """What was asked: method, components and their settings, teacher weights, bits, seed, protocol."""
        protocol = self.protocol
        identity = {"method": self.spec.method, "model": self.model_key, "wbits": self.spec.wbits,
                    "abits": self.spec.abits, "seed": self.spec.seed,
                    "protocol": {"name": protocol["name"], "version": protocol["version"], "hash": protocol["hash"]},
                    "teacher_sha256": self._teacher_sha256(),
                    "components": {kind: c.name for kind, c in self.components.items()},
                    "config": _plain(self.config)}
        if self.spec.overrides:
            identity["overrides"] = list(self.spec.overrides)
        return identity

    @cached_property
    def settings_hash(self) -> str:
        return canonical_hash(self.identity)

    @cached_property
    def code(self) -> dict:
        """{distribution: code fingerprint} of what this run executes (zsqbench.spine.provenance)."""
        from zsqbench.spine.provenance import run_code
        return run_code(self)

    @cached_property
    def job_identity(self) -> dict:
        """The identity plus what else decides the result: the code that runs it and the teacher's preprocessing."""
        return {**self.identity, "code": self.code, "teacher_preprocessing": preprocessing_identity(self.card)}

    @cached_property
    def job_hash(self) -> str:
        return canonical_hash(self.job_identity)

    def _teacher_sha256(self) -> str | None:
        if self.spec.weights:
            from zsqbench.teacher.zoo import sha256_file
            path = Path(self.spec.weights).expanduser()
            return sha256_file(path) if path.is_file() else None
        if self.model_spec.embedded_weights:
            from zsqbench.teacher.zoo import read_manifest
            return (read_manifest().get(self.model_spec.embedded_weights) or {}).get("sha256")
        return None


def _plain(value: Any) -> Any:
    """A deep, mutable copy of a read-only mapping (for JSON and hashing)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def settings_key(protocol: Mapping) -> str:
    """Which protocol's entry of a method's settings a protocol uses: its own, or the one it names in
    ``method_settings`` (a variant of a protocol — other seeds, a seed rule, another teacher — that keeps its
    methods' settings)."""
    return protocol.get("method_settings", protocol["name"])


def resolve_model_key(spec: RunSpec, registry: Registry, protocol: Mapping) -> str:
    if "@" in spec.model:
        key = spec.model
    else:
        dataset = spec.dataset
        if dataset is None:  # the protocol's teacher with this architecture name
            matches = [m for m in protocol["models"] if m.split("@")[0] == spec.model]
            dataset = matches[0].split("@")[1] if matches else None
        if dataset is None:
            archs = sorted({k.split("@")[0] for k in registry.models})
            if spec.model not in archs:
                raise UserError(f"unknown model {spec.model!r}; valid: {', '.join(archs)}")
            raise UserError(f"protocol {protocol['name']!r} has no {spec.model} teacher: pass --dataset "
                            f"(models: {', '.join(k for k in sorted(registry.models) if k.startswith(spec.model + '@'))})")
        key = f"{spec.model}@{dataset}"
    model_spec_for(key, spec, registry)
    return key


def model_spec_for(key: str, spec: RunSpec, registry: Registry):
    """The registered teacher ``key``; else, with ``--weights``, a zoo architecture built for the registered dataset
    (a user's own teacher on a plugin's dataset, :func:`zsqbench.teacher.zoo.user_model`); else one line."""
    from zsqbench.teacher.zoo import user_model
    if registry._lookup("models", key) is not None or "@" not in key:
        return registry.get("models", key)
    name, dataset = key.split("@", 1)
    if registry._lookup("datasets", dataset) is None:
        return registry.get("models", key)  # one line: unknown model, and the valid ones
    if spec.weights:
        return user_model(name, registry.dataset(dataset).info)
    raise UserError(f"unknown model {key!r}; valid: {', '.join(sorted(registry.models))} — or your own teacher on "
                    f"{dataset}: --weights PATH (a state_dict of zsqbench's {name} for {dataset}'s channels and "
                    "classes) and --teacher-card CARD")


MAX_SEED = 2 ** 32 - 1  # numpy's generator takes seeds in 0 .. 2**32 - 1


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"seed {seed!r} out of range: use an integer in 0..{MAX_SEED}")


def resolve(spec: RunSpec, registry: Registry | None = None) -> RunPlan:
    """The run's plan, every name looked up and every setting checked (one line for the first bad one)."""
    registry = registry or get_registry()
    method = registry.get("methods", spec.method)
    protocol = registry.get("protocols", spec.protocol)
    if ":" in spec.model:  # your own network: package.module:factory (zsqbench.export.factory)
        from zsqbench.export.factory import register_factory_model
        model_key = register_factory_model(spec, registry, protocol)
    else:
        model_key = resolve_model_key(spec, registry, protocol)
    model_spec = model_spec_for(model_key, spec, registry)
    dataset = registry.dataset(model_spec.dataset, needed_by=f"model {model_key}").info
    for bits, what in ((spec.wbits, "weight"), (spec.abits, "activation")):
        if not 1 <= bits <= 16:
            raise UserError(f"{what} bit-width {bits} out of range: use 1..16")
    check_seed(spec.seed)

    off_protocol: list[str] = []
    method_settings = method.settings_for(settings_key(protocol), model_spec.dataset)
    if method_settings is None:
        raise UserError(f"method {spec.method!r} has no settings for protocol {spec.protocol!r}")
    chosen = {}
    for kind in COMPONENT_KINDS:
        name = getattr(spec, kind) or getattr(method, kind)
        if getattr(spec, kind) and name != getattr(method, kind):
            off_protocol.append(f"{kind} {name} instead of {getattr(method, kind)}")
        chosen[kind] = (name, registry.get(kind + "s", name))

    config = deep_merge({"train": protocol["train"], "eval": protocol["eval"]}, method_settings)
    if protocol.get("quantization"):  # the protocol's bit-width convention (first/last layers): in the identity
        config["quantization"] = dict(protocol["quantization"])
    for kind, (name, cls) in chosen.items():
        own = config.get(kind, {}) if name == getattr(method, kind) else {}  # a swapped component: its defaults
        config[kind] = {**cls.defaults, **own}
    if spec.overrides:
        config = apply_overrides(config, spec.overrides)
        off_protocol.append("overrides: " + ", ".join(spec.overrides))
    source = _setting_source(spec, method, protocol, method_settings)
    sections = {section: settings_check(model, config[section], section, source)
                for section, model in SECTION_MODELS.items()}
    components = {}
    for kind, (name, cls) in chosen.items():
        components[kind] = ComponentPlan(kind, name, cls, registry._lookup(kind + "s", name).provider,
                                         settings_check(cls.Settings, config[kind], kind, source),
                                         MappingProxyType(config[kind]))

    if spec.weights and model_spec.embedded_weights:
        off_protocol.append(f"teacher weights from {spec.weights} instead of the embedded ones")
    card = resolve_card(model_spec, spec.weights, spec.teacher_card)
    if spec.teacher_card and model_spec.embedded_weights and not spec.weights:
        off_protocol.append(f"teacher card {spec.teacher_card} instead of the manifest's")
    off_protocol += outside_grid(protocol, model_key, spec.wbits, spec.abits, spec.seed)
    plan = RunPlan(spec=spec, registry=registry, method=method, protocol=MappingProxyType(protocol),
                   model_key=model_key, model_spec=model_spec, dataset=dataset, card=MappingProxyType(card),
                   train=sections["train"], eval=sections["eval"], components=MappingProxyType(components),
                   config=MappingProxyType(config), off_protocol=tuple(off_protocol))
    quantizer = plan.build_components()["quantizer"]  # a class that cannot be built: one line now, not mid-run
    for capability in plan.quantization:
        quantizer.require(capability, f"protocol {protocol['name']!r}")
    if ":" in model_spec.name or spec.save_student or spec.export_dir:
        from zsqbench.export.run import check_before_run
        check_before_run(spec, plan)
    return plan


def _setting_source(spec: RunSpec, method, protocol: Mapping, method_settings: dict):
    """Where a setting's value came from, for the error message: --set, the method's settings, the protocol."""
    given = {item.split("=", 1)[0].strip() for item in spec.overrides}

    def source(key: str) -> str:
        if key in given:
            return "--set"
        section, _, name = key.partition(".")
        if name in (method_settings.get(section) or {}):
            where = method.settings if isinstance(method.settings, str) else method.provider
            return f"method {method.name}'s {spec.protocol} settings, {where}"
        if section in SECTION_MODELS:
            return f"protocol {protocol['name']}, {protocol.get('path', '?')}"
        return "the component's default"
    return source
