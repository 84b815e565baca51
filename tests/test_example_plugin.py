"""The example plugin package (examples/zsqbench-example), installed verbatim with pip into a temporary target the
way a user installs a plugin: zsqbench lists it with its provider, runs it end to end under smoke, and its own test
suite (written with zsqbench.testing) passes against that install. docs/plugins.md walks through this package."""
from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zsqbench.testing import check_record

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "zsqbench-example"
DIST, VERSION, EP, MODULE, METHOD = "zsqbench-example", "0.1.0", "example", "zsqbench_example", "balanced-smooth"
PROVIDER = f"{DIST} {VERSION}"


def _build_leftovers() -> list[Path]:
    """setuptools builds in the source tree (pip's in-tree build): git-ignored build/ and *.egg-info/."""
    return [EXAMPLE / "build", *EXAMPLE.glob("*.egg-info")]


def _remove_build_leftovers() -> None:
    for path in _build_leftovers():
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """examples/zsqbench-example pip-installed (no copy, no edit) into a fresh --target folder."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("setuptools is missing from the venv: `pip install --no-build-isolation` cannot build the "
                    "example plugin package without it")
    target = tmp_path_factory.mktemp("example") / "site"
    _remove_build_leftovers()  # a stale build/lib could smuggle deleted files into the install
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                               "--no-index", "--no-cache-dir", "--target", str(target), str(EXAMPLE)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    finally:
        _remove_build_leftovers()
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (target / MODULE / "balanced_smooth.json").is_file(), "the settings file was not installed"
    assert list(target.glob(f"{MODULE.replace('-', '_')}-{VERSION}.dist-info/entry_points.txt"))
    return target


def with_path(site: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def rows(stdout: str, title: str | None = None) -> dict[str, list[str]]:
    """{first cell: cells} of the rich table ``title`` of `zsqbench list` (None: every table; continuation lines
    skipped)."""
    out, current = {}, None
    for line in stdout.splitlines():
        if line.strip() and not line.startswith(("│", "┏", "┃", "┡", "└")):
            current = line.strip()
        elif title in (None, current) and line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if cells[0]:
                out[cells[0]] = cells
    return out


def zsqbench_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [n for n in found if n == "zsqbench" or n.startswith("zsqbench.")]


def test_example_uses_only_the_public_surface():
    for path in sorted((EXAMPLE / MODULE).glob("*.py")):
        assert set(zsqbench_imports(path)) <= {"zsqbench.api"}, f"{path} imports {zsqbench_imports(path)}"
    for path in sorted((EXAMPLE / "tests").glob("*.py")):
        assert set(zsqbench_imports(path)) <= {"zsqbench.api", "zsqbench.testing"}, path
    settings = json.loads((EXAMPLE / MODULE / "balanced_smooth.json").read_text())
    assert {"smoke", "cpu"} <= set(settings)


def test_readme_and_guide_quote_the_example_verbatim():
    """The hook in README.md and every block docs/plugins.md labels with an example file are the example's code."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Writing a method plugin"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", section, re.S)
    assert blocks, "README's plugin section has no code snippet"
    sources = {p.name: p.read_text() for p in (EXAMPLE / "pyproject.toml", EXAMPLE / MODULE / "__init__.py")}
    for block in blocks:
        assert any(block.strip() in text for text in sources.values()), f"README snippet not in the example:\n{block}"
    guide = (ROOT / "docs" / "plugins.md").read_text()
    quoted = re.findall(r"```\w+\n# (examples/zsqbench-example/\S+)\n(.*?)```", guide, re.S)
    assert len(quoted) >= 3, "docs/plugins.md quotes too little of the example"
    for rel, block in quoted:
        text = (ROOT / rel).read_text()
        for part in block.split("\n...\n"):  # "..." on its own line marks an elision
            assert part.strip() in text, f"docs/plugins.md block for {rel} is not in that file:\n{part}"


@pytest.mark.slow
def test_installed_example_is_listed_with_its_provider(cli, site):
    env = with_path(site)
    proc = cli("list", env=env)
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == []
    assert rows(proc.stdout, "methods")[METHOD][1] == PROVIDER
    assert rows(proc.stdout, "methods")["gdfq"][1] == f"zsqbench {md.version('zsqbench')}"
    assert rows(proc.stdout, "synthesizers")[METHOD][1] == PROVIDER
    assert rows(proc.stdout, "plugins")[EP][1:] == [DIST, VERSION, "loaded"]
    proc = cli("list", "settings", METHOD, env=env)
    assert proc.returncode == 0, proc.stderr
    settings = rows(proc.stdout)
    assert settings["synthesizer.labels"][1] == "'balanced' | 'uniform'"
    assert settings["synthesizer.smoothing"][1:3] == ["float ≥ 0, < 1", "0.1"]
    assert settings["train.steps"][2:] == ["—", "1000", "6"]  # cpu and smoke: the protocols' steps
    assert settings["synthesizer.width"][2:] == ["128", "128", "32"]  # balanced_smooth.json's smoke entry
    # without the target folder on the path the plugin is gone: nothing leaked into the venv
    assert METHOD not in rows(cli("list", "methods").stdout, "methods")
    with pytest.raises(md.PackageNotFoundError):
        md.distribution(DIST)


@pytest.mark.slow
def test_example_runs_end_to_end_under_smoke_via_the_cli(cli, site, tmp_path):
    out = tmp_path / "results"
    proc = cli("run", "--method", METHOD, "--model", "resnet20", "--bits", "4", "--protocol", "smoke", "--out", out,
               "--cache-dir", tmp_path / "cache", "-q", env=with_path(site))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("*.json")
    assert path.name.startswith(f"{METHOD}_resnet20-fmnist_w4a4_smoke_seed0_")
    proc = cli("validate", path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = check_record(path)
    assert record["off_protocol"] == []
    assert record["method"]["provider"] == PROVIDER
    assert record["method"]["synthesizer"] == {"name": METHOD, "provider": PROVIDER,
                                               "config": record["method"]["synthesizer"]["config"]}
    assert record["method"]["distiller"]["name"] == "kd" and record["method"]["quantizer"]["name"] == "minmax-ema"
    assert record["code"][DIST]["version"] == VERSION and record["code"][DIST]["sha256"]
    assert {"entry_point": EP, "distribution": DIST, "version": VERSION, "status": "loaded"} in record["plugins"]


@pytest.mark.slow
def test_example_own_test_suite_passes(site, tmp_path):
    """pytest on the example's tests/ against the installed copy, as its author runs them; nothing is written into
    the example's folder (no cache, no bytecode)."""
    env = {**os.environ, **with_path(site), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
                           str(EXAMPLE), str(EXAMPLE / "tests"), "--basetemp", str(tmp_path / "basetemp")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b5 passed\b", proc.stdout), proc.stdout[-2000:]  # with the conformance suite
