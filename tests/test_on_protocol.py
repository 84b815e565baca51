"""Issue #28, part 2: on-protocol means on-protocol. One rule for every axis — a teacher, bit-width, seed, setting or
component outside the protocol makes a ``run`` record off-protocol (its reasons in ``off_protocol``; no leaderboard
takes it), and ``sweep``, which makes only the protocol's grid, refuses it in one line."""
from __future__ import annotations

import json

import pytest

from zsqbench.frontends.sweep import expand
from zsqbench.spine.errors import UserError
from zsqbench.spine.loop import RunSpec, resolve
from zsqbench.testing import assert_one_line_error, run_cli, run_method

AXES = {  # axis: (RunSpec fields, sweep arguments or None, the reason's words)
    "seed": (dict(seed=7), dict(seeds=["0,7"]), "seed 7 is not in protocol smoke's seeds (0)"),
    "model": (dict(model="resnet20@cifar10"), dict(models=["resnet20@cifar10"]),
              "model resnet20@cifar10 is not in protocol smoke"),
    "bits": (dict(wbits=3, abits=3), dict(bits=["3"]), "W3A3 is not in protocol smoke for resnet20@fmnist"),
    "setting": (dict(overrides=["train.steps=2"]), None, "overrides: train.steps=2"),
    "component": (dict(distiller="kd-ca"), None, "distiller kd-ca instead of kd"),
}


@pytest.mark.parametrize("axis", list(AXES))
def test_each_axis_outside_the_protocol_is_off_protocol_in_a_run(axis):
    fields, _, reason = AXES[axis]
    spec = RunSpec(**{**dict(method="gdfq", model="resnet20@fmnist", wbits=4, abits=4, protocol="smoke"), **fields})
    assert list(resolve(spec).off_protocol) == [reason]
    assert resolve(RunSpec(method="gdfq", model="resnet20@fmnist", wbits=4, abits=4, protocol="smoke")
                   ).off_protocol == ()


@pytest.mark.parametrize("axis", [a for a, (_, sweep, _) in AXES.items() if sweep])
def test_each_grid_axis_outside_the_protocol_is_refused_by_a_sweep(axis, tmp_path):
    _, sweep, reason = AXES[axis]
    with pytest.raises(UserError, match="would be off protocol smoke") as e:
        expand("smoke", ["gdfq"], **{"models": ["resnet20@fmnist"], **sweep}, out=tmp_path)
    assert reason in str(e.value)


def test_sweep_with_a_seed_outside_the_protocol_is_one_line(tmp_path):
    assert_one_line_error("sweep", "-p", "smoke", "--methods", "noise", "--seeds", "0,1", "--dry-run",
                          "--out", tmp_path / "sweep", contains=["seed 1 is not in protocol smoke's seeds (0)",
                                                                 "a sweep runs only the protocol's grid"])
    # the protocol's own seeds (and --set, an explicit off-protocol sweep) are fine
    assert run_cli("sweep", "-p", "smoke", "--methods", "noise", "--seeds", "0", "--dry-run",
                   "--out", tmp_path / "sweep").returncode == 0


def test_a_run_with_a_seed_outside_the_protocol_never_enters_a_leaderboard(tmp_path):
    record = run_method("noise", out_dir=tmp_path / "runs", seed=7, cache_dir=tmp_path / "cache")
    assert record["off_protocol"] == ["seed 7 is not in protocol smoke's seeds (0)"]
    (path,) = (tmp_path / "runs").glob("*.json")
    assert json.loads(path.read_text())["off_protocol"] == record["off_protocol"]
    assert_one_line_error("leaderboard", "build", "--protocol", "smoke", tmp_path / "runs",
                          "-o", tmp_path / "board.json", contains=["off-protocol record"])
    assert not (tmp_path / "board.json").exists()
