"""Plugin discovery through the ``zsqbench`` entry-point group: the built-ins, a real out-of-tree package
installed with pip, broken plugins, the disable switch, and duplicate registrations."""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest

from zsqbench.spine.interfaces import Method, Synthesizer
from zsqbench.spine.registry import PluginWarning, Registry, load_plugins

CORE = f"zsqbench {md.version('zsqbench')}"
TITLES = ("methods", "synthesizers", "distillers", "quantizers", "models", "datasets", "protocols", "plugins")


def tables(stdout: str) -> dict[str, dict[str, list[str]]]:
    """Parse the rich tables of `zsqbench list` into {title: {first cell: [cells...]}} (wrapped lines skipped)."""
    out: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in stdout.splitlines():
        if line.strip() in TITLES:
            current = out.setdefault(line.strip(), {})
        elif current is not None and line.startswith("│"):
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if cells[0]:
                current[cells[0]] = cells
    return out


def stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


# --- the built-ins -----------------------------------------------------------------------------------------

def test_list_shows_builtins_with_providers(cli):
    proc = cli("list")
    assert proc.returncode == 0, proc.stderr
    assert stderr_lines(proc) == []
    t = tables(proc.stdout)
    assert set(t) == set(TITLES)
    for name in ("gdfq", "fp", "noise"):
        assert t["methods"][name][1] == CORE, t["methods"][name]
    assert {"minmax-ema", "none"} <= set(t["quantizers"])
    assert "kd" in t["distillers"]
    assert {"gdfq", "noise"} <= set(t["synthesizers"])
    assert {"resnet20@fmnist", "mobilenetv1@fmnist"} <= set(t["models"])
    assert "smoke" in t["protocols"]
    assert {"fmnist", "cifar10", "cifar100", "imagenet"} <= set(t["datasets"])
    for kind in ("quantizers", "distillers", "synthesizers", "models", "datasets", "protocols"):
        assert all(row[1] == CORE for row in t[kind].values()), t[kind]
    for ep in ("core", "references", "gdfq"):
        assert t["plugins"][ep][1:] == ["zsqbench", md.version("zsqbench"), "loaded"], t["plugins"][ep]


# --- out-of-tree packages, installed for real into an isolated --target dir --------------------------------

PYPROJECT = """\
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
description = "a zsqbench plugin written in a test"

[project.entry-points.zsqbench]
{ep} = "{module}"

[tool.setuptools]
packages = ["{module}"]
"""

TOYQ = '''\
"""An out-of-tree zsqbench plugin that uses nothing but the public API."""
import torch

from zsqbench.api import Batch, Method, Synthesizer, hookimpl


class ToyUniform(Synthesizer):
    name = "toy-uniform"
    description = "i.i.d. uniform images in [low, high], random labels"
    defaults = {"low": -1.0, "high": 1.0}

    def next_batch(self, ctx, batch_size):
        lo, hi = self.config["low"], self.config["high"]
        x = torch.rand(batch_size, *ctx.image_shape, device=ctx.device) * (hi - lo) + lo
        return Batch(x, ctx.random_labels(batch_size))


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(ToyUniform)
    registry.add_method(Method(
        "toyq", synthesizer="toy-uniform", distiller="kd", quantizer="minmax-ema",
        settings={"smoke": {"train": {"steps": 2, "warmup_steps": 2}}},
        description="toy out-of-tree method (uniform noise + core kd + core minmax-ema)"))
'''

BROKEN_IMPORT = 'raise RuntimeError("toy plugin broken at import")\n'

BROKEN_REGISTER = '''\
from zsqbench.api import hookimpl


@hookimpl
def zsqbench_register(registry):
    raise RuntimeError("toy plugin broken while registering")
'''


def pip_install(tmp_path: Path, *, dist: str, version: str, ep: str, module: str, code: str) -> Path:
    """Write a package to tmp_path/src-<dist> and pip-install it into tmp_path/site-<dist>; return the site dir."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("setuptools is missing from the venv: `pip install --no-build-isolation` cannot build the "
                    "test plugin package without it")
    pkg = tmp_path / f"src-{dist}"
    (pkg / module).mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PYPROJECT.format(dist=dist, version=version, ep=ep, module=module))
    (pkg / module / "__init__.py").write_text(code)
    site = tmp_path / f"site-{dist}"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--no-cache-dir", "--target", str(site), str(pkg)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / module / "__init__.py").is_file()
    assert list(site.glob("*.dist-info/entry_points.txt")), list(site.iterdir())
    return site


def with_path(site: Path) -> dict:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def assert_not_in_venv(dist: str, module: str) -> None:
    with pytest.raises(md.PackageNotFoundError):
        md.distribution(dist)
    for key in ("purelib", "platlib"):
        assert not list(Path(sysconfig.get_paths()[key]).glob(f"{module}*")), f"{module} leaked into the venv"


def test_out_of_tree_plugin_package(cli, tmp_path):
    site = pip_install(tmp_path, dist="zsqbench-toyq", version="0.3.1", ep="toyq", module="zsqbench_toyq",
                       code=TOYQ)
    env = with_path(site)

    proc = cli("list", "methods", env=env)
    assert proc.returncode == 0, proc.stderr
    assert stderr_lines(proc) == []
    methods = tables(proc.stdout)["methods"]
    assert methods["toyq"][1] == "zsqbench-toyq 0.3.1"
    assert methods["gdfq"][1] == CORE  # the built-ins are still there
    proc = cli("list", "synthesizers", env=env)
    assert tables(proc.stdout)["synthesizers"]["toy-uniform"][1] == "zsqbench-toyq 0.3.1"
    plugins = tables(cli("list", "plugins", env=env).stdout)["plugins"]
    assert plugins["toyq"][1:] == ["zsqbench-toyq", "0.3.1", "loaded"]

    out = tmp_path / "res"
    proc = cli("run", "--method", "toyq", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
               "--out", out, "-q", env={**env, "OMP_NUM_THREADS": "1"})  # see test_engine.ONE_THREAD
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = list(out.iterdir())
    assert len(files) == 1 and files[0].suffix == ".json", files
    proc = cli("validate", files[0])
    assert proc.returncode == 0, proc.stdout + proc.stderr

    rec = json.loads(files[0].read_text())
    assert rec["status"] == "ok"
    assert rec["off_protocol"] == []
    assert {"entry_point": "toyq", "distribution": "zsqbench-toyq", "version": "0.3.1",
            "status": "loaded"} in rec["plugins"]
    assert rec["method"]["name"] == "toyq"
    assert rec["method"]["provider"] == "zsqbench-toyq 0.3.1"
    assert rec["method"]["synthesizer"]["name"] == "toy-uniform"
    assert rec["method"]["synthesizer"]["provider"].startswith("zsqbench-toyq")
    assert rec["method"]["synthesizer"]["config"] == {"low": -1.0, "high": 1.0}
    assert rec["method"]["distiller"]["name"] == "kd" and rec["method"]["distiller"]["provider"] == CORE
    assert rec["method"]["quantizer"]["name"] == "minmax-ema" and rec["method"]["quantizer"]["provider"] == CORE
    # the plugin's inline settings were applied on top of the smoke protocol
    assert rec["config"]["train"]["steps"] == 2 and rec["config"]["train"]["warmup_steps"] == 2
    assert rec["timing"]["steps"] == 2

    # without the target dir on the path the plugin is gone, and nothing was installed into the venv
    proc = cli("list", "methods")
    assert "toyq" not in tables(proc.stdout)["methods"]
    assert_not_in_venv("zsqbench-toyq", "zsqbench_toyq")


@pytest.mark.parametrize("dist, ep, module, code, status", [
    ("zsqbench-broken-import", "brokenimport", "zsqbench_broken_import", BROKEN_IMPORT, "failed: RuntimeError"),
    ("zsqbench-broken-register", "brokenreg", "zsqbench_broken_register", BROKEN_REGISTER,
     "failed: RuntimeError"),
], ids=["raises-at-import", "raises-in-register"])
def test_broken_plugin_is_skipped_with_one_warning(cli, tmp_path, dist, ep, module, code, status):
    site = pip_install(tmp_path, dist=dist, version="0.0.1", ep=ep, module=module, code=code)
    env = with_path(site)

    proc = cli("list", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("warning: ") and f"'{ep}'" in lines[0] and f"{dist} 0.0.1" in lines[0], lines[0]
    assert "RuntimeError" in lines[0]
    t = tables(proc.stdout)
    assert {"gdfq", "fp", "noise"} <= set(t["methods"])
    assert t["plugins"][ep][1:] == [dist, "0.0.1", status]
    assert t["plugins"]["gdfq"][3] == "loaded"
    assert_not_in_venv(dist, module)


CLASH = '''\
from zsqbench.spine.hookspecs import hookimpl
from zsqbench.spine.interfaces import Method


@hookimpl
def zsqbench_register(registry):
    registry.add_method(Method("clash", synthesizer="noise", distiller="kd"))
'''


def test_entry_point_name_clash_is_reported(cli, tmp_path):
    """Another distribution's entry point named like a built-in one ("gdfq") is skipped with a warning."""
    site = pip_install(tmp_path, dist="zsqbench-clash", version="1.0", ep="gdfq", module="zsqbench_clash",
                       code=CLASH)
    proc = cli("list", env=with_path(site))
    assert proc.returncode == 0, proc.stderr
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("warning: ") and "'gdfq'" in lines[0] and "zsqbench-clash 1.0" in lines[0]
    t = tables(proc.stdout)
    assert t["methods"]["gdfq"][1] == CORE and "clash" not in t["methods"]
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in proc.stdout.splitlines()
            if line.startswith("│ gdfq ")]
    assert ["gdfq", "zsqbench", md.version("zsqbench"), "loaded"] in rows
    assert any(r[1] == "zsqbench-clash" and r[3].startswith("skipped") for r in rows), rows


# --- ZSQBENCH_DISABLE_PLUGINS ------------------------------------------------------------------------------

def test_disable_env_var(cli, tmp_path):
    env = {"ZSQBENCH_DISABLE_PLUGINS": "gdfq"}
    proc = cli("list", "methods", env=env)
    assert proc.returncode == 0, proc.stderr
    methods = tables(proc.stdout)["methods"]
    assert "gdfq" not in methods
    assert {"fp", "noise"} <= set(methods)

    proc = cli("list", "plugins", env=env)
    plugins = tables(proc.stdout)["plugins"]
    assert plugins["gdfq"][3] == "disabled"
    assert plugins["references"][3] == "loaded" and plugins["core"][3] == "loaded"

    out = tmp_path / "res"
    proc = cli("run", "--method", "gdfq", "--model", "resnet20", "--bits", "4", "--protocol", "smoke",
               "--out", out, "-q", env=env)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: unknown method 'gdfq'"), proc.stderr
    assert "fp" in lines[0] and "noise" in lines[0]
    assert not out.exists() or not any(out.iterdir())


# --- in-process registry -----------------------------------------------------------------------------------

def test_load_plugins_and_duplicate_registration_keeps_first():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)  # a clean install loads without plugin warnings
        pm, reg = load_plugins()
    assert {"gdfq", "fp", "noise"} <= set(reg.methods)
    assert {p["entry_point"] for p in reg.plugins} >= {"core", "references", "gdfq"}
    assert pm.get_plugin("gdfq") is not None

    first = reg.methods["gdfq"]
    with pytest.warns(PluginWarning, match=r"method 'gdfq' .*already registered by " + CORE):
        reg.add_method(Method("gdfq", synthesizer="noise", distiller="kd"))
    assert reg.methods["gdfq"] is first
    assert reg.methods["gdfq"].obj.synthesizer == "gdfq" and reg.methods["gdfq"].provider == CORE

    # the same in a fresh registry, for a method and a synthesizer
    fresh = Registry()
    m1, m2 = Method("dup", synthesizer="noise", distiller="kd"), Method("dup", synthesizer="gdfq", distiller="kd")
    fresh.add_method(m1)
    with pytest.warns(PluginWarning, match="method 'dup'.*already registered"):
        fresh.add_method(m2)
    assert fresh.methods["dup"].obj is m1
    assert list(fresh.methods) == ["dup"]

    class S1(Synthesizer):
        name = "dup-synth"

    class S2(Synthesizer):
        name = "dup-synth"

    fresh.add_synthesizer(S1)
    with pytest.warns(PluginWarning, match="synthesizer 'dup-synth'.*already registered"):
        fresh.add_synthesizer(S2)
    assert fresh.get("synthesizers", "dup-synth") is S1


def test_component_missing_an_abstract_method_is_a_one_line_error(tmp_path):
    """A plugin synthesizer without next_batch is refused by name before any work starts."""
    import pytest as _pytest

    from zsqbench.spine.errors import UserError
    from zsqbench.spine.interfaces import Method, Synthesizer
    from zsqbench.spine.loop import RunSpec, resolve
    from zsqbench.spine.registry import load_plugins

    class Incomplete(Synthesizer):
        name = "incomplete"

    _, registry = load_plugins()
    registry.add_synthesizer(Incomplete)
    registry.add_method(Method("half-done", synthesizer="incomplete", distiller="kd",
                               settings={"smoke": {}}))
    with _pytest.raises(UserError, match="synthesizer 'incomplete' .* cannot be built.*next_batch"):
        resolve(RunSpec(method="half-done", model="resnet20", wbits=4, abits=4, protocol="smoke",
                        out=str(tmp_path)), registry)


# --- all-or-nothing registration; code versions in sweep hashes and leaderboard rows ------------------------------

HALF_REGISTER = '''\
from zsqbench.spine.hookspecs import hookimpl
from zsqbench.spine.interfaces import Batch, Synthesizer


class HalfSynth(Synthesizer):
    name = "half-synth"

    def next_batch(self, ctx, batch_size):
        raise AssertionError("never used")


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(HalfSynth)
    raise RuntimeError("toy plugin broken half-way through registering")
'''


def test_plugin_failing_half_way_registers_nothing(cli, tmp_path):
    site = pip_install(tmp_path, dist="zsqbench-half", version="0.0.1", ep="half", module="zsqbench_half",
                       code=HALF_REGISTER)
    env = with_path(site)
    proc = cli("list", "synthesizers", env=env)
    assert proc.returncode == 0 and "half-synth" not in tables(proc.stdout)["synthesizers"]
    out = tmp_path / "out"
    proc = cli("run", "--method", "gdfq", "--synthesizer", "half-synth", "--model", "resnet20", "--bits", "4",
               "--protocol", "smoke", "-q", "--out", out, env=env)
    assert proc.returncode == 2 and "unknown synthesizer 'half-synth'" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_plugin_upgrade_reruns_sweep_jobs_and_mixed_rows_are_refused(cli, tmp_path):
    """0.1.0 -> 0.1.1 of a third-party plugin (same settings, other code): its sweep job is no longer done, and a
    row with one seed of each version cannot be built; a row of one version can."""
    # a row needs two seeds of one protocol: the plugin adds "smoke-2", smoke with seeds 0 and 1 (smoke has seed 0
    # only, and a seed outside a protocol is off it)
    proto = json.loads((Path(__file__).resolve().parents[1] / "zsqbench" / "protocols" / "smoke.json").read_text())
    (tmp_path / "smoke-2.json").write_text(json.dumps({**proto, "name": "smoke-2", "seeds": [0, 1]}))
    code = TOYQ.replace("    registry.add_synthesizer(ToyUniform)\n",
                        f"    registry.add_protocol({str(tmp_path / 'smoke-2.json')!r})\n"
                        "    registry.add_synthesizer(ToyUniform)\n").replace('settings={"smoke":', 'settings={"*":')
    old = pip_install(tmp_path / "a", dist="zsqbench-toyq", version="0.1.0", ep="toyq", module="zsqbench_toyq",
                      code=code)
    new = pip_install(tmp_path / "b", dist="zsqbench-toyq", version="0.1.1", ep="toyq", module="zsqbench_toyq",
                      code=code.replace("torch.rand(", "2 * torch.rand("))
    sweep_dir = tmp_path / "sweep"
    grid = ["sweep", "--protocol", "smoke-2", "--methods", "toyq", "--models", "resnet20@fmnist", "-o", sweep_dir,
            "-q"]
    proc = cli(*grid, "--seeds", "0", env=with_path(old))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert cli(*grid, "--seeds", "0", "--dry-run", env=with_path(old)).stdout.startswith("done")
    todo = cli(*grid, "--seeds", "0", "--dry-run", env=with_path(new)).stdout
    assert todo.startswith("todo"), todo  # same settings, other code: the job runs again
    (job,) = [d for d in sweep_dir.iterdir() if d.is_dir()]
    assert job.name in todo  # the same directory: it is named by the settings, not by the code
    rec0 = json.loads((job / "record.json").read_text())
    assert rec0["code"]["zsqbench-toyq"]["version"] == "0.1.0" and "zsqbench" in rec0["code"]
    proc = cli(*grid, "--seeds", "1", env=with_path(new))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    board = tmp_path / "board.json"
    proc = cli("leaderboard", "build", "--protocol", "smoke-2", sweep_dir, "-o", board, env=with_path(new))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(stderr_lines(proc)) == 1 and "mixes code versions" in proc.stderr and "0.1.0" in proc.stderr
    assert not board.exists()
    # compare marks such a row x rather than testing seeds of two codes as one sample
    proc = cli("compare", sweep_dir, sweep_dir, "--json", env=with_path(new))
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["comparisons"]
    assert row["mark"] == "x" and "mixes code versions" in row["note"]
    # re-run seed 0 with the new code: one version again, the row builds
    proc = cli(*grid, "--seeds", "0", env=with_path(new))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = cli("leaderboard", "build", "--protocol", "smoke-2", sweep_dir, "-o", board, env=with_path(new))
    assert proc.returncode == 0, proc.stderr
