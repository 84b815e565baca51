import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


# Tests use tiny tensors: one intra-op thread is as fast, and several threads oversubscribe the cores (runs
# become ~100x slower) whenever anything else is busy on the machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def zsqbench_cli(*args, env=None, cwd=None, timeout=600):
    """Run the real console script in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "COLUMNS": "200", **ONE_THREAD, **(env or {})}
    return subprocess.run([sys.executable, "-m", "zsqbench.frontends.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)


def error_line(proc) -> str:
    """The one line a refused command prints: non-zero exit, no traceback, one non-empty stderr line."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def cli():
    return zsqbench_cli
