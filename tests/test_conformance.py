"""Issue #28, part 4: the conformance suite. ``zsqbench.testing.check_method`` passes for every built-in method (the
example plugin runs it in its own tests, tests/test_example_plugin.py) and fails, naming each broken rule, for a
deliberately broken plugin (tests/plugin_broken). Tiny budgets: a few seconds per method."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from zsqbench.spine.registry import get_registry
from zsqbench.testing import CHECKS, check_method

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = sorted(name for name, e in get_registry().methods.items() if e.distribution == "zsqbench")


def test_every_builtin_method_is_checked():
    assert len(BUILTIN) >= 12 and {"gdfq", "intraq", "zeroq", "fp", "noise", "bag"} <= set(BUILTIN)


@pytest.mark.parametrize("method", BUILTIN)
def test_builtin_method_passes_check_method(method, tmp_path):
    # cli=False: the real `zsqbench run` subprocess of bad_setting runs once, below (the CLI path is the core's)
    results = check_method(method, out_dir=tmp_path, cli=False)
    assert set(results) == set(CHECKS)
    assert all(v == "ok" or v.startswith("skipped: ") for v in results.values()), results
    image_set = get_registry().get("synthesizers", get_registry().get("methods", method).synthesizer)
    assert (results["cache_code"] == "ok") == hasattr(image_set, "cache_path"), results


def test_check_method_runs_the_real_cli_for_a_bad_setting(tmp_path):
    assert check_method("noise", out_dir=tmp_path, checks=["bad_setting"]) == {"bad_setting": "ok"}
    assert not list((tmp_path / "bad-cli").rglob("*.json"))


def test_unknown_method_or_check_is_a_clear_failure(tmp_path):
    with pytest.raises(AssertionError, match=r"method 'nosuch' is not registered .*pip install -e"):
        check_method("nosuch", out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown checks"):
        check_method("gdfq", checks=["speed"])


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("broken-src")
    shutil.copytree(ROOT / "tests" / "plugin_broken", src / "pkg")  # a copy: pip builds in the source tree
    target = tmp_path_factory.mktemp("broken-site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", "--target", str(target), str(src / "pkg")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def test_a_broken_plugin_fails_check_method_naming_each_broken_rule(broken_site, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(broken_site), os.environ.get("PYTHONPATH")]))}
    code = ("from zsqbench.testing import check_method\n"
            f"check_method('peeking', out_dir={str(tmp_path)!r}, cli=False)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = proc.stderr[proc.stderr.index("AssertionError: "):]
    assert message.startswith("AssertionError: check_method('peeking'): 4 of 7 check(s) failed:"), message
    for words in ["registers (the plugin's hook registers all of it or nothing)",
                  "the hook adds distiller 'kd', but the registry has it from zsqbench 0.1.0",
                  "deterministic (a second run with the same seed", "two runs with seed 0 differ",
                  "cache_code (an edit to the synthesizer's module", "keeps the synthetic-set cache key",
                  "no_real_data (it never touches real data)", "imports zsqbench.evaluation.data",
                  "__init__.py opened", "real data the evaluation reads"]:
        assert words in message, f"{words!r} not in:\n{message}"
    for ok in ("settings (", "smoke_run (", "bad_setting ("):
        assert ok not in message
