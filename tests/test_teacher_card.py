"""Teacher cards: a checkpoint trained with another input normalisation evaluates at its own accuracy once the
normalisation is declared, and the record says which one was used.

The checkpoint is made for real from the embedded ResNet-20: the normalisation (mean 0.2190, std 0.3318 over the
padded 32x32 image, the issue's example) is folded into the first conv and its BN — x_old = a * x_new + c with
a = 0.3318 / 0.3530 and c = (0.2190 - 0.2860) / 0.3530, so conv(W, x_old) = conv(a W, x_new) + c sum(W): scale the
kernel, move c sum(W) into the BN running mean. The network then computes the embedded teacher's function on
inputs normalised the new way (exactly except on the outermost output pixels, where the conv's zero padding sits
in the other space — the padded Fashion-MNIST border). No accuracy is hard-coded: both runs are compared with the
embedded teacher's own run.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from zsqbench.evaluation import data as eval_data
from zsqbench.frontends.cli import cli as zsqbench
from zsqbench.spine.registry import get_registry
from zsqbench.teacher.zoo import load_teacher

EMBEDDED = {"mean": 0.2860, "std": 0.3530}
OTHER = {"mean": 0.2190, "std": 0.3318}


@pytest.fixture(autouse=True)
def _system_data(monkeypatch):
    monkeypatch.delenv(eval_data.ENV_DATA_ROOT, raising=False)


def refolded_checkpoint(path) -> None:
    spec = get_registry().get("models", "resnet20@fmnist")
    net, _ = load_teacher(spec)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    scale = OTHER["std"] / EMBEDDED["std"]
    shift = (OTHER["mean"] - EMBEDDED["mean"]) / EMBEDDED["std"]
    kernel = state["features.init_block.conv.weight"]
    state["features.init_block.bn.running_mean"] -= shift * kernel.sum(dim=(1, 2, 3))
    state["features.init_block.conv.weight"] = kernel * scale
    torch.save(state, path)


def fp_run(out, *args) -> dict:
    result = CliRunner().invoke(zsqbench, ["run", "--method", "fp", "--model", "resnet20", "--bits", "4",
                                           "--protocol", "smoke", "-q", "--out", str(out), *map(str, args)])
    assert result.exit_code == 0, result.output
    (path,) = out.glob("*.json")
    return json.loads(path.read_text()), result.stdout


def test_checkpoint_with_another_normalisation_evaluates_at_its_own_accuracy_once_declared(tmp_path):
    torch.set_num_threads(1)
    weights = tmp_path / "resnet20_other_norm.pt"
    refolded_checkpoint(weights)

    embedded, _ = fp_run(tmp_path / "embedded")
    assert embedded["teacher"]["preprocessing"] == {"mean": [EMBEDDED["mean"]], "std": [EMBEDDED["std"]],
                                                    "fit": "pad", "source": "manifest"}
    undeclared, _ = fp_run(tmp_path / "undeclared", "--weights", weights)
    assert undeclared["teacher"]["preprocessing"]["source"].startswith("dataset default")

    card = tmp_path / "resnet20_other_norm.pt.card.json"  # beside the weights: found without an option
    card.write_text(json.dumps({"mean": [OTHER["mean"]], "std": [OTHER["std"]], "fit": "pad"}))
    declared, summary = fp_run(tmp_path / "declared", "--weights", weights)
    prep = declared["teacher"]["preprocessing"]
    assert prep == {"mean": [OTHER["mean"]], "std": [OTHER["std"]], "fit": "pad", "source": str(card)}
    assert "mean [0.219], std [0.3318]" in summary  # the run summary shows it

    # fed its own normalisation it is the embedded teacher again (up to the padded border); fed the dataset's
    # standard one it is a worse classifier
    assert abs(declared["fp_top1"] - embedded["fp_top1"]) <= 0.3, (declared["fp_top1"], embedded["fp_top1"])
    assert undeclared["fp_top1"] < declared["fp_top1"] - 0.5, (undeclared["fp_top1"], declared["fp_top1"])
    # the normalisation is part of what a run is: another card, another configuration hash
    assert declared["config_hash"] != undeclared["config_hash"]

    # --teacher-card names a card anywhere, and wins over the one beside the weights
    elsewhere = tmp_path / "card.json"
    elsewhere.write_text(json.dumps({"mean": [EMBEDDED["mean"]], "std": [EMBEDDED["std"]]}))
    explicit, _ = fp_run(tmp_path / "explicit", "--weights", weights, "--teacher-card", elsewhere)
    assert explicit["teacher"]["preprocessing"]["source"] == str(elsewhere)
    assert explicit["fp_top1"] == undeclared["fp_top1"]


def test_resize_fit_reaches_the_network_size(tmp_path):
    """fit=resize: Fashion-MNIST resized (bilinear) instead of zero-padded to 32x32 — a different input."""
    from zsqbench.evaluation.data import load_fmnist
    pad, _ = load_fmnist("test", card={"mean": [0.5], "std": [0.5], "fit": "pad"})
    resized, _ = load_fmnist("test", card={"mean": [0.5], "std": [0.5], "fit": "resize"})
    assert pad.shape == resized.shape == (10000, 1, 32, 32)
    assert torch.all(pad[:, :, :2, :] == -1.0)  # zero pixels, normalised
    assert not torch.equal(pad, resized)
