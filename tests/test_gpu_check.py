"""benchmarks/gpu_check.sh in its dry mode (CPU, tiny budgets): every stage of the GPU check still runs, so the
script is ready when a GPU is lent. Its figures mean nothing; that every stage builds, trains and reports does."""
import json
import os
import subprocess

import pytest

from conftest import ONE_THREAD, ROOT


@pytest.mark.slow
def test_gpu_check_dry_mode_runs_every_stage(tmp_path):
    summary_path = tmp_path / "out" / "gpu_check.json"
    env = {**os.environ, **ONE_THREAD, "OUT": str(tmp_path / "unused")}
    done = subprocess.run([str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry", str(summary_path), "--work",
                           str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["mode"].startswith("dry") and summary["device"] == "cpu" and summary["failures"] == []
    stages = summary["stages"]
    assert list(stages) == ["smoke", "cpu_families", "step_time", "speed", "paper_first_steps"]
    assert set(stages["speed"]["default"]["ratios"]) == {"train:gdfq", "synthesis:intraq", "eval"}
    for name in ("smoke", "cpu_families"):
        assert stages[name]["failed_jobs"] == [] and [r["status"] for r in stages[name]["runs"]] == ["ok"], name
    assert stages["step_time"]["step_time"]["cpu"]["quant_step_ms"] > 0
    assert set(stages["step_time"]["method_step_time"]["cpu"]["median_step_ms"]) == {"gdfq", "adadfq", "bag"}
    (paper,) = stages["paper_first_steps"]["runs"]
    assert paper["method"] == "gdfq" and paper["model"] == "resnet20@cifar100" and paper["status"] == "ok"
    assert paper["config_steps"] == 2 and paper["paper_steps"] == 79200 and paper["mean_step_ms"] > 0
