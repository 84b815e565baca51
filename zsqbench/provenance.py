"""Code fingerprints: which code produced a result.

A settings hash says *what* was asked for; it cannot tell that a plugin's algorithm changed between two runs with
the same settings (0.1.0 -> 0.1.1, or an uncommitted edit). So every record carries, for each distribution whose
code the run used — zsqbench itself (the loop, the quantizer, the evaluation) and the providers of the method, its
components, its teacher and its dataset — the distribution's version and the sha256 of its installed Python source
files (the modules its ``zsqbench`` entry points live in; for zsqbench itself, its core package and only the
built-in plugin modules the run uses, e.g. ``zsqbench_plugins.bag`` and the ``zsqbench_plugins.gdfq`` it imports). A
sweep job's hash includes them, so changed code re-runs; a leaderboard row must come from one code version.

Records made before fingerprints existed have none: their code version is :data:`UNKNOWN`, which equals itself
(a row of such records is consistent) and nothing else.
"""
from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

UNKNOWN = "unknown"

# zsqbench files that present, validate, store or schedule results but never compute them: editing them must not
# re-run a sweep (a grid spans sessions; a CLI or leaderboard fix cannot cost it 10 hours). Everything on the data
# path (teacher, quantizer, synthesizer, distiller, loop, evaluation, settings, registry) is fingerprinted. api.py
# only re-exports names and testing.py only drives runs for plugin authors' tests.
NOT_COMPUTING = ("zsqbench/cli.py", "zsqbench/listing.py", "zsqbench/sweep.py", "zsqbench/sweep_ray.py",
                 "zsqbench/provenance.py", "zsqbench/leaderboard/", "zsqbench/record/", "zsqbench/api.py",
                 "zsqbench/testing.py")


@lru_cache(maxsize=None)
def module_source_files(module: str) -> tuple[tuple[str, Path], ...]:
    """(name relative to the module's parent, file) for every ``.py`` file of a top-level module or package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return ()
    if spec is None:
        return ()
    if spec.submodule_search_locations:  # a package: every .py below it, wherever it is installed
        out = []
        for location in spec.submodule_search_locations:
            root = Path(location)
            for f in sorted(root.rglob("*.py")):
                name = f"{module}/{f.relative_to(root).as_posix()}"
                if "__pycache__" not in f.parts and not name.startswith(NOT_COMPUTING):
                    out.append((name, f))
        return tuple(out)
    if spec.origin and spec.origin.endswith(".py"):
        return ((f"{module}.py", Path(spec.origin)),)
    return ()


@lru_cache(maxsize=None)
def source_digest(modules: tuple[str, ...]) -> tuple[str, int]:
    """sha256 over the (relative name, content) of the modules' source files, and how many files there are."""
    h = hashlib.sha256()
    n = 0
    for module in sorted(modules):
        for name, path in module_source_files(module):
            h.update(name.encode() + b"\0")
            h.update(path.read_bytes())
            h.update(b"\0")
            n += 1
    return h.hexdigest(), n


def fingerprint(registry, distribution: str, plugin_modules: tuple[str, ...] = ()) -> dict:
    """{"version", "sha256", "files"} of one loaded plugin distribution. For zsqbench itself: the core package plus
    only the built-in plugin modules the run uses (``plugin_modules``, with the sibling modules they import), so that
    adding or fixing one built-in method does not re-run every other method's sweep jobs."""
    info = registry.distributions.get(distribution)
    if info is None:  # registered outside the entry points (e.g. a test's hand-made registry)
        import zsqbench
        if distribution != "zsqbench":
            return {"version": UNKNOWN, "sha256": None, "files": 0}
        info = {"version": zsqbench.__version__, "modules": {"zsqbench"}}
    if distribution == "zsqbench":
        modules = {"zsqbench"} | set(with_sibling_imports(plugin_modules))
    else:
        modules = set(info["modules"])
    digest, files = source_digest(tuple(sorted(modules)))
    return {"version": info["version"], "sha256": digest, "files": files}


def with_sibling_imports(modules) -> list[str]:
    """``modules`` (e.g. ``zsqbench_plugins.bag``) and, transitively, the modules of their own top-level package
    they import (bag imports ``zsqbench_plugins.gdfq``), found by reading their source."""
    import ast
    seen: set[str] = set()
    todo = [m for m in modules if m and not m.startswith("zsqbench.") and m != "zsqbench"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        top = module.split(".")[0]
        for _, path in module_source_files(module):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                todo += [n for n in names if n.split(".")[0] == top and n != top]
    return sorted(seen)


def _run_entries(resolved: dict) -> list:
    registry = resolved["registry"]
    entries = [registry._lookup("methods", resolved["method"].name),
               registry._lookup("models", resolved["model_key"]),
               registry._lookup("datasets", resolved["model_spec"].dataset)]
    entries += [registry._lookup(kind + "s", name) for kind, (name, _) in resolved["components"].items()]
    return [e for e in entries if e is not None]


def run_distributions(resolved: dict) -> list[str]:
    """The distributions whose code a run uses: zsqbench's core and the providers of its method, components,
    teacher and dataset (its loader reads the images the run is scored on)."""
    return sorted({"zsqbench"} | {e.distribution for e in _run_entries(resolved)})


def run_code(resolved: dict) -> dict:
    """{distribution: fingerprint} for a resolved run (goes into its record and its sweep job's hash)."""
    entries = _run_entries(resolved)
    builtin_plugins = tuple(sorted({e.module for e in entries if e.distribution == "zsqbench"}))
    return {dist: fingerprint(resolved["registry"], dist, builtin_plugins if dist == "zsqbench" else ())
            for dist in run_distributions(resolved)}


def code_version(code: dict | None) -> str:
    """One comparable label for a record's (or leaderboard run's) code: ``dist version sha12; ...`` or UNKNOWN."""
    if not code:
        return UNKNOWN
    return "; ".join(f"{d} {c.get('version')} {(c.get('sha256') or '?')[:12]}" for d, c in sorted(code.items()))


def component_code(cls: type, registry=None, kind: str = "synthesizers") -> dict:
    """{distribution: sha256} of the code a component class computes with: zsqbench's core (with the built-in plugin
    modules among the class's bases and registration, e.g. ``zsqbench_plugins.hast``) and the distribution that
    registered it under its name, by the same fingerprints as a record's ``code`` (:func:`fingerprint`). A class not
    registered under its name (a test's subclass) is keyed by the source of the top-level packages of its bases.
    What an on-disk cache of the component's output is keyed by: an edited component never meets the output of its
    old code."""
    if registry is None:
        from zsqbench.registry import get_registry
        registry = get_registry()
    entry = registry._lookup(kind, getattr(cls, "name", ""))
    mro_modules = {c.__module__ for c in cls.__mro__ if c.__module__ not in ("builtins", "abc")}
    builtin = {m for m in mro_modules if m.startswith("zsqbench_plugins")}
    others = {m.split(".")[0] for m in mro_modules if not m.startswith(("zsqbench.", "zsqbench_plugins", "pydantic"))
              and m != "zsqbench"}
    out = {}
    if entry is not None and entry.obj is cls:
        if entry.distribution == "zsqbench":
            builtin.add(entry.module)
        else:
            out[entry.distribution] = fingerprint(registry, entry.distribution)["sha256"]
            others -= set((registry.distributions.get(entry.distribution) or {}).get("modules", ()))
    out["zsqbench"] = fingerprint(registry, "zsqbench", tuple(sorted(builtin)))["sha256"]
    if others:
        out["modules " + ",".join(sorted(others))] = source_digest(tuple(sorted(others)))[0]
    return out
