"""Typed settings (zsqbench.settings) and code fingerprints (zsqbench.provenance)."""
from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from zsqbench.cli import cli as zsqbench
from zsqbench.errors import UserError
from zsqbench.interfaces import Synthesizer
from zsqbench.loop import RunSpec, resolve
from zsqbench.registry import get_registry


def test_every_builtin_method_has_valid_settings_under_every_protocol():
    """resolve validates the merged configuration: every shipped settings file passes for every teacher."""
    reg = get_registry()
    checked = 0
    for pname, entry in reg.protocols.items():
        for method, m in reg.methods.items():
            if m.obj.settings_for(pname) is None:
                continue
            for model in entry.obj["models"]:
                bits = entry.obj["bits"][0]
                resolve(RunSpec(method=method, model=model, wbits=bits[0], abits=bits[1], protocol=pname), reg)
                checked += 1
    assert checked > 50


def test_list_settings_shows_types_defaults_and_protocol_values():
    result = CliRunner().invoke(zsqbench, ["list", "settings", "hast"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    header = next(line for line in result.stdout.splitlines() if "setting" in line and "default" in line)
    assert "cpu" in header and "smoke" in header and "paper" in header
    assert rows["train.steps"][:2] == ["int ≥ 0, ≤ 1000000", "—"]  # a sane maximum (issue #27)
    assert rows["distiller.lambda_eps"][:2] == ["'code' | 'hocon'", '"code"']
    assert rows["synthesizer.iterations"][0] == "int ≥ 0, ≤ 1000000"
    assert "200" in rows["synthesizer.iterations"]  # HAST's cpu value (README: 200 synthesis iterations)
    missing = CliRunner().invoke(zsqbench, ["list", "settings"])
    assert missing.exit_code == 2 and "give the method" in missing.stderr


def test_plain_defaults_get_types_inferred_from_their_values():
    """A plugin that declares only a defaults dict still gets its values checked (types from the defaults)."""

    class Plain(Synthesizer):
        name = "plain"
        defaults = {"low": -1.0, "steps": 3, "on": True, "anything": None}

        def next_batch(self, ctx, batch_size):
            raise NotImplementedError

    assert Plain(low=2, steps=4, on=False, anything="x").config["low"] == 2
    with pytest.raises(UserError, match=r'synthesizer.low="a"'):
        Plain(low="a")
    with pytest.raises(UserError, match="synthesizer.on=1"):
        Plain(on=1)
    with pytest.raises(UserError, match="synthesizer.nope is not a setting"):
        Plain(nope=1)


def test_source_digest_follows_the_code(tmp_path, monkeypatch):
    """An edited source file is another code version, whatever the version string says."""
    from zsqbench import provenance
    pkg = tmp_path / "digest_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = provenance.source_digest(("digest_probe_pkg",))
    provenance.source_digest.cache_clear()
    provenance.module_source_files.cache_clear()
    (pkg / "__init__.py").write_text("X = 2\n")
    after = provenance.source_digest(("digest_probe_pkg",))
    assert before[1] == after[1] == 1 and before[0] != after[0]
    assert provenance.code_version(None) == provenance.UNKNOWN
    sys.modules.pop("digest_probe_pkg", None)


def test_run_record_and_sweep_job_carry_code(tmp_path):
    from zsqbench.sweep import expand
    reg = get_registry()
    (job,) = expand("smoke", methods=("gdfq",), models=("resnet20@fmnist",), out=tmp_path, registry=reg)
    code = job.identity["code"]
    assert set(code) == {"zsqbench"} and len(code["zsqbench"]["sha256"]) == 64 and code["zsqbench"]["files"] > 20
    assert job.identity["teacher_preprocessing"] == {"mean": [0.286], "std": [0.353], "fit": "pad"}
    assert job.dir.name.startswith(job.settings_hash[:16]) and job.hash != job.settings_hash
    # another version of the code: another job hash, the same directory
    dist = reg.distributions["zsqbench"]
    saved = dist["version"]
    dist["version"] = saved + ".post1"
    try:
        (changed,) = expand("smoke", methods=("gdfq",), models=("resnet20@fmnist",), out=tmp_path, registry=reg)
    finally:
        dist["version"] = saved
    assert changed.hash != job.hash and changed.dir == job.dir


def test_core_fingerprint_covers_the_data_path_not_the_presentation():
    """Editing the CLI, the leaderboard or the sweep driver must not re-run a sweep; the loop, the quantizer and the
    method plugins are fingerprinted."""
    from zsqbench import provenance
    names = {name for name, _ in provenance.module_source_files("zsqbench")}
    assert {"zsqbench/loop.py", "zsqbench/quantizer/fakequant.py", "zsqbench/evaluation/evaluate.py",
            "zsqbench/synthesizer/generator.py", "zsqbench/distiller/kd.py"} <= names
    assert not names & {"zsqbench/cli.py", "zsqbench/sweep.py", "zsqbench/leaderboard/show.py",
                        "zsqbench/record/io.py"}
    assert "zsqbench_plugins/gdfq.py" in {name for name, _ in provenance.module_source_files("zsqbench_plugins")}


def test_builtin_method_fingerprint_covers_its_own_plugin_modules_only(tmp_path):
    """A run of bag is fingerprinted by the core, plugins/bag.py and the gdfq module it imports — not by other
    built-in methods, so adding or fixing one method (qimera, synq, ...) leaves every other method's sweep jobs
    done. Editing a module the run uses changes its fingerprint."""
    from zsqbench import provenance
    assert provenance.with_sibling_imports(["zsqbench_plugins.bag"]) == ["zsqbench_plugins.bag",
                                                                         "zsqbench_plugins.gdfq"]
    reg = get_registry()
    assert reg._lookup("methods", "bag").module == "zsqbench_plugins.bag"
    assert reg._lookup("distillers", "kd").module == "zsqbench.builtin"
    core = provenance.source_digest(("zsqbench",))
    bag = provenance.fingerprint(reg, "zsqbench", ("zsqbench_plugins.bag",))
    with_other = provenance.fingerprint(reg, "zsqbench", ("zsqbench_plugins.bag", "zsqbench.builtin"))
    assert bag == with_other  # core modules are always in; naming one changes nothing
    assert bag["files"] == core[1] + 2 and bag["sha256"] != core[0]
    hast = provenance.fingerprint(reg, "zsqbench", ("zsqbench_plugins.hast",))
    assert hast["sha256"] != bag["sha256"] and hast["files"] == core[1] + 1
    from zsqbench.sweep import expand
    jobs = {j.identity["method"]: j for j in expand("smoke", methods=("gdfq", "bag"), models=("resnet20@fmnist",),
                                                   out=tmp_path, registry=reg)}
    assert jobs["gdfq"].identity["code"]["zsqbench"]["files"] == core[1] + 1
    assert jobs["bag"].identity["code"]["zsqbench"] == bag
