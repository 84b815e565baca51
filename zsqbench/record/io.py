"""Run records: JSON Schema validation, atomic writes, provenance."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import jsonschema

from zsqbench.spine.errors import UserError

SCHEMA_DIR = Path(__file__).parent / "schema"


@lru_cache(maxsize=None)
def schema(name: str = "run-record") -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


def validation_errors(obj: dict, name: str = "run-record") -> list[str]:
    v = jsonschema.Draft202012Validator(schema(name), format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in sorted(v.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))] + \
        nonfinite_errors(obj, FREE_FORM.get(name, ()))


FREE_FORM = {"run-record": ("diagnostics", "train_metrics")}  # measurements of a diverged run may be NaN there


def nonfinite_errors(obj, skip: tuple[str, ...] = ()) -> list[str]:
    """NaN or ±Infinity anywhere in a parsed JSON document (JSON Schema's ``number`` admits them), outside the
    top-level fields ``skip``."""
    errors = []

    def walk(x, path):
        if isinstance(x, float) and not math.isfinite(x):
            errors.append(f"{'/'.join(path) or '(root)'}: {x} is not a finite number")
        elif isinstance(x, dict):
            for k, v in x.items():
                if not (not path and k in skip):
                    walk(v, [*path, str(k)])
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, [*path, str(i)])
    walk(obj, [])
    return errors


def record_errors(obj) -> list[str]:
    """Everything that makes a run record invalid: its JSON Schema, non-finite numbers, the rules across its fields
    and its content digest (zsqbench.record.check). Empty: valid."""
    from zsqbench.record.check import consistency_errors, digest_errors
    errors = validation_errors(obj)
    if errors:
        return errors
    return consistency_errors(obj) + digest_errors(obj)


def validate_record(obj: dict) -> None:
    errors = record_errors(obj)
    if errors:
        raise UserError("invalid run record: " + "; ".join(errors[:5]))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename: readers see the old
    file or the whole new one, never a part (a killed run leaves at most a ``.NAME.*.tmp``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: dict) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def load_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not JSON: {e}") from None


@lru_cache(maxsize=None)
def git_info() -> dict:
    src = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def versions() -> dict:
    import numpy
    import torch

    import zsqbench
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "zsqbench": zsqbench.__version__, "platform": platform.platform()}


def device_info(device) -> dict:
    import torch
    info = {"type": device.type, "threads": torch.get_num_threads(), "name": _cpu_name()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cpus)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cpus)"


def peak_rss_mb() -> float:
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2 ** 20
