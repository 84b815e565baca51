"""Typed settings (zsqbench.spine.settings) and code fingerprints (zsqbench.spine.provenance)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zsqbench.frontends.cli import cli as zsqbench
from zsqbench.spine.errors import UserError
from zsqbench.spine.interfaces import Synthesizer
from zsqbench.spine.loop import RunSpec, resolve
from zsqbench.spine.registry import get_registry


def test_every_builtin_method_has_valid_settings_under_every_protocol():
    """resolve validates the merged configuration: every shipped settings file passes for every teacher of every
    shipped protocol (not the protocol files other tests register in this process)."""
    reg = get_registry()
    shipped = {p.stem for p in (Path(__file__).resolve().parents[1] / "zsqbench" / "protocols").glob("*.json")}
    assert {"cpu", "smoke", "paper"} <= shipped
    checked = 0
    for pname, entry in reg.protocols.items():
        if pname not in shipped:
            continue
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

    plain = Plain(low=2, steps=4, on=False, anything="x")
    assert plain.config["low"] == 2 and plain.settings.low == 2 and plain.settings.steps == 4  # dict view, typed
    with pytest.raises(TypeError):
        plain.config["low"] = 3  # read-only: the settings were checked once, nothing may change them after
    with pytest.raises(UserError, match=r'synthesizer.low="a"'):
        Plain(low="a")
    with pytest.raises(UserError, match="synthesizer.on=1"):
        Plain(on=1)
    with pytest.raises(UserError, match="synthesizer.nope is not a setting"):
        Plain(nope=1)


def test_source_digest_follows_the_code(tmp_path, monkeypatch):
    """An edited source file is another code version, whatever the version string says."""
    from zsqbench.spine import provenance
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
    from zsqbench.frontends.sweep import expand
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


def test_core_fingerprint_covers_what_the_run_imports_not_the_front_ends():
    """Editing the CLI, the leaderboard, the sweep driver or zsqbench.testing must not re-run a sweep: the run never
    imports them. The loop, the quantizer, the evaluation and the method's plugin modules are fingerprinted."""
    from zsqbench.spine import provenance
    names = {name for name, _ in provenance.imported_files((provenance.ENGINE, "zsqbench.builtin",
                                                             "zsqbench_plugins.gdfq"))}
    assert {"zsqbench/spine/loop.py", "zsqbench/quantizer/fakequant.py", "zsqbench/evaluation/evaluate.py",
            "zsqbench/synthesizer/generator.py", "zsqbench/distiller/kd.py", "zsqbench_plugins/gdfq.py"} <= names
    assert not names & {"zsqbench/frontends/cli.py", "zsqbench/frontends/sweep.py", "zsqbench/frontends/sweep_ray.py",
                        "zsqbench/frontends/listing.py", "zsqbench/testing.py", "zsqbench/leaderboard/show.py",
                        "zsqbench/frontends/validate.py", "zsqbench_plugins/hast.py"}


def test_builtin_method_fingerprint_covers_its_own_plugin_modules_only(tmp_path):
    """A run of bag is fingerprinted by the core, plugins/bag.py and the gdfq module it imports — not by other
    built-in methods, so adding or fixing one method (qimera, synq, ...) leaves every other method's sweep jobs
    done. Editing a module the run uses changes its fingerprint."""
    from zsqbench.spine import provenance
    reg = get_registry()
    assert reg._lookup("methods", "bag").module == "zsqbench_plugins.bag"
    assert reg._lookup("distillers", "kd").module == "zsqbench.builtin"
    def files(*plugins):
        return {name for name, _ in provenance.imported_files((provenance.ENGINE, "zsqbench.builtin", *plugins))}
    plugin_files = {"zsqbench_plugins/__init__.py", "zsqbench_plugins/bag.py", "zsqbench_plugins/gdfq.py"}
    assert {n for n in files("zsqbench_plugins.bag") if n.startswith("zsqbench_plugins/")} == plugin_files
    assert files("zsqbench_plugins.hast") - files("zsqbench_plugins.bag") == {"zsqbench_plugins/hast.py"}
    bag = provenance.fingerprint(reg, "zsqbench", ("zsqbench.builtin", "zsqbench_plugins.bag"))
    hast = provenance.fingerprint(reg, "zsqbench", ("zsqbench.builtin", "zsqbench_plugins.hast"))
    assert bag["files"] == len(files("zsqbench_plugins.bag")) and hast["sha256"] != bag["sha256"]
    from zsqbench.frontends.sweep import expand
    jobs = {j.identity["method"]: j for j in expand("smoke", methods=("gdfq", "bag"), models=("resnet20@fmnist",),
                                                   out=tmp_path, registry=reg)}
    assert jobs["gdfq"].identity["code"]["zsqbench"]["files"] == bag["files"] - 1
    assert jobs["bag"].identity["code"]["zsqbench"] == bag


def _code_version_after(edits: dict[str, tuple[str, str]], root, monkeypatch) -> str:
    """The code version a smoke gdfq run's record would carry if zsqbench's own sources were a copy under ``root``
    with ``edits`` ({relative file: (old, new)}) applied."""
    from zsqbench.spine import provenance
    files = {}
    for top in provenance.OWN_PACKAGES:
        files[top] = []
        for name, path in provenance.module_source_files(top):
            text = path.read_text()
            old, new = edits.get(name, ("", ""))
            assert old in text
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text.replace(old, new, 1))
            files[top].append((name, root / name))
    monkeypatch.setattr(provenance, "module_source_files", lambda module: tuple(files.get(module, ())))
    provenance.imported_files.cache_clear()
    try:
        return provenance.code_version(provenance.run_code(resolve(RunSpec("gdfq", "resnet20", 3, 3, "smoke"))))
    finally:
        provenance.imported_files.cache_clear()


def test_code_version_ignores_docstrings_and_comments_not_expressions(tmp_path, monkeypatch):
    """A docstring or comment edit in the loop or a plugin is the same code version (a grid is not re-run for
    prose); an edited expression is another."""
    loop, plugin = "zsqbench/spine/loop.py", "zsqbench_plugins/gdfq.py"
    version = {what: _code_version_after(edits, tmp_path / what, monkeypatch) for what, edits in {
        "as is": {},
        "prose": {loop: ('"""The one training loop', '# why: a comment\n"""The one and only training loop'),
                  plugin: ("Settings per protocol are in", "The settings per protocol are in")},
        "loop code": {loop: ('round(evaluator.top1(student), 4)', 'round(evaluator.top1(student), 3)')},
        "plugin code": {plugin: ("from pathlib import Path", "from pathlib import Path\nX = 1")},
    }.items()}
    assert version["prose"] == version["as is"]
    assert len({version["as is"], version["loop code"], version["plugin code"]}) == 3


def test_plugin_settings_files_hold_only_what_differs():
    """One source of truth per value: a built-in method's settings for a protocol give no train/eval value equal to
    the protocol's and no component value equal to the component's default (a dataset entry: none equal to what it
    is merged over). Otherwise changing a default or a protocol would leave stale copies behind."""
    import json
    from zsqbench.protocols import deep_merge
    reg = get_registry()
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731  (20 != 20.0)

    def restated(entry, base, where):
        return [f"{where}: {section}.{key}" for section, values in entry.items() if section in base
                for key, value in values.items() if key in base[section] and same(value, base[section][key])]

    found = []
    for name, entry in reg.methods.items():
        method = entry.obj
        if entry.distribution != "zsqbench" or not isinstance(method.settings, str):
            continue
        for pname, proto in reg.protocols.items():
            own = method.settings_for(pname)
            if own is None:
                continue
            base = {"train": proto.obj["train"], "eval": proto.obj["eval"],
                    **{kind: reg.get(kind + "s", getattr(method, kind)).defaults
                       for kind in ("synthesizer", "distiller", "quantizer")}}
            found += restated(own, base, f"{name} {pname}")
            raw = json.loads(Path(method.settings).read_text())
            raw = raw["methods"][name] if "methods" in raw else raw
            for dataset, over in (raw.get(pname) or {}).get("datasets", {}).items():
                found += restated(over, deep_merge(base, own), f"{name} {pname} {dataset}")
    assert not found, "settings that restate a default or the protocol: " + ", ".join(found)
