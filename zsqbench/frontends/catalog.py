"""``zsqbench list`` without importing torch: a cached listing of what the plugins registered.

Loading the plugins imports torch (seconds). The rows ``zsqbench list`` prints (name, provider, description per
kind; the plugins table) are stored after a full load in ``<cache>/catalog.json`` with a stamp of everything that
could change them: each ``zsqbench`` entry point (name, target, distribution and version), the size and mtime of
every ``.py``/``.json`` file in the packages those entry points live in (zsqbench's own included: its protocols
are JSON files there), the plugin-disabling variable and the Python executable. A stamp that differs means a full
load and a new catalog; ``--refresh`` forces one. ``list settings METHOD`` needs the settings classes: it always
loads the plugins."""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import sys
from pathlib import Path

from zsqbench.spine.cache import cache_base

FORMAT = 1
DISABLE_ENV = "ZSQBENCH_DISABLE_PLUGINS"  # the registry's (zsqbench.spine.registry.DISABLE_ENV)


def _package_dirs(module: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    return [Path(spec.origin).parent] if spec.origin else []


def stamp() -> str:
    h = hashlib.sha256()
    h.update(f"{FORMAT}\0{sys.executable}\0{os.environ.get(DISABLE_ENV, '')}\0".encode())
    dirs: set[Path] = set()
    for ep in sorted(md.entry_points(group="zsqbench"), key=lambda e: (e.name, e.value)):
        dist = ep.dist
        h.update(f"{ep.name}={ep.value}\0{dist.name if dist else '?'} {dist.version if dist else '?'}\0".encode())
        dirs.update(_package_dirs(ep.value.split(":")[0].strip()))
    dirs.update(_package_dirs("zsqbench"))
    for d in sorted(dirs):
        for f in sorted(d.rglob("*")):
            if f.suffix in (".py", ".json") and "__pycache__" not in f.parts:
                try:
                    st = f.stat()
                except OSError:
                    continue
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def path() -> Path:
    return cache_base() / "catalog.json"


def load() -> dict | None:
    """The cached listing when its stamp is current, else None."""
    try:
        data = json.loads(path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("stamp") == stamp() else None


def from_registry(reg) -> dict:
    """What ``zsqbench list`` prints, as plain data (rich markup escaped where it comes from plugins)."""
    from zsqbench.frontends.listing import protocol_budget
    kinds = {}
    for kind in reg.KINDS:
        rows = []
        for name, entry in sorted(getattr(reg, kind).items()):
            obj = entry.obj
            if kind == "methods":
                desc = {"text": obj.description, "dim": f"({obj.synthesizer} + {obj.distiller} + {obj.quantizer})"}
            elif kind == "models":
                desc = {"text": obj.notes}
            elif kind == "protocols":
                grid, budget = protocol_budget(obj)
                desc = {"text": f"v{obj['version']}: {grid}\n{budget}", "dim": obj["description"]}
            else:
                desc = {"text": obj.description}
            rows.append({"name": name, "provider": entry.provider, **desc})
        kinds[kind] = rows
    return {"kinds": kinds, "plugins": [{k: str(p[k]) for k in ("entry_point", "distribution", "version", "status")}
                                        for p in reg.plugins]}


def save(listing: dict) -> None:
    """Store a listing with the current stamp; a cache that cannot be written is not an error."""
    target = path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"stamp": stamp(), **listing}))
        os.replace(tmp, target)
    except OSError:
        pass
