"""What decides a run's floating-point results besides its seed, and the means to pin it (docs/reproduce.md).

A CPU run is bit-for-bit repeatable when the code, the library versions, the CPU's instruction set (the kernels
oneDNN and MKL pick) and the intra-op thread count are the same: the thread count splits reductions (sums in
convolutions, matrix products, BN statistics) differently, and at 3 bits one last-bit difference re-rounds a weight
and the runs part. So a run records all of them (``device.numerics``) and ``zsqbench run --threads N`` sets the
count instead of inheriting it from whatever ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` the shell had (torch takes
the smaller of the two: ``MKL_NUM_THREADS=1`` alone gives one thread). ``zsqbench reproduce`` re-runs a record
with its recorded count and names whichever of these differ when the figures do.
"""
from __future__ import annotations

import os
from pathlib import Path

# environment variables that change which kernels run or how work is split
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA",
            "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "CUBLAS_WORKSPACE_CONFIG", "KMP_AFFINITY",
            "OMP_SCHEDULE", "TORCH_DETERMINISTIC")
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni",
             "f16c", "sse4_2")


def cpu_flags() -> list[str]:
    """The instruction-set extensions among CPU_FLAGS this CPU has (they decide oneDNN's and MKL's kernels)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in CPU_FLAGS if x in have]
    except OSError:
        pass
    return []


def cpu_model() -> dict:
    """Family/model/stepping and cache sizes: CPUs sold under one name ("AMD EPYC") differ in them, and oneDNN
    picks its blocking (so its summation order) by the cache sizes."""
    out: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "stepping") and key.replace(" ", "_") not in out:
                    out[key.replace(" ", "_")] = value.strip()
                if not line.strip() and out:
                    break
    except OSError:
        pass
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (index / "level").read_text().strip(), (index / "type").read_text().strip()
            caches[f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''}"] = \
                (index / "size").read_text().strip()
        except OSError:
            continue
    if caches:
        out["caches"] = caches
    return out


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (None: keep what the environment gave) and return the count in force."""
    import torch
    if threads is not None:
        torch.set_num_threads(int(threads))
    return torch.get_num_threads()


def resolve_device(name: str):
    """The torch device ``--device`` names (``auto``: CUDA when torch sees one), or one line saying why not."""
    import torch

    from zsqbench.spine.errors import UserError
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def seed_all(seed: int) -> None:
    """Seed every generator a run draws from: Python's, NumPy's, torch's (CPU and every CUDA device)."""
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def info() -> dict:
    """The run's numerics, for the record: threads, the kernels' instruction set, library versions, environment."""
    import torch
    out = {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
           "cpu_capability": _capability(), "cpu_flags": cpu_flags(), "cpu_model": cpu_model(),
           "mkl": _mkl_version(), "onednn": _onednn_version(),
           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
           "env": {k: os.environ[k] for k in ENV_VARS if k in os.environ}}
    return out


def _capability() -> str | None:
    try:
        import torch
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None


def _config_line(prefix: str) -> str | None:
    try:
        import torch
        for line in torch.__config__.show().splitlines():
            line = line.strip(" -")
            if line.startswith(prefix):
                return line
    except (AttributeError, RuntimeError):
        pass
    return None


def _mkl_version() -> str | None:
    line = _config_line("Intel(R) oneAPI Math Kernel Library Version") or _config_line("Intel(R) Math Kernel")
    return line.split("Version", 1)[1].split()[0].split("-")[0] if line and "Version" in line else None


def _onednn_version() -> str | None:
    line = _config_line("Intel(R) MKL-DNN") or _config_line("oneDNN")
    return line.split(None, 2)[-1].split(" (")[0].strip() if line else None


def differences(original: dict, new: dict) -> list[str]:
    """What differs between two records' circumstances that can move a figure: code, library versions, CPU and
    its kernels, threads, environment. One short phrase each; empty when nothing recorded differs."""
    out = []
    oc, nc = original.get("code") or {}, new.get("code") or {}
    for dist in sorted(set(oc) | set(nc)):
        a, b = (oc.get(dist) or {}).get("sha256"), (nc.get(dist) or {}).get("sha256")
        if a != b:
            out.append(f"code of {dist} ({(a or 'unrecorded')[:8]} vs {(b or 'unrecorded')[:8]})")
    if (original.get("config_hash") and new.get("config_hash")
            and original["config_hash"] != new["config_hash"]):
        out.append(f"settings hash ({original['config_hash'][:8]} vs {new['config_hash'][:8]})")
    ov, nv = original.get("versions") or {}, new.get("versions") or {}
    for k in ("torch", "numpy", "python", "platform"):
        if k in ov and k in nv and ov[k] != nv[k]:
            out.append(f"{k} {ov[k]} vs {nv[k]}")
    od, nd = original.get("device") or {}, new.get("device") or {}
    if od.get("type") != nd.get("type"):
        out.append(f"device {od.get('type')} vs {nd.get('type')}")
    if od.get("name") != nd.get("name"):
        out.append(f"CPU/GPU {od.get('name')!r} vs {nd.get('name')!r}")
    if od.get("threads") != nd.get("threads"):
        out.append(f"threads {od.get('threads')} vs {nd.get('threads')}")
    on, nn = od.get("numerics") or {}, nd.get("numerics") or {}
    if not on:
        out.append("the original record has no numerics block (CPU kernels, MKL/oneDNN versions unrecorded)")
    else:
        for k in ("cpu_capability", "cpu_flags", "cpu_model", "mkl", "onednn", "interop_threads",
                  "deterministic_algorithms"):
            if on.get(k) != nn.get(k):
                out.append(f"{k.replace('_', ' ')} {on.get(k)} vs {nn.get(k)}")
        # the thread variables are compared as the thread count above; the other variables as they are
        oe, ne = ({k: v for k, v in (d.get("env") or {}).items() if not k.endswith("_NUM_THREADS")} for d in (on, nn))
        if oe != ne:
            out.append(f"env {oe} vs {ne}")
    if original.get("speed") != new.get("speed"):  # docs/speed.md: the switches reorder float sums
        out.append(f"speed switches {original.get('speed') or 'unrecorded'} vs {new.get('speed') or 'unrecorded'}")
    if (original.get("teacher") or {}).get("sha256") != (new.get("teacher") or {}).get("sha256"):
        out.append("teacher weights (sha256)")
    return out
