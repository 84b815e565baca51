"""``zsqbench reproduce RECORD|LEADERBOARD``: re-run results from their own provenance and say whether they agree.

A run record names everything its run needs: method and components, teacher (model@dataset, weights sha256),
bits, seed, protocol (name, version, hash), settings overrides, device and thread count. A leaderboard run names
all but the overrides (a leaderboard holds on-protocol runs only) and, for rows built before it was stored, the
thread count (then the record's, when its file is at hand, else 1: what a 2-core sweep of two jobs gives).

Each re-run is a child ``zsqbench run`` with the original thread count (``--threads`` and ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS``), as a sweep job is; its record goes to ``--out``. Per re-run: the original and the new final
and FP top-1, and a verdict — ``agrees`` when |new − original| <= the tolerance (docs/reproduce.md: 0 by default;
on the same code, library versions, CPU kernels and threads a CPU run repeats bit for bit), ``differs`` otherwise,
with whatever recorded circumstance differs (code, library versions, CPU, threads, environment).
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from zsqbench.record.io import load_json
from zsqbench.spine.errors import UserError

_OVERRIDE_SPLIT = re.compile(r", (?=[A-Za-z_][\w.]*=)")


@dataclass
class Target:
    """One run to re-run: what it was (for the report) and how to run it again."""
    label: str
    method: str
    model: str          # model@dataset
    wbits: int
    abits: int
    seed: int
    protocol: dict      # name, version, hash
    final_top1: float | None
    fp_top1: float | None
    threads: int
    threads_from: str   # where the thread count came from
    device: str = "cpu"
    overrides: list[str] = field(default_factory=list)
    components: dict = field(default_factory=dict)  # kind -> name
    weights: str | None = None
    original: dict = field(default_factory=dict)    # the record (or what a leaderboard holds of it)


def _overrides(rec: dict) -> tuple[list[str], str | None]:
    """The --set items and --weights path an off-protocol record was made with (from its off_protocol reasons)."""
    items, weights = [], None
    for reason in rec.get("off_protocol") or []:
        if reason.startswith("overrides: "):
            items += _OVERRIDE_SPLIT.split(reason.removeprefix("overrides: "))
        m = re.match(r"teacher weights from (.+) instead of the embedded ones$", reason)
        if m:
            weights = m.group(1)
        if reason.startswith("teacher card "):
            raise UserError(f"{reason}: reproduce cannot recover a teacher card; re-run it with zsqbench run "
                            "--teacher-card")
    return items, weights


def from_record(path: str, rec: dict) -> Target:
    items, weights = _overrides(rec)
    device = (rec.get("device") or {})
    return Target(label=str(path), method=rec["method"]["name"], model=f"{rec['model']}@{rec['dataset']}",
                  wbits=rec["wbits"], abits=rec["abits"], seed=rec["seed"], protocol=rec["protocol"],
                  final_top1=rec["final_top1"], fp_top1=rec["fp_top1"], threads=int(device.get("threads") or 1),
                  threads_from="the record", device="cuda" if device.get("type") == "cuda" else "cpu",
                  overrides=items,
                  components={k: rec["method"][k]["name"] for k in ("synthesizer", "distiller", "quantizer")
                              if isinstance(rec["method"].get(k), dict)},
                  weights=weights, original=rec)


def parse_row_filter(text: str) -> tuple[str | None, str | None, tuple[int, int] | None]:
    """``METHOD[/MODEL[/WxAy]]`` (MODEL: ``resnet20`` or ``resnet20@fmnist``; ``*`` matches anything)."""
    parts = [p.strip() for p in text.split("/")]
    if not parts[0] or len(parts) > 3:
        raise UserError(f"--rows {text!r}: use METHOD, METHOD/MODEL or METHOD/MODEL/WxAy (e.g. adadfq/resnet20/W3A3)")
    method = None if parts[0] == "*" else parts[0]
    model = parts[1] if len(parts) > 1 and parts[1] not in ("", "*") else None
    bits = None
    if len(parts) > 2 and parts[2] not in ("", "*"):
        m = re.fullmatch(r"[wW](\d+)[aA](\d+)|(\d+)", parts[2])
        if not m:
            raise UserError(f"--rows {text!r}: bits {parts[2]!r} is not WxAy or N")
        bits = (int(m.group(1)), int(m.group(2))) if m.group(1) else (int(m.group(3)), int(m.group(3)))
    return method, model, bits


def _row_matches(row: dict, filt) -> bool:
    method, model, bits = filt
    if method and row["method"] != method:
        return False
    if model and model not in (row["model"], f"{row['model']}@{row['dataset']}"):
        return False
    return not bits or (row["wbits"], row["abits"]) == bits


def from_leaderboard(path: str, lb: dict, rows=(), seeds=(), sample: int | None = 1,
                     sample_seed: int = 0) -> list[Target]:
    """The leaderboard's runs in the rows ``rows`` (filters; default every row) with a seed in ``seeds`` (default
    every seed), finished ones only; ``sample`` of them drawn with ``sample_seed`` (None: all)."""
    filters = [parse_row_filter(r) for r in rows]
    picked = []
    for row in lb["rows"]:
        if filters and not any(_row_matches(row, f) for f in filters):
            continue
        for run in row["runs"]:
            if run["status"] != "ok" or (seeds and run["seed"] not in seeds):
                continue
            picked.append((row, run))
    if not picked:
        what = f" matching --rows {', '.join(rows)}" if rows else ""
        raise UserError(f"{path}: no finished run{what}{' with seeds ' + ', '.join(map(str, seeds)) if seeds else ''}"
                        f" (rows there: {', '.join(sorted({r['method'] for r in lb['rows']}))})")
    if sample is not None and sample < len(picked):
        picked = sorted(random.Random(sample_seed).sample(picked, sample),
                        key=lambda rr: (rr[0]["model"], rr[0]["wbits"], rr[0]["method"], rr[1]["seed"]))
    base = Path(path).parent
    out = []
    for row, run in picked:
        threads, threads_from = run.get("threads"), "the leaderboard"
        rec_file = _find_record(run["record"], base)
        rec = None
        if rec_file:
            try:
                rec = json.loads(rec_file.read_text())
            except (OSError, ValueError):
                rec = None
        if threads is None and rec and (rec.get("device") or {}).get("threads"):
            threads, threads_from = rec["device"]["threads"], f"its record {rec_file}"
        if threads is None:
            threads, threads_from = 1, "not recorded in the leaderboard; 1, a 2-core sweep's (--jobs 2)"
        original = rec if rec and rec.get("seed") == run["seed"] and rec.get("final_top1") == run["final_top1"] \
            else {"code": run.get("code"), "teacher": {"sha256": run.get("teacher_sha256")},
                  "git": {"commit": run.get("git_commit")}, "device": {"type": "cpu", "threads": threads}}
        label = f"{row['method']} {row['model']}@{row['dataset']} W{row['wbits']}A{row['abits']} seed {run['seed']}"
        out.append(Target(label=label, method=row["method"], model=f"{row['model']}@{row['dataset']}",
                          wbits=row["wbits"], abits=row["abits"], seed=run["seed"], protocol=lb["protocol"],
                          final_top1=run["final_top1"], fp_top1=run["fp_top1"], threads=int(threads),
                          threads_from=threads_from, original=original))
    return out


def _find_record(name: str, base: Path) -> Path | None:
    for p in (Path(name), base / name, base.parent / name):
        if p.is_file():
            return p
    return None


def load_targets(path: str, rows=(), seeds=(), sample: int | None = 1, sample_seed: int = 0) -> tuple[str, list]:
    """('record' | 'leaderboard', targets) for a run record or a leaderboard file."""
    from zsqbench.leaderboard.collect import looks_like_leaderboard, looks_like_record
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{path} is a directory: give one run record or one leaderboard file")
    obj = load_json(p)
    if looks_like_leaderboard(obj):
        from zsqbench.leaderboard.build import validate_leaderboard
        errors = validate_leaderboard(obj)
        if errors:
            raise UserError(f"{path} is not a valid leaderboard: {errors[0]}")
        return "leaderboard", from_leaderboard(path, obj, rows, seeds, sample, sample_seed)
    if looks_like_record(obj):
        from zsqbench.record.io import validation_errors
        errors = validation_errors(obj)
        if errors:
            raise UserError(f"{path} is not a valid run record: {errors[0]}")
        if rows or seeds:
            raise UserError("--rows and --seeds select runs of a leaderboard; a run record is one run")
        if obj["status"] != "ok":
            raise UserError(f"{path} is a diverged run (no final top-1 to reproduce); re-run it with zsqbench run")
        return "record", [from_record(path, obj)]
    raise UserError(f"{path} is neither a run record nor a zsqbench leaderboard")


def check_protocol(target: Target, registry) -> None:
    """The protocol must still be the one the result was made under (same version and hash)."""
    proto = registry.get("protocols", target.protocol["name"])
    if proto["hash"] != target.protocol["hash"]:
        raise UserError(f"{target.label}: protocol {proto['name']} is now v{proto['version']} "
                        f"({proto['hash'][:8]}), the result was made under v{target.protocol['version']} "
                        f"({target.protocol['hash'][:8]}); check out the commit that made it "
                        f"({(target.original.get('git') or {}).get('commit') or 'not recorded'}) to re-run it")


def command(t: Target, record_file: Path, data_root: str | None, cache_dir: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "zsqbench.frontends.cli", "run", "--method", t.method, "--model", t.model,
           "--wbits", str(t.wbits), "--abits", str(t.abits), "--seed", str(t.seed),
           "--protocol", t.protocol["name"], "--device", t.device, "--threads", str(t.threads),
           "--record-file", str(record_file)]
    for kind, name in t.components.items():
        cmd += [f"--{kind}", name]
    for item in t.overrides:
        cmd += ["--set", item]
    if t.weights:
        cmd += ["--weights", t.weights]
    if data_root:
        cmd += ["--data-root", data_root]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    return cmd


def speed_env(t: Target) -> str | None:
    """``ZSQBENCH_SPEED`` for the original's speed switches; None when its record predates them."""
    used = t.original.get("speed")
    if not isinstance(used, dict):
        return None
    from zsqbench.spine.speed import env_value
    return env_value(used)


def shell_command(t: Target) -> str:
    """What a reader types to re-run it by hand (the site shows it)."""
    import shlex
    parts = ["zsqbench", "run", "--method", t.method, "--model", t.model, "--wbits", str(t.wbits),
             "--abits", str(t.abits), "--seed", str(t.seed), "--protocol", t.protocol["name"],
             "--threads", str(t.threads)]
    for item in t.overrides:
        parts += ["--set", item]
    prefix = f"ZSQBENCH_SPEED={speed_env(t)} " if speed_env(t) else ""
    return prefix + shlex.join(parts)


def _file_name(t: Target) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{t.method}_{t.model}_w{t.wbits}a{t.abits}_s{t.seed}").strip("-")


def rerun(t: Target, out: Path, data_root: str | None, cache_dir: str | None, tolerance: float,
          stream=None) -> dict:
    """Run one target again in a child process and compare. Returns the comparison (JSON-able)."""
    stream = stream or sys.stderr
    out.mkdir(parents=True, exist_ok=True)
    record_file = out / f"{_file_name(t)}.json"
    record_file.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(t.threads), "MKL_NUM_THREADS": str(t.threads)}
    if speed_env(t):  # the speed switches the original used (they move float sums like the thread count does)
        env["ZSQBENCH_SPEED"] = speed_env(t)
    cmd = command(t, record_file, data_root, cache_dir)
    try:
        sink = stream.fileno()  # the child's progress lines and summary, beside ours
    except (AttributeError, OSError, ValueError):
        sink = subprocess.DEVNULL
    proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.PIPE, text=True, env=env)
    result = {"label": t.label, "method": t.method, "model": t.model, "wbits": t.wbits, "abits": t.abits,
              "seed": t.seed, "threads": t.threads, "threads_from": t.threads_from,
              "original": {"final_top1": t.final_top1, "fp_top1": t.fp_top1},
              "new": None, "delta": None, "tolerance": tolerance, "record": str(record_file),
              "command": shell_command(t)}
    if not record_file.is_file():
        err = (proc.stderr or "").strip().splitlines()
        return result | {"verdict": "failed", "differs": [],
                         "error": err[-1] if err else f"zsqbench run exited {proc.returncode}"}
    new = json.loads(record_file.read_text())
    result["new"] = {"final_top1": new["final_top1"], "fp_top1": new["fp_top1"]}
    if new["final_top1"] is None or t.final_top1 is None:
        verdict = "differs"
    else:
        result["delta"] = round(new["final_top1"] - t.final_top1, 4)
        fp_same = t.fp_top1 is None or abs(new["fp_top1"] - t.fp_top1) <= tolerance
        verdict = "agrees" if abs(result["delta"]) <= tolerance + 1e-9 and fp_same else "differs"
    from zsqbench.spine.numerics import differences
    return result | {"verdict": verdict, "differs": differences(t.original, new)}


def reproduce(path: str, rows=(), seeds=(), sample: int | None = 1, sample_seed: int = 0, out: str | None = None,
              data_root: str | None = None, cache_dir: str | None = None, tolerance: float = 0.0,
              threads: int | None = None, dry_run: bool = False, stream=None) -> dict:
    kind, targets = load_targets(path, rows, seeds, sample, sample_seed)
    from zsqbench.spine.registry import get_registry
    registry = get_registry()
    for t in targets:
        check_protocol(t, registry)
        if threads is not None:
            t.threads, t.threads_from = threads, "--threads (not the original's)"
        if t.device == "cuda":
            raise UserError(f"{t.label} ran on CUDA; reproduce re-runs CPU results only (zsqbench run --device "
                            "cuda re-runs it by hand; GPU kernels are not bit-for-bit repeatable across GPUs)")
    out_dir = Path(out or "results/reproduce")
    report = {"input": str(path), "kind": kind, "tolerance": tolerance, "out": str(out_dir), "results": []}
    if dry_run:
        report["results"] = [{"label": t.label, "threads": t.threads, "threads_from": t.threads_from,
                              "original": {"final_top1": t.final_top1, "fp_top1": t.fp_top1},
                              "command": shell_command(t), "verdict": "not run"} for t in targets]
        return report
    for i, t in enumerate(targets, 1):
        print(f"[reproduce] {i}/{len(targets)} {t.label}: re-running on {t.threads} thread(s) ({t.threads_from})",
              file=stream or sys.stderr, flush=True)
        report["results"].append(rerun(t, out_dir, data_root, cache_dir, tolerance, stream))
    return report
