"""Helpers for a plugin's *own* test suite (``from zsqbench.testing import ...``). Real runs, no mocks.

* :func:`smoke_context` — a :class:`~zsqbench.interfaces.RunContext` on the smoke teacher (the embedded ResNet-20
  Fashion-MNIST teacher) with its quantized student, to unit-test a component's ``prepare`` / ``next_batch`` /
  ``loss`` in-process, in a second;
* :func:`method_components` — the synthesizer, distiller and quantizer a run of a method would build, with the
  method's resolved settings;
* :func:`run_method` — a registered method end to end under ``smoke``, in-process, through the very code path of
  ``zsqbench run`` (:func:`zsqbench.loop.run`); returns the run record;
* :func:`check_record` — a record (dict or file) against the run-record JSON Schema and the basic invariants of a
  finished run; ``AssertionError`` with every problem otherwise;
* :func:`run_cli` / :func:`assert_one_line_error` — the real ``zsqbench`` command in a subprocess; the second
  asserts the bad-input contract (exit 2, one ``error:`` line, no traceback, no record).

A method is found by name in the registry, so the plugin must be *installed* (``pip install -e .``, or
``pip install --target DIR .`` with ``DIR`` on ``PYTHONPATH``) for :func:`smoke_context` with a method name,
:func:`run_method` and the CLI helpers to see it; its classes can be tested without that.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

__all__ = ["smoke_context", "method_components", "run_method", "check_record", "run_cli", "assert_one_line_error"]

SMOKE_MODEL = "resnet20@fmnist"


def _spec(method: str, *, model: str, wbits: int, abits: int, protocol: str, seed: int,
          overrides: Mapping[str, Any] | None, out: str = "results", **kw):
    from zsqbench.loop import RunSpec
    return RunSpec(method=method, model=model, wbits=wbits, abits=abits, protocol=protocol, seed=seed,
                   overrides=_override_list(overrides), out=out, quiet=True, **kw)


def _override_list(overrides: Mapping[str, Any] | None) -> list[str]:
    """``{"train.steps": 2}`` -> ``["train.steps=2"]`` (values as JSON, as ``--set`` reads them)."""
    return [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]


def smoke_context(method: str | None = None, *, model: str = SMOKE_MODEL, wbits: int = 4, abits: int = 4,
                  seed: int = 0, protocol: str = "smoke", quantizer: str | None = None,
                  overrides: Mapping[str, Any] | None = None, device: str = "cpu",
                  cache_dir: str | os.PathLike | None = None):
    """A :class:`~zsqbench.interfaces.RunContext` as the engine builds it before ``synthesizer.prepare``.

    The teacher (``model``, default the embedded ResNet-20 on Fashion-MNIST) is loaded in eval mode with frozen
    weights; the student is the teacher quantized at W``wbits``A``abits`` by ``method``'s quantizer with its
    resolved settings (``method=None``: the registered ``quantizer``, default ``minmax-ema``, with its defaults),
    after seeding everything with ``seed`` as a run does. ``total_steps`` / ``warmup_steps`` are the run's
    (``protocol`` + the method's settings + ``overrides``, e.g. ``{"train.steps": 2}``), ``ctx.phase`` is
    ``"setup"`` and nothing is calibrated yet: the student's activation quantizers pass values through until
    ``ctx.quantizer.set_calibrating(ctx.student, True)`` and a forward pass. ``cache_dir`` is where image-set
    synthesizers cache their sets (default ``$ZSQBENCH_CACHE_DIR`` or ``~/.cache/zsqbench``; give a temporary
    folder so an edited ``synthesis_loss`` never meets a set cached by the old code).

    Bad names raise :class:`~zsqbench.errors.UserError`, as ``zsqbench run`` would report them.
    """
    from zsqbench.interfaces import RunContext
    from zsqbench.loop import RunSpec, resolve, resolve_device, resolve_model_key, seed_everything
    from zsqbench.registry import get_registry
    from zsqbench.teacher.zoo import load_teacher

    registry = get_registry()
    if method is not None:
        resolved = resolve(_spec(method, model=model, wbits=wbits, abits=abits, protocol=protocol, seed=seed,
                                 overrides=overrides, quantizer=quantizer), registry)
        model_spec, quant = resolved["model_spec"], resolved["instances"]["quantizer"]
        train = resolved["config"]["train"]
    else:
        proto = registry.get("protocols", protocol)
        key = resolve_model_key(RunSpec(method="", model=model, wbits=wbits, abits=abits, protocol=protocol),
                                registry, proto)
        model_spec = registry.get("models", key)
        quant = registry.get("quantizers", quantizer or "minmax-ema")()
        from zsqbench.errors import UserError
        from zsqbench.protocols import apply_overrides
        config = apply_overrides({"train": proto["train"], "eval": proto["eval"]}, _override_list(overrides))
        if set(config) - {"train", "eval"}:
            raise UserError("without a method, smoke_context takes only train.* and eval.* overrides")
        train = config["train"]
    from zsqbench.teacher.card import resolve_card
    dev = resolve_device(device)
    teacher, info = load_teacher(model_spec, None, None if cache_dir is None else str(cache_dir))
    teacher = teacher.to(dev)
    seed_everything(seed)
    student = quant.quantize(teacher, wbits, abits).to(dev).eval()
    return RunContext(teacher=teacher, student=student, model=model_spec,
                      dataset=registry.dataset(model_spec.dataset).info, wbits=wbits, abits=abits, quantizer=quant,
                      device=dev, seed=seed, total_steps=int(train["steps"]), warmup_steps=int(train["warmup_steps"]),
                      cache_dir=None if cache_dir is None else str(cache_dir), teacher_hash=info.get("sha256"),
                      teacher_card=resolve_card(model_spec, None, None))


def method_components(method: str, *, protocol: str = "smoke", model: str = SMOKE_MODEL,
                      overrides: Mapping[str, Any] | None = None) -> dict:
    """``{"synthesizer": ..., "distiller": ..., "quantizer": ...}``: the component instances a run of ``method``
    under ``protocol`` builds, with the settings it resolves (component defaults < protocol < the method's settings
    file, per dataset < ``overrides``), checked against each component's ``Settings``."""
    from zsqbench.loop import resolve
    return dict(resolve(_spec(method, model=model, wbits=4, abits=4, protocol=protocol, seed=0,
                              overrides=overrides))["instances"])


def run_method(method: str, *, out_dir: str | os.PathLike, protocol: str = "smoke", model: str = SMOKE_MODEL,
               bits: int = 4, wbits: int | None = None, abits: int | None = None, seed: int = 0,
               overrides: Mapping[str, Any] | None = None, device: str = "cpu",
               cache_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
               threads: int | None = 1) -> dict:
    """Run the registered ``method`` end to end, in this process, exactly as ``zsqbench run`` does
    (:func:`zsqbench.loop.run`: resolve and check settings, teacher, student, calibration, distillation,
    evaluation on real test images, schema-validated record), and return the record (a dict; the file is the one
    JSON file it writes into ``out_dir``).

    ``overrides`` are ``--set`` values as a dict (``{"train.steps": 2, "synthesizer.width": 8}``); they make the
    record off-protocol, as on the command line. ``cache_dir`` defaults to ``out_dir/cache``: a fresh synthetic-set
    and FP-evaluation cache per test, so a set cached by older code of your synthesizer is never reused (pass a
    folder of your own to share one between tests). ``threads`` sets torch's intra-op threads for the run (and
    restores them after; ``None`` leaves them): tiny smoke tensors run fastest on one.

    Bad input raises :class:`~zsqbench.errors.UserError` (what the CLI prints as its one ``error:`` line); a run that
    hits NaN/Inf returns a record with ``"status": "diverged"`` (:func:`check_record` refuses it).
    """
    from zsqbench.loop import run
    out = Path(out_dir)
    spec = _spec(method, model=model, wbits=bits if wbits is None else wbits, abits=bits if abits is None else abits,
                 protocol=protocol, seed=seed, overrides=overrides, out=str(out), device=device,
                 cache_dir=str(out / "cache" if cache_dir is None else cache_dir),
                 data_root=None if data_root is None else str(data_root))
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        record, _ = run(spec)
    finally:
        torch.set_num_threads(before)
    return record


def check_record(record_or_path: dict | str | os.PathLike) -> dict:
    """The run record (a dict, or the path of its JSON file), after checking it; ``AssertionError`` naming every
    problem otherwise. Checked: the run-record JSON Schema (``zsqbench/record/schema/run-record.schema.json``, what
    ``zsqbench validate`` applies), ``status`` is ``"ok"``, ``final_top1`` and ``fp_top1`` are numbers in
    [0, 100], the evaluation history ends at the last training step with the final top-1, and every training step
    the configuration asks for was taken."""
    from zsqbench.record.io import validation_errors
    if isinstance(record_or_path, Mapping):
        record, where = dict(record_or_path), "run record"
    else:
        path = Path(record_or_path)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise AssertionError(f"cannot read run record {path}: {type(e).__name__}: {e}") from None
        where = f"run record {path}"
        if not isinstance(record, dict):
            raise AssertionError(f"{where} is not a JSON object")
    problems = [f"schema: {e}" for e in validation_errors(record)]
    if record.get("status") != "ok":
        why = record.get("diverged") or "no status"
        problems.append(f"status is {record.get('status')!r}, not 'ok' ({why})")
    for key in ("final_top1", "fp_top1"):
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= 100:
            problems.append(f"{key} is {value!r}, not a number in [0, 100]")
    history = record.get("eval_history") or []
    steps = ((record.get("config") or {}).get("train") or {}).get("steps")
    if not history:
        problems.append("eval_history is empty")
    elif record.get("status") == "ok":
        last = history[-1]
        if last.get("top1") != record.get("final_top1"):
            problems.append(f"final_top1 {record.get('final_top1')!r} is not the last evaluation's "
                            f"{last.get('top1')!r}")
        if steps is not None and last.get("step") != steps:
            problems.append(f"the last evaluation is at step {last.get('step')!r}, not after the last step {steps}")
    taken = (record.get("timing") or {}).get("steps")
    if record.get("status") == "ok" and steps is not None and taken != steps:
        problems.append(f"{taken!r} training steps were taken, the configuration asks for {steps}")
    if problems:
        raise AssertionError(f"{where} ({_label(record)}) fails {len(problems)} check(s):\n  - "
                             + "\n  - ".join(problems))
    return record


def _label(record: dict) -> str:
    method = record.get("method")
    name = method.get("name") if isinstance(method, dict) else method
    return f"{name} {record.get('model')}@{record.get('dataset')} W{record.get('wbits')}A{record.get('abits')} " \
           f"seed {record.get('seed')}"


def run_cli(*args: Any, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``zsqbench ARGS...`` (this interpreter's, ``python -m zsqbench.cli``) in a subprocess with this process's
    environment (so ``PYTHONPATH`` plugins are seen) plus ``env``; returns the CompletedProcess (text). Tables are
    printed 200 columns wide and torch uses one thread unless ``env`` or the environment says otherwise."""
    full = {"COLUMNS": "200", "OMP_NUM_THREADS": "1", **os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "zsqbench.cli", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=cwd, timeout=timeout)


def assert_one_line_error(*args: Any, contains: str | Iterable[str] = (), returncode: int = 2,
                          env: Mapping[str, str] | None = None) -> str:
    """Run ``zsqbench ARGS...`` and assert zsqbench's bad-input contract: exit status ``returncode`` (2), exactly one
    non-empty line on stderr, starting ``error:``, no traceback, each of ``contains`` in it, and — when ARGS has
    ``--out DIR`` — no file written under DIR. Returns the line."""
    proc = run_cli(*args, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    cmd = "zsqbench " + " ".join(map(str, args))
    shown = f"\n--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"
    assert proc.returncode == returncode, f"`{cmd}` exited {proc.returncode}, expected {returncode}{shown}"
    assert "Traceback" not in proc.stderr, f"`{cmd}` printed a traceback{shown}"
    assert len(lines) == 1, f"`{cmd}` printed {len(lines)} lines on stderr, expected one{shown}"
    line = lines[0]
    assert line.startswith("error: "), f"`{cmd}`: the line does not start with 'error: ': {line}"
    for text in [contains] if isinstance(contains, str) else contains:
        assert text in line, f"`{cmd}`: {text!r} is not in the error line: {line}"
    argv = list(map(str, args))
    if "--out" in argv[:-1]:
        out = Path(argv[argv.index("--out") + 1])
        written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else []
        assert not written, f"`{cmd}` failed but wrote {', '.join(map(str, written))}"
    return line
