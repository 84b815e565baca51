"""Code fingerprints: which code produced a result.

A settings hash says *what* was asked for; it cannot tell that a plugin's algorithm changed between two runs with
the same settings (0.1.0 -> 0.1.1, or an uncommitted edit). So every record carries, for each distribution whose
code the run used — zsqbench itself and the providers of the method, its components, its teacher and its dataset —
the distribution's version and a sha256 of what its Python source *does*: each file's syntax tree with docstrings
left out (comments and layout never reach the tree), so a docstring, comment or formatting edit is the same code
version and an edited expression is another. A sweep job's hash includes them, so changed code re-runs; a
leaderboard row must come from one code version.

Which of zsqbench's own modules compute a result is read from the code, not from a list: the modules the run
imports — the engine (``zsqbench.spine.loop``) and the entry-point modules of the components it uses
(``zsqbench.builtin``, ``zsqbench_plugins.bag``, ...) — and, transitively, every module of zsqbench's own packages
that those import. The front ends (``zsqbench/frontends/``: the CLI, the listing, the sweep drivers; and
``zsqbench.testing``) import the engine, never the other way round (``tests/test_layout.py``), so editing them re-runs
nothing; one built-in method's edit re-runs only its own jobs.
A third-party distribution is fingerprinted whole (the packages its ``zsqbench`` entry points live in).

Records made before fingerprints existed have none: their code version is :data:`UNKNOWN`, which equals itself
(a row of such records is consistent) and nothing else.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

UNKNOWN = "unknown"
ENGINE = "zsqbench.spine.loop"  # every run executes it (and the plan it imports); the root of zsqbench's fingerprint
OWN_PACKAGES = ("zsqbench", "zsqbench_plugins")  # the zsqbench distribution's top-level packages


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
                if "__pycache__" not in f.parts:
                    out.append((f"{module}/{f.relative_to(root).as_posix()}", f))
        return tuple(out)
    if spec.origin and spec.origin.endswith(".py"):
        return ((f"{module}.py", Path(spec.origin)),)
    return ()


def _without_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def normalised_source(path: Path) -> str:
    """What a source file does, as text: its syntax tree without docstrings, positions or comments. A file that does
    not parse is taken as its bytes (it fails on import anyway)."""
    stat = path.stat()
    return _normalised(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=None)
def _normalised(path: Path, mtime_ns: int, size: int) -> str:  # cached per version of the file
    text = path.read_bytes()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return text.decode("utf-8", "replace")
    return ast.dump(_without_docstrings(tree), annotate_fields=False, include_attributes=False)


def _digest(files) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    for name, path in files:
        h.update(name.encode() + b"\0")
        h.update(normalised_source(path).encode())
        h.update(b"\0")
        n += 1
    return h.hexdigest(), n


@lru_cache(maxsize=None)
def source_digest(modules: tuple[str, ...]) -> tuple[str, int]:
    """sha256 over the (relative name, normalised syntax tree) of every source file of the modules (top-level
    modules or whole packages), and how many files there are."""
    return _digest(f for module in sorted(modules) for f in module_source_files(module))


def with_sibling_imports(modules) -> list[str]:
    """``modules`` (e.g. ``zsqbench_plugins.bag``) and, transitively, the modules of their own top-level package
    they import (bag imports ``zsqbench_plugins.gdfq``), found by reading their source."""
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


def _module_file(module: str) -> tuple[str, Path] | None:
    """(relative name, file) of one dotted module of an own package, found on disk without importing it."""
    top, *rest = module.split(".")
    if top not in OWN_PACKAGES:
        return None
    for name, path in module_source_files(top):
        if name in ("/".join([top, *rest]) + ".py", "/".join([top, *rest, "__init__.py"])):
            return name, path
    return None


def _imports(path: Path) -> set[str]:
    """Every module a source file may import, at top level or inside a function (``from a import b`` names both
    ``a`` and ``a.b``, since ``b`` may be a submodule)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


@lru_cache(maxsize=None)
def imported_files(roots: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    """The source files of ``roots`` and, transitively, of every module of zsqbench's own packages they import
    (with the ``__init__.py`` of each package on the way, which runs on import)."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            found = _module_file(".".join(parts[:i]))
            if found is None or found[0] in seen:
                continue
            name, path = found
            seen[name] = path
            todo += sorted(_imports(path))
    return tuple(sorted(seen.items()))


def fingerprint(registry, distribution: str, plugin_modules: tuple[str, ...] = ()) -> dict:
    """{"version", "sha256", "files"} of one loaded plugin distribution. For zsqbench itself: the engine and the
    built-in entry-point modules the run uses (``plugin_modules``), with every own module they import, so that adding
    or fixing one built-in method does not re-run every other method's sweep jobs."""
    info = registry.distributions.get(distribution)
    if info is None:  # registered outside the entry points (e.g. a test's hand-made registry)
        import zsqbench
        if distribution != "zsqbench":
            return {"version": UNKNOWN, "sha256": None, "files": 0}
        info = {"version": zsqbench.__version__}
    if distribution == "zsqbench":
        digest, files = _digest(imported_files(tuple(sorted({ENGINE, *plugin_modules}))))
    else:
        digest, files = source_digest(tuple(sorted(info["modules"])))
    return {"version": info["version"], "sha256": digest, "files": files}


def _run_entries(plan) -> list:
    registry = plan.registry
    entries = [registry._lookup("methods", plan.method.name), registry._lookup("models", plan.model_key),
               registry._lookup("datasets", plan.model_spec.dataset)]
    entries += [registry._lookup(kind + "s", c.name) for kind, c in plan.components.items()]
    return [e for e in entries if e is not None]


def run_distributions(plan) -> list[str]:
    """The distributions whose code a run uses: zsqbench's core and the providers of its method, components,
    teacher and dataset (its loader reads the images the run is scored on)."""
    return sorted({"zsqbench"} | {e.distribution for e in _run_entries(plan)})


def run_code(plan) -> dict:
    """{distribution: fingerprint} for a run plan (:class:`zsqbench.spine.plan.RunPlan`; in its record and its job
    hash)."""
    entries = _run_entries(plan)
    builtin_plugins = tuple(sorted({e.module for e in entries if e.distribution == "zsqbench"}))
    return {dist: fingerprint(plan.registry, dist, builtin_plugins if dist == "zsqbench" else ())
            for dist in run_distributions(plan)}


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
        from zsqbench.spine.registry import get_registry
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
