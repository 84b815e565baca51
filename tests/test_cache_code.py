"""Issue #28, part 1: a synthetic set is keyed by everything that made it, the synthesizer's code included. A
plugin's ``synthesis_loss`` edited in place (no version bump) is a cache miss and gives new images."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zsqbench.testing import run_cli

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "zsqbench-edited"
version = "0.1.0"

[project.entry-points.zsqbench]
edited = "zsqbench_edited"

[tool.setuptools]
packages = ["zsqbench_edited"]
"""

CODE = '''\
from zsqbench.api import ImageSetSynthesizer, Method, hookimpl

PRIOR_WEIGHT = 0.0


class EditedSet(ImageSetSynthesizer):
    name = "edited-set"
    description = "BNS + a prior whose weight the test edits in place"

    def synthesis_loss(self, ctx, state, images, logits, labels, bns, features):
        prior = images.pow(2).mean()
        return bns + PRIOR_WEIGHT * prior, {"bns": bns.item(), "prior": prior.item()}


@hookimpl
def zsqbench_register(registry):
    registry.add_synthesizer(EditedSet)
    registry.add_method(Method("edited", synthesizer="edited-set", distiller="kd", settings={"*": {
        "synthesizer": {"num_images": 8, "synthesis_batch_size": 8, "iterations": 3, "plateau_patience": 1}}}))
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "zsqbench_edited").mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "zsqbench_edited" / "__init__.py").write_text(CODE)
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", "--target", str(target), str(src)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def synth(site: Path, cache: Path) -> tuple[str, Path]:
    proc = run_cli("synth", "--method", "edited", "--model", "resnet20", "--protocol", "smoke", "--device", "cpu",
                   "--cache-dir", cache, "--quiet",
                   env={"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("set:"))
    return ("hit" if "found in the cache" in proc.stdout else "miss"), Path(line.split(":", 1)[1].strip())


def test_a_synthesizer_edited_in_place_misses_the_cache_and_makes_new_images(site, tmp_path):
    cache = tmp_path / "cache"
    how, first = synth(site, cache)
    assert how == "miss"
    assert synth(site, cache) == ("hit", first)  # unchanged code: the cached set
    module = site / "zsqbench_edited" / "__init__.py"
    module.write_text(module.read_text().replace("PRIOR_WEIGHT = 0.0", "PRIOR_WEIGHT = 5.0"))  # no version bump
    how, second = synth(site, cache)
    assert how == "miss" and second != first and first.exists()
    old = torch.load(first, weights_only=True)
    new = torch.load(second, weights_only=True)
    assert not torch.equal(old["images"], new["images"])  # the new code's images, not the old set
    assert old["key"] != new["key"] and '"code"' in new["key"]
    assert synth(site, cache) == ("hit", second)


def test_cache_key_fields_name_the_code_the_teacher_card_and_the_seed():
    from zsqbench.spine.provenance import component_code
    from zsqbench.spine.registry import get_registry
    from zsqbench.testing import smoke_context
    registry = get_registry()
    ctx = smoke_context()
    cls = registry.get("synthesizers", "intraq")
    fields = cls().cache_key_fields(ctx)
    assert fields["code"] == component_code(cls) and set(fields["code"]) == {"zsqbench"}
    assert fields["teacher_card"] == {k: ctx.teacher_card[k] for k in ("mean", "std", "fit")}
    assert fields["teacher_sha256"] == ctx.teacher_hash and fields["seed"] == 0 and fields["device"] == "cpu"
    # one built-in plugin's code is not another's: editing gdfq does not throw away intraq's sets
    assert component_code(registry.get("synthesizers", "hast")) != fields["code"]

    class Subclass(cls):  # not registered under its name: keyed by the source of its bases' packages too
        pass
    code = component_code(Subclass)
    assert code["zsqbench"] == fields["code"]["zsqbench"]  # the core with intraq's module, from its base class
    assert [k for k in code if k != "zsqbench"] == [f"modules {__name__.split('.')[0]}"]
