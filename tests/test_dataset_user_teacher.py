"""Issue #28, part 5: a dataset plugin is usable without a zoo teacher trained on it — a user's own checkpoint of a
zoo architecture (``--weights``, with a card) built for the dataset's channels and classes — and a dataset declares
how its small images reach the network by default (``DatasetInfo.default_fit``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zsqbench.spine.errors import UserError
from zsqbench.teacher.datasets import DatasetInfo
from zsqbench.teacher.zoo import user_model
from zsqbench.testing import assert_one_line_error, run_cli

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "zsqbench-fmnist5"
version = "0.1.0"

[project.entry-points.zsqbench]
fmnist5 = "zsqbench_fmnist5"

[tool.setuptools]
packages = ["zsqbench_fmnist5"]
"""

# a dataset plugin and nothing else: Fashion-MNIST's first five classes, 28x28 stored, resized by default
CODE = '''\
import torch

from zsqbench.api import DatasetInfo, find_files, hookimpl, read_idx

INFO = DatasetInfo("fmnist5", 5, (1, 32, 32), (0.2860,), (0.3530,), "Fashion-MNIST classes 0-4",
                   stored_size=(28, 28), default_fit="resize")


class FiveClasses:
    splits = ("test",)
    how_to_get = "apt install dataset-fashion-mnist"

    def load(self, split, data_root, card):
        images, labels = find_files(data_root, ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"],
                                    system=["/usr/share/datasets/fashion-mnist"])
        x, y = torch.from_numpy(read_idx(images)).unsqueeze(1), torch.from_numpy(read_idx(labels)).long()
        keep = y < 5
        return x[keep], y[keep]


@hookimpl
def zsqbench_register(registry):
    registry.add_dataset(INFO, FiveClasses)
'''

pytestmark = pytest.mark.skipif(not (REAL_FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST is not installed at /usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    (src / "zsqbench_fmnist5").mkdir()
    (src / "pyproject.toml").write_text(PYPROJECT)
    (src / "zsqbench_fmnist5" / "__init__.py").write_text(CODE)
    target = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", "--target", str(target), str(src)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """The user's teacher: the embedded Fashion-MNIST ResNet-20 with its output cut to classes 0-4."""
    from zsqbench.spine.registry import get_registry
    from zsqbench.teacher.zoo import load_teacher
    net, _ = load_teacher(get_registry().get("models", "resnet20@fmnist"))
    state = net.state_dict()
    state["output.weight"], state["output.bias"] = state["output.weight"][:5], state["output.bias"][:5]
    path = tmp_path_factory.mktemp("weights") / "resnet20-fmnist5.pt"
    torch.save(state, path)
    return path


def _run(site, out, *args):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "ZSQBENCH_DATA_ROOT": ""}
    proc = run_cli("run", "--method", "noise", "--model", "resnet20@fmnist5", "--bits", "4", "--protocol", "smoke",
                   "--device", "cpu", "--set", "eval.limit=300", "--out", out, "-q", *args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = Path(out).glob("*.json")
    return json.loads(path.read_text()), env


def test_a_users_teacher_on_a_plugin_dataset_runs_with_the_datasets_default_fit_or_its_card(site, weights, tmp_path):
    rec, env = _run(site, tmp_path / "default", "--weights", weights)
    assert rec["status"] == "ok" and rec["model"] == "resnet20" and rec["dataset"] == "fmnist5"
    assert rec["teacher"]["source"] == "user" and rec["teacher"]["path"] == str(weights)
    assert rec["teacher"]["preprocessing"]["fit"] == "resize"  # the dataset's declared default
    assert rec["off_protocol"] == ["overrides: eval.limit=300", "model resnet20@fmnist5 is not in protocol smoke"]
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"mean": [0.2860], "std": [0.3530], "fit": "pad"}))  # how this teacher was trained
    padded, _ = _run(site, tmp_path / "card", "--weights", weights, "--teacher-card", card)
    assert padded["teacher"]["preprocessing"]["fit"] == "pad"
    assert padded["fp_top1"] > 85, padded["fp_top1"]  # a real teacher on five classes (chance: 20 %)
    assert padded["fp_top1"] != rec["fp_top1"]  # the fit changed what the teacher saw
    # without --weights: one line that says how
    assert_one_line_error("run", "--method", "noise", "--model", "resnet20@fmnist5", "--bits", "4", "--protocol",
                          "smoke", "--out", tmp_path / "none", env=env,
                          contains=["unknown model 'resnet20@fmnist5'", "--weights PATH", "--teacher-card"])


def test_user_model_fits_the_dataset_or_is_one_line():
    info = DatasetInfo("rgb7", 7, (3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    net = user_model("resnet20", info).build()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert user_model("mobilenetv1", info).build()(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(UserError, match="takes 32x32 images, but small images are 28x28"):
        user_model("resnet20", DatasetInfo("small", 2, (1, 28, 28), (0.5,), (0.5,)))
    with pytest.raises(UserError, match="not a zoo architecture"):
        user_model("vgg99", info)


def test_default_fit_is_pad_or_resize_and_only_for_small_images():
    assert DatasetInfo("a", 2, (1, 32, 32), (0.5,), (0.5,), stored_size=(28, 28), default_fit="resize")
    with pytest.raises(ValueError, match="default_fit"):
        DatasetInfo("b", 2, (1, 32, 32), (0.5,), (0.5,), default_fit="pad")  # no stored_size
    with pytest.raises(ValueError, match="default_fit"):
        DatasetInfo("c", 2, (1, 32, 32), (0.5,), (0.5,), stored_size=(28, 28), default_fit="crop")
