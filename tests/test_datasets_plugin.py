"""Datasets are plugins: a real out-of-tree package (tests/plugin_fmnist4) registers a new dataset built from the real
Fashion-MNIST files and a teacher of its own, trained here on that dataset's real train split; ``zsqbench run`` scores
it end to end. A model whose dataset no plugin registers is one line, exit 2."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from test_plugins import assert_not_in_venv, stderr_lines, tables, with_path

PLUGIN_SRC = Path(__file__).parent / "plugin_fmnist4"
REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
DIST, VERSION = "zsqbench-fmnist4", "0.1.0"
PROVIDER = f"{DIST} {VERSION}"

pytestmark = pytest.mark.skipif(not (REAL_FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                reason="Fashion-MNIST is not installed at /usr/share/datasets/fashion-mnist")


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train_teacher(src: Path) -> float:
    """Train the plugin's TinyCNN on fmnist4's real train split (a few hundred steps); save its state_dict where the
    package ships it; return its top-1 on the real test split."""
    data = _module(src / "zsqbench_fmnist4" / "data.py", "_fmnist4_data_src")
    teacher = _module(src / "zsqbench_fmnist4" / "teacher.py", "_fmnist4_teacher_src")
    info, loader = data.INFO, data.FourClasses()

    def prepared(split):
        x, y = loader.load(split, str(REAL_FMNIST), None)
        return (x.float() / 255 - info.mean[0]) / info.std[0], y

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        xtr, ytr = prepared("train")
        net = teacher.TinyCNN(info.num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        net.train()
        for _ in range(250):
            idx = torch.randint(0, len(xtr), (64,))
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():  # BN running statistics of the final weights (Adam moves them faster than the EMA)
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None  # a plain average over the passes below
            for i in range(0, 5120, 512):
                net(xtr[i:i + 512])
        net.eval()
        xte, yte = prepared("test")
        with torch.no_grad():
            top1 = 100.0 * (net(xte).argmax(1) == yte).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    torch.save(net.state_dict(), teacher.WEIGHTS)
    return top1


@pytest.fixture(scope="module")
def fmnist4(tmp_path_factory):
    """(site dir with the plugin pip-installed into it, the trained teacher's own test top-1)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("setuptools is missing from the venv: `pip install --no-build-isolation` cannot build the "
                    "test plugin package without it")
    tmp = tmp_path_factory.mktemp("fmnist4")
    src = tmp / "src"
    shutil.copytree(PLUGIN_SRC, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", "*.pt"))
    top1 = _train_teacher(src)
    site = tmp / "site"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--no-cache-dir", "--target", str(site), str(src)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (site / "zsqbench_fmnist4" / "tinycnn.pt").is_file(), "the weights were not installed as package data"
    return site, top1


@pytest.mark.slow
def test_plugin_dataset_and_teacher_run_end_to_end(cli, fmnist4, tmp_path):
    site, teacher_top1 = fmnist4
    assert teacher_top1 > 93, teacher_top1  # a real teacher: four classes, chance is 25 %
    env = {**with_path(site), "ZSQBENCH_DATA_ROOT": ""}

    proc = cli("list", env=env)
    assert proc.returncode == 0, proc.stderr
    assert stderr_lines(proc) == []
    t = tables(proc.stdout)
    assert t["datasets"]["fmnist4"][1] == PROVIDER
    assert "1x28x28, 4 classes" in t["datasets"]["fmnist4"][2]
    assert t["models"]["tinycnn@fmnist4"][1] == PROVIDER
    assert {"fmnist", "cifar10", "cifar100", "imagenet"} <= set(t["datasets"])  # the built-ins are still there
    assert t["plugins"]["fmnist4-data"][1:] == [DIST, VERSION, "loaded"]
    assert set(tables(cli("list", "datasets", env=env).stdout)) == {"datasets"}

    out = tmp_path / "res"
    proc = cli("run", "--method", "noise", "--model", "tinycnn@fmnist4", "--bits", "4", "--protocol", "smoke",
               "--out", out, "-q", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = list(out.iterdir())
    assert len(files) == 1 and files[0].suffix == ".json", files
    assert cli("validate", files[0]).returncode == 0

    rec = json.loads(files[0].read_text())
    assert rec["status"] == "ok"
    assert rec["model"] == "tinycnn" and rec["dataset"] == "fmnist4"
    assert rec["teacher"]["source"] == "plugin" and rec["teacher"]["path"].startswith(str(site))
    assert rec["teacher"]["preprocessing"]["mean"] == [0.2674] and rec["teacher"]["preprocessing"]["fit"] is None
    # the FP teacher on the first 1000 real fmnist4 test images (smoke's limit) matches what it scored here
    assert abs(rec["fp_top1"] - teacher_top1) < 5, (rec["fp_top1"], teacher_top1)
    assert rec["final_top1"] > 50, rec["final_top1"]  # W4A4, noise-calibrated: far above the 25 % of chance
    assert PROVIDER.split()[0] in rec["code"]  # the dataset's and teacher's code is fingerprinted
    assert {"entry_point": "fmnist4-data", "distribution": DIST, "version": VERSION,
            "status": "loaded"} in rec["plugins"]
    assert_not_in_venv(DIST, "zsqbench_fmnist4")


@pytest.mark.slow
def test_model_on_an_unregistered_dataset_is_one_line(cli, fmnist4, tmp_path):
    site, _ = fmnist4
    env = {**with_path(site), "ZSQBENCH_DISABLE_PLUGINS": "fmnist4-data"}  # the teacher's dataset is gone
    out = tmp_path / "res"
    proc = cli("run", "--method", "noise", "--model", "tinycnn@fmnist4", "--bits", "4", "--protocol", "smoke",
               "--out", out, "-q", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = stderr_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "model tinycnn@fmnist4 is on dataset 'fmnist4', which no loaded plugin registers" in lines[0]
    assert "registered datasets: cifar10, cifar100, fmnist, imagenet" in lines[0]
    assert not out.exists()


def test_dataset_helpers_and_unknown_dataset_in_process():
    from zsqbench.evaluation.data import load_eval_set
    from zsqbench.spine.errors import UserError
    from zsqbench.spine.registry import Registry
    from zsqbench.teacher.datasets import DatasetInfo
    with pytest.raises(UserError) as e:
        load_eval_set("svhn")
    assert "'svhn'" in str(e.value) and "fmnist" in str(e.value) and "\n" not in str(e.value)
    # a loader missing its interface is refused at registration (the plugin is then reported and skipped)
    with pytest.raises(TypeError, match="no load.*how_to_get"):
        Registry().add_dataset(DatasetInfo("x", 2, (1, 8, 8), (0.5,), (0.5,)), type("L", (), {"splits": ("test",)}))
    with pytest.raises(ValueError, match="mean/std have C values"):
        DatasetInfo("x", 2, (3, 8, 8), (0.5,), (0.5,))
