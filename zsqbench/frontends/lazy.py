"""What the CLI can learn about installed plugins without importing them (and torch with them).

``zsqbench --help`` must answer at once: loading the plugins imports torch (seconds). Only a plugin that
implements ``zsqbench_register_commands`` can change the command list, so the plugins are loaded before the CLI
parses its arguments only when an installed ``zsqbench`` entry point's module source mentions that hook (read as
text, never imported) or cannot be found."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
from pathlib import Path

HOOK = "zsqbench_register_commands"
GROUP = "zsqbench"


def _module_file(module: str) -> Path | None:
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level lookup: nothing is imported
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for location in spec.submodule_search_locations or ():
        base = Path(location, *rest.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def plugins_may_add_commands() -> bool:
    """True when some installed plugin's module mentions the command hook, or a module cannot be read."""
    for ep in md.entry_points(group=GROUP):
        path = _module_file(ep.value.split(":")[0].strip())
        if path is None:
            return True
        try:
            if HOOK in path.read_text(errors="replace"):
                return True
        except OSError:
            return True
    return False
