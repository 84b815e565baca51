"""The layout reads as the data path (issue #26, part 4): the spine together, the stages in data-path order, the
front ends apart. Read from the source, with every import counted — at module level, inside functions and under
``TYPE_CHECKING`` — since any of them can close a circle at run time or pull a front end into a code fingerprint."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "zsqbench"

# the stages along the data path: a stage may import an earlier one, never a later one
STAGES = ("teacher", "quantizer", "synthesizer", "distiller", "evaluation", "record", "export", "leaderboard")
SPINE = ("spine", "protocols")  # protocols: the protocol files and their loader, read by the plan and the registry
DRIVERS = ("zsqbench.spine.plan", "zsqbench.spine.loop")  # what drives the stages: no stage imports them
FRONT_ENDS = ("frontends", "testing")
# the only modules outside a folder: the two public namespaces and the core's entry point
TOP_LEVEL = {"zsqbench", "zsqbench.api", "zsqbench.testing", "zsqbench.builtin"}


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module of zsqbench that ``name`` (a module, or a module's attribute) is."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {imported module of zsqbench: line}}, every import anywhere in the file."""
    graph = {}
    for module, (path, package) in MODULES.items():
        edges = graph[module] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = module.split(".") if package else module.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = _owner(name) if name.split(".")[0] == "zsqbench" else None
                if target and target != module:
                    edges.setdefault(target, node.lineno)
    return graph


GRAPH = import_graph()


def group(module: str) -> str:
    """``spine``, ``protocols``, a stage's name, ``frontends``, or a top-level module's own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "zsqbench"


def find_cycle(graph) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def _arrows(ok) -> list[str]:
    return [f"{m} -> {t} (line {line})" for m, edges in sorted(GRAPH.items()) for t, line in sorted(edges.items())
            if not ok(m, t)]


def test_the_graph_is_read_from_real_imports():
    """A sanity check on the reader: known arrows are found, at module level and inside functions."""
    assert "zsqbench.spine.interfaces" in GRAPH["zsqbench.spine.loop"]
    assert "zsqbench.spine.plan" in GRAPH["zsqbench.frontends.synth"]
    assert "zsqbench.frontends.sweep" in GRAPH["zsqbench.frontends.cli"]  # imported inside the sweep command
    assert len(MODULES) > 50


def test_no_import_circle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_every_module_lives_in_a_folder_of_the_layout():
    """Nothing new lands among the top-level modules: the spine, a stage, or a front end."""
    known = {*STAGES, *SPINE, "frontends"}
    stray = sorted(m for m in MODULES if m not in TOP_LEVEL and m.split(".")[1] not in known)
    assert not stray, f"modules outside the layout's folders: {stray}"


def test_no_stage_imports_a_later_stage():
    def ok(m, t):
        a, b = group(m), group(t)
        return not (a in STAGES and b in STAGES and STAGES.index(b) > STAGES.index(a))
    assert not _arrows(ok)


def test_no_stage_imports_what_drives_it():
    """The plan and the loop drive the stages; a stage that imported them would be a back-arrow
    (``zsqbench synth`` once lived in the synthesizer and imported both)."""
    assert not _arrows(lambda m, t: not (group(m) in STAGES and t in DRIVERS))


def test_neither_the_spine_nor_a_stage_imports_a_front_end():
    def ok(m, t):
        return not (group(m) in (*SPINE, *STAGES) and group(t) in FRONT_ENDS)
    assert not _arrows(ok)
    # nor the plugin API (a stage that imported it would import every stage)
    assert not _arrows(lambda m, t: not (group(m) in (*SPINE, *STAGES) and t == "zsqbench.api"))


@pytest.mark.parametrize("plugins", [("zsqbench_plugins.gdfq",), ("zsqbench_plugins.synq", "zsqbench_plugins.hast")])
def test_code_fingerprint_holds_no_front_end(plugins):
    """What the fingerprint covers follows the layout: the run's closure never reaches a front end."""
    from zsqbench.spine import provenance
    names = {name for name, _ in provenance.imported_files((provenance.ENGINE, "zsqbench.builtin", *plugins))}
    assert "zsqbench/spine/loop.py" in names and "zsqbench/spine/plan.py" in names
    assert not {n for n in names if n.startswith("zsqbench/frontends/") or n == "zsqbench/testing.py"}
