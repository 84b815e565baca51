"""The registry that hooks fill, and the plugin manager that loads them (one try/except per entry point)."""
from __future__ import annotations

import importlib.metadata as md
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from zsqbench.spine import hookspecs
from zsqbench.spine.errors import UserError
from zsqbench.spine.interfaces import Distiller, Method, Quantizer, Synthesizer
from zsqbench.teacher.datasets import DatasetInfo
from zsqbench.teacher.zoo import ModelSpec

ENTRY_POINT_GROUP = "zsqbench"
DISABLE_ENV = "ZSQBENCH_DISABLE_PLUGINS"  # comma-separated entry-point or distribution names


class PluginWarning(UserWarning):
    pass


@dataclass
class Entry:
    name: str
    obj: Any
    provider: str  # "distribution version" of the plugin that registered it
    distribution: str = "zsqbench"  # the distribution whose code it is (code fingerprints: zsqbench.spine.provenance)
    module: str = ""  # the entry point's module that registered it, e.g. "zsqbench_plugins.gdfq" (fingerprints)


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: what methods may see (``info``) and how the evaluation step reads it (``loader``, see
    :class:`zsqbench.evaluation.data.DatasetLoader`)."""
    info: DatasetInfo
    loader: Any

    @property
    def description(self) -> str:
        i = self.info
        return (f"{i.description} ({'x'.join(map(str, i.image_shape))}, {i.num_classes} classes; "
                f"splits: {', '.join(self.loader.splits)})")


@dataclass
class Registry:
    methods: dict[str, Entry] = field(default_factory=dict)
    synthesizers: dict[str, Entry] = field(default_factory=dict)
    distillers: dict[str, Entry] = field(default_factory=dict)
    quantizers: dict[str, Entry] = field(default_factory=dict)
    models: dict[str, Entry] = field(default_factory=dict)
    protocols: dict[str, Entry] = field(default_factory=dict)
    datasets: dict[str, Entry] = field(default_factory=dict)
    plugins: list[dict] = field(default_factory=list)   # [{entry_point, distribution, version, status}]
    # distribution -> {"version", "modules": top-level modules of its loaded entry points} (code fingerprints)
    distributions: dict[str, dict] = field(default_factory=dict)
    _provider: str = "zsqbench"
    _distribution: str = "zsqbench"
    _module: str = ""
    _parent: "Registry | None" = None  # set on a staging registry: names taken there count as taken

    KINDS = ("methods", "synthesizers", "distillers", "quantizers", "models", "datasets", "protocols")

    def _lookup(self, table: str, name: str) -> Entry | None:
        entry = getattr(self, table).get(name)
        if entry is None and self._parent is not None:
            return self._parent._lookup(table, name)
        return entry

    def _add(self, table: str, name: str, obj: Any) -> bool:
        taken = self._lookup(table, name)
        if taken is not None:
            warnings.warn(f"{table[:-1]} {name!r} from {self._provider} ignored: already registered by "
                          f"{taken.provider}", PluginWarning, stacklevel=3)
            return False
        getattr(self, table)[name] = Entry(name, obj, self._provider, self._distribution, self._module)
        return True

    def staging(self, provider: str, distribution: str, module: str = "") -> "Registry":
        """An empty registry for one plugin's hook: what it adds becomes visible only through :meth:`commit`, so a
        plugin whose hook raises half-way registers nothing."""
        return Registry(_provider=provider, _distribution=distribution, _module=module, _parent=self)

    def commit(self, stage: "Registry") -> None:
        for table in self.KINDS:
            getattr(self, table).update(getattr(stage, table))

    def add_method(self, method: Method) -> None:
        if self._add("methods", method.name, method):
            method.provider = self._provider

    def add_synthesizer(self, cls: type[Synthesizer]) -> None:
        self._add("synthesizers", cls.name, cls)

    def add_distiller(self, cls: type[Distiller]) -> None:
        self._add("distillers", cls.name, cls)

    def add_quantizer(self, cls: type[Quantizer]) -> None:
        self._add("quantizers", cls.name, cls)

    def add_model(self, spec: ModelSpec) -> None:
        if self._add("models", spec.key, spec):
            spec.provider = self._provider

    def add_protocol(self, path: str | Path) -> None:
        from zsqbench.protocols import load_protocol_file
        proto = load_protocol_file(Path(path))
        self._add("protocols", proto["name"], proto)

    def add_dataset(self, info: DatasetInfo, loader: Any) -> None:
        """Register the dataset ``info.name``: its :class:`~zsqbench.teacher.datasets.DatasetInfo` (what methods may
        know) and the ``loader`` that reads its real images for the evaluation step — an object, or a class built
        with no arguments, with:

        - ``splits``: which of ``"test"`` and ``"train"`` it can read (``eval.split=dev`` scores on the last 10 000
          images of ``train``, so a loader without ``train`` supports ``test`` only);
        - ``how_to_get``: one line ending the "data not found" error, saying how to get the data;
        - ``load(split, data_root, card)``: see :class:`zsqbench.evaluation.data.DatasetLoader`.

        A model on it names it as ``ModelSpec(name, "<info.name>", ...)``. Raises ``TypeError`` (the plugin is then
        reported and skipped) when the loader lacks any of these."""
        if isinstance(loader, type):
            loader = loader()
        splits = getattr(loader, "splits", None)
        problems = [what for what, bad in (
            ("info must be a zsqbench.teacher.datasets.DatasetInfo", not isinstance(info, DatasetInfo)),
            ("the loader has no load(split, data_root, card) method", not callable(getattr(loader, "load", None))),
            ("loader.splits must be a non-empty tuple of 'test' and/or 'train'",
             not isinstance(splits, (tuple, list)) or not splits or not set(splits) <= {"test", "train"}),
            ("loader.how_to_get must be a str", not isinstance(getattr(loader, "how_to_get", None), str))) if bad]
        if problems:
            raise TypeError(f"add_dataset({getattr(info, 'name', info)!r}): " + "; ".join(problems))
        self._add("datasets", info.name, Dataset(info, loader))

    def dataset(self, name: str, needed_by: str | None = None) -> Dataset:
        """The registered dataset ``name``, or one :class:`UserError` line listing the registered ones
        (``needed_by``, e.g. ``"model tiny@svhn"``, says who asked)."""
        entry = self._lookup("datasets", name)
        if entry is not None:
            return entry.obj
        names = set(self.datasets) | (set(self._parent.datasets) if self._parent else set())
        valid = ", ".join(sorted(names)) or "(none registered)"
        tail = f"registered datasets: {valid} (see `zsqbench list plugins` for disabled or failed plugins)"
        if needed_by:
            raise UserError(f"{needed_by} is on dataset {name!r}, which no loaded plugin registers (no evaluation data "
                            f"loader); {tail}")
        raise UserError(f"no evaluation data loader for dataset {name!r}: no loaded plugin registers it; {tail}")

    def protocol_name(self, arg: str) -> str:
        """``--protocol``: a registered protocol's name, or the path of a protocol file (``*.json``), which is added
        under the name it declares and loaded the same way by every job of a sweep (they get the path)."""
        if not str(arg).endswith(".json"):
            return arg
        from zsqbench.protocols import load_protocol_file
        proto = load_protocol_file(Path(arg))
        taken = self._lookup("protocols", proto["name"])
        if taken is None:
            self.protocols[proto["name"]] = Entry(proto["name"], proto, f"file {arg}", "", "")
        elif taken.obj.get("path") != proto["path"]:
            raise UserError(f"protocol file {arg} is named {proto['name']!r}, which protocol "
                            f"{taken.obj.get('path', taken.provider)} already is: give the file its own name")
        return proto["name"]

    def get(self, table: str, name: str) -> Any:
        entry = self._lookup(table, name)
        if entry is None:
            names = set(getattr(self, table)) | (set(getattr(self._parent, table)) if self._parent else set())
            valid = ", ".join(sorted(names)) or "(none registered)"
            raise UserError(f"unknown {table[:-1]} {name!r}; valid: {valid}")
        return entry.obj


def _disabled() -> set[str]:
    return {s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",") if s.strip()}


def load_plugins() -> tuple[pluggy.PluginManager, Registry]:
    """Load every ``zsqbench`` entry point — built-ins included — each in isolation, then fill a registry."""
    pm = pluggy.PluginManager(hookspecs.NAME)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    disabled = _disabled()
    providers: dict[str, str] = {}
    dists: dict[str, str] = {}
    ep_modules: dict[str, str] = {}  # entry-point name -> its module ("zsqbench_plugins.gdfq")
    eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.dist.name != "zsqbench", e.name))
    seen: dict[str, str] = {}  # entry-point name -> the distribution that had it first
    for ep in eps:
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        info = {"entry_point": ep.name, "distribution": dist, "version": version}
        if ep.name in seen:  # the same entry point seen twice (e.g. an editable and a regular install)
            if seen[ep.name] != dist:  # another distribution's plugin under a taken name: never drop it silently
                warnings.warn(f"plugin {ep.name!r} ({dist} {version}) is skipped: the entry-point name is taken by "
                              f"{seen[ep.name]}", PluginWarning, stacklevel=2)
                registry.plugins.append({**info, "status": f"skipped: name taken by {seen[ep.name]}"})
            continue
        seen[ep.name] = dist
        if ep.name in disabled or dist in disabled:
            registry.plugins.append({**info, "status": "disabled"})
            continue
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except Exception as e:
            warnings.warn(f"plugin {ep.name!r} ({dist} {version}) failed to load and is skipped: "
                          f"{type(e).__name__}: {e}", PluginWarning, stacklevel=2)
            registry.plugins.append({**info, "status": f"failed: {type(e).__name__}"})
            continue
        providers[ep.name] = f"{dist} {version}"
        dists[ep.name] = dist
        registry.plugins.append({**info, "status": "loaded"})
        ep_modules[ep.name] = ep.value.split(":")[0].strip()
        registry.distributions.setdefault(dist, {"version": version, "modules": set()})["modules"].add(
            ep_modules[ep.name].split(".")[0])
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        warnings.warn(f"plugin {e.plugin_name!r} has a hook zsqbench does not know: {e}", PluginWarning)
    # call each plugin's register hook separately, into its own staging area: a broken one is reported and registers
    # nothing (not the half it added before the error), and the rest still register
    for name, plugin in pm.list_name_plugin():
        impl = getattr(plugin, "zsqbench_register", None)
        if impl is None:
            continue
        stage = registry.staging(providers.get(name, name), dists.get(name, name), ep_modules.get(name, ""))
        try:
            impl(registry=stage)
        except Exception as e:
            warnings.warn(f"plugin {name!r} ({stage._provider}) failed while registering and is skipped: "
                          f"{type(e).__name__}: {e}", PluginWarning, stacklevel=2)
            for p in registry.plugins:
                if p["entry_point"] == name:
                    p["status"] = f"failed: {type(e).__name__}"
            continue
        registry.commit(stage)
    return pm, registry


_cache: tuple[pluggy.PluginManager, Registry] | None = None


def get_registry(reload: bool = False) -> Registry:
    global _cache
    if _cache is None or reload:
        with warnings.catch_warnings():
            warnings.simplefilter("always", PluginWarning)
            warnings.showwarning = _show_plugin_warning(warnings.showwarning)
            _cache = load_plugins()
    return _cache[1]


def dataset_info(name: str) -> DatasetInfo:
    """The registered dataset ``name`` (built-in or from a plugin), or a one-line :class:`UserError` naming the
    registered ones."""
    return get_registry().dataset(name).info


def get_plugin_manager() -> pluggy.PluginManager:
    get_registry()
    return _cache[0]


def _show_plugin_warning(orig):
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PluginWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            orig(message, category, filename, lineno, file, line)
    return show
