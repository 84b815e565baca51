"""The `paper` protocol: it loads and is listed, every method has `paper` settings for each of its datasets, and a
`paper` run that this machine cannot do (no CUDA, no CIFAR/ImageNet data) stops with one line, a non-zero exit and
no record."""
from __future__ import annotations

import pytest
import torch

from zsqbench.protocols import ALLOW_CPU_ENV, check_protocol_requirements
from zsqbench.spine.errors import UserError
from zsqbench.spine.loop import RunSpec, resolve
from zsqbench.spine.registry import get_registry

REFERENCES = {"fp", "noise"}  # plugins/references.py: the floor and the ceiling, no paper recipe to follow
MISSING_PAPER: dict[str, str] = {}  # method -> why its settings test is expected to fail (report, then fix it)


@pytest.fixture(scope="module")
def paper():
    return get_registry().get("protocols", "paper")


def test_paper_protocol_loads(paper):
    assert paper["version"] >= 1 and len(paper["hash"]) == 64
    assert paper["models"] == ["resnet20@cifar10", "resnet20@cifar100", "resnet18@imagenet", "mobilenetv1@imagenet",
                               "mobilenetv2@imagenet"]
    models = get_registry().models
    assert all(m in models and models[m].obj.pytorchcv_name for m in paper["models"])  # pretrained paper teachers
    assert paper["bits"] == [[3, 3], [4, 4], [5, 5]] and paper["seeds"] == [0, 1, 2]
    assert paper["requires"]["device"] == "cuda" and paper["requires"]["data"] is True


def test_paper_schedule_is_gdfq_cifar(paper):
    """GDFQ's CIFAR hocon: 400 epochs x 200 iterations, 4 warm-up epochs, lr 1e-4 x0.1 at epochs 100/200/300;
    evaluated on the full test set once per epoch."""
    train, ev = paper["train"], paper["eval"]
    iters, epochs, warm = 200, 400, 4
    assert (train["steps"], train["warmup_steps"]) == ((epochs - warm) * iters, warm * iters)
    assert train["milestones"] == pytest.approx([(e - warm) / (epochs - warm) for e in (100, 200, 300)], abs=1e-4)
    assert (train["lr"], train["gamma"], train["batch_size"]) == (1e-4, 0.1, 200)
    assert ev["every"] == iters and ev["limit"] is None
    assert train["steps"] % ev["every"] == 0  # the last evaluation is the final epoch's


def test_paper_protocol_is_listed(cli):
    res = cli("list", "protocols")
    assert res.returncode == 0, res.stderr
    assert "paper" in res.stdout


def _method_dataset_params():
    registry = get_registry()
    datasets = sorted({m.split("@")[1] for m in registry.protocols["paper"].obj["models"]})
    params = []
    for name in sorted(set(registry.methods) - REFERENCES):
        marks = [pytest.mark.xfail(reason=MISSING_PAPER[name], strict=False)] if name in MISSING_PAPER else []
        for ds in datasets:
            params.append(pytest.param(name, ds, marks=marks, id=f"{name}-{ds}"))
    return params


@pytest.mark.parametrize("method, dataset", _method_dataset_params())
def test_every_method_has_paper_settings(paper, method, dataset):
    registry = get_registry()
    settings = registry.get("methods", method).settings_for("paper", dataset)
    assert settings is not None, f"{method} has no settings for protocol 'paper'"
    model = next(m for m in paper["models"] if m.endswith("@" + dataset))
    resolved = resolve(RunSpec(method=method, model=model, wbits=4, abits=4, protocol="paper"), registry)
    assert resolved.off_protocol == ()  # builds every component from the paper settings, on protocol


# --- what this machine cannot do ----------------------------------------------------------------------------

def test_requirements_check(paper, monkeypatch):
    monkeypatch.delenv(ALLOW_CPU_ENV, raising=False)
    with pytest.raises(UserError) as ei:
        check_protocol_requirements(paper, torch.device("cpu"))
    msg = str(ei.value)
    assert "\n" not in msg and "needs a CUDA GPU" in msg and "--device cuda" in msg and ALLOW_CPU_ENV in msg
    check_protocol_requirements(paper, torch.device("cuda"))
    check_protocol_requirements(paper, "cuda:1")
    check_protocol_requirements(paper, "cpu", off_protocol=True)  # a deliberate (--set) try
    check_protocol_requirements(get_registry().get("protocols", "cpu"), "cpu")
    monkeypatch.setenv(ALLOW_CPU_ENV, "1")
    check_protocol_requirements(paper, "cpu")


RUNS = {
    # whichever is checked first (the device, or the missing data) must be one line
    "cifar100-cpu": (["--method", "bag", "--model", "resnet20@cifar100"], {}, ("CUDA", "cifar100 data not found")),
    "imagenet-cpu": (["--method", "adadfq", "--model", "resnet18"], {}, ("CUDA", "imagenet data not found")),
    # allowed on the CPU (off-protocol try / explicit permission): then the data is what is missing
    "cifar10-set": (["--method", "intraq", "--model", "resnet20@cifar10", "--set", "train.steps=10"], {},
                    ("cifar10 data not found",)),
    "cifar100-allow": (["--method", "bag", "--model", "resnet20@cifar100"], {ALLOW_CPU_ENV: "1"},
                       ("cifar100 data not found",)),
}


@pytest.mark.parametrize("args, env, expected", RUNS.values(), ids=RUNS.keys())
def test_paper_run_fails_in_one_line(cli, tmp_path, args, env, expected):
    empty, out = tmp_path / "no-data", tmp_path / "results"
    empty.mkdir()
    res = cli("run", *args, "--bits", "4", "--protocol", "paper", "--device", "cpu", "--data-root", empty,
              "--out", out, "-q", env={"ZSQBENCH_DATA_ROOT": "", ALLOW_CPU_ENV: "", **env})
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert any(e in lines[0] for e in expected), lines[0]
    if "data not found" in lines[0]:
        assert "--data-root" in lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert not out.exists() or not any(out.iterdir())
