"""Helpers for a plugin's *own* test suite (``from zsqbench.testing import ...``). Real runs, no mocks.

* :func:`smoke_context` — a :class:`~zsqbench.spine.interfaces.RunContext` on the smoke teacher (the embedded
  ResNet-20 Fashion-MNIST teacher) with its quantized student, to unit-test a component's ``prepare`` / ``next_batch`` /
  ``loss`` in-process, in a second;
* :func:`method_components` — the synthesizer, distiller and quantizer a run of a method would build, with the
  method's resolved settings;
* :func:`run_method` — a registered method end to end under ``smoke``, in-process, through the very code path of
  ``zsqbench run`` (:func:`zsqbench.spine.loop.run`); returns the run record;
* :func:`check_record` — a record (dict or file) against the run-record JSON Schema and the basic invariants of a
  finished run; ``AssertionError`` with every problem otherwise;
* :func:`run_cli` / :func:`assert_one_line_error` — the real ``zsqbench`` command in a subprocess; the second
  asserts the bad-input contract (exit 2, one ``error:`` line, no traceback, no record);
* :func:`check_method` — the conformance suite: every check a registered method must pass (see :data:`CHECKS`),
  ``AssertionError`` naming each failed one; :func:`conformance_test` makes it a pytest test.

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

__all__ = ["smoke_context", "method_components", "run_method", "check_record", "run_cli", "assert_one_line_error",
           "check_method", "conformance_test", "CHECKS"]

SMOKE_MODEL = "resnet20@fmnist"


def _spec(method: str, *, model: str, wbits: int, abits: int, protocol: str, seed: int,
          overrides: Mapping[str, Any] | None, out: str = "results", **kw):
    from zsqbench.spine.plan import RunSpec
    return RunSpec(method=method, model=model, wbits=wbits, abits=abits, protocol=protocol, seed=seed,
                   overrides=_override_list(overrides), out=out, quiet=True, **kw)


def _override_list(overrides: Mapping[str, Any] | None) -> list[str]:
    """``{"train.steps": 2}`` -> ``["train.steps=2"]`` (values as JSON, as ``--set`` reads them)."""
    return [f"{k}={json.dumps(v)}" for k, v in (overrides or {}).items()]


def smoke_context(method: str | None = None, *, model: str = SMOKE_MODEL, wbits: int = 4, abits: int = 4,
                  seed: int = 0, protocol: str = "smoke", quantizer: str | None = None,
                  overrides: Mapping[str, Any] | None = None, device: str = "cpu",
                  cache_dir: str | os.PathLike | None = None):
    """A :class:`~zsqbench.spine.interfaces.RunContext` as the engine builds it before ``synthesizer.prepare``.

    The teacher (``model``, default the embedded ResNet-20 on Fashion-MNIST) is loaded in eval mode with frozen
    weights; the student is the teacher quantized at W``wbits``A``abits`` by ``method``'s quantizer with its
    resolved settings (``method=None``: the registered ``quantizer``, default ``minmax-ema``, with its defaults),
    after seeding everything with ``seed`` as a run does. ``total_steps`` / ``warmup_steps`` are the run's
    (``protocol`` + the method's settings + ``overrides``, e.g. ``{"train.steps": 2}``), ``ctx.phase`` is
    ``"setup"`` and nothing is calibrated yet: the student's activation quantizers pass values through until
    ``ctx.quantizer.set_calibrating(ctx.student, True)`` and a forward pass. ``cache_dir`` is where image-set
    synthesizers cache their sets (default ``$ZSQBENCH_CACHE_DIR`` or ``~/.cache/zsqbench``; give a temporary
    folder so an edited ``synthesis_loss`` never meets a set cached by the old code).

    Bad names raise :class:`~zsqbench.spine.errors.UserError`, as ``zsqbench run`` would report them.
    """
    from zsqbench.spine.interfaces import RunContext
    from zsqbench.spine.numerics import resolve_device, seed_all
    from zsqbench.spine.plan import RunSpec, resolve, resolve_model_key
    from zsqbench.spine.registry import get_registry
    from zsqbench.spine.settings import TrainSettings, check
    from zsqbench.teacher.zoo import load_teacher

    registry = get_registry()
    if method is not None:
        plan = resolve(_spec(method, model=model, wbits=wbits, abits=abits, protocol=protocol, seed=seed,
                             overrides=overrides, quantizer=quantizer), registry)
        model_spec, quant, train = plan.model_spec, plan.components["quantizer"].build(), plan.train
    else:
        proto = registry.get("protocols", protocol)
        key = resolve_model_key(RunSpec(method="", model=model, wbits=wbits, abits=abits, protocol=protocol),
                                registry, proto)
        model_spec = registry.get("models", key)
        quant = registry.get("quantizers", quantizer or "minmax-ema")()
        from zsqbench.protocols import apply_overrides
        from zsqbench.spine.errors import UserError
        config = apply_overrides({"train": proto["train"], "eval": proto["eval"]}, _override_list(overrides))
        if set(config) - {"train", "eval"}:
            raise UserError("without a method, smoke_context takes only train.* and eval.* overrides")
        train = check(TrainSettings, config["train"], "train")
    from zsqbench.teacher.card import resolve_card
    dev = resolve_device(device)
    teacher, info = load_teacher(model_spec, None, None if cache_dir is None else str(cache_dir))
    teacher = teacher.to(dev)
    seed_all(seed)
    student = quant.quantize(teacher, wbits, abits).to(dev).eval()
    return RunContext(teacher=teacher, student=student, model=model_spec,
                      dataset=registry.dataset(model_spec.dataset).info, wbits=wbits, abits=abits, quantizer=quant,
                      device=dev, seed=seed, total_steps=train.steps, warmup_steps=train.warmup_steps,
                      cache_dir=None if cache_dir is None else str(cache_dir), teacher_hash=info.get("sha256"),
                      teacher_card=resolve_card(model_spec, None, None))


def method_components(method: str, *, protocol: str = "smoke", model: str = SMOKE_MODEL,
                      overrides: Mapping[str, Any] | None = None) -> dict:
    """``{"synthesizer": ..., "distiller": ..., "quantizer": ...}``: the component instances a run of ``method``
    under ``protocol`` builds, with the settings it resolves (component defaults < protocol < the method's settings
    file, per dataset < ``overrides``), checked against each component's ``Settings``."""
    from zsqbench.spine.plan import resolve
    return resolve(_spec(method, model=model, wbits=4, abits=4, protocol=protocol, seed=0,
                         overrides=overrides)).build_components()


def run_method(method: str, *, out_dir: str | os.PathLike, protocol: str = "smoke", model: str = SMOKE_MODEL,
               bits: int = 4, wbits: int | None = None, abits: int | None = None, seed: int = 0,
               overrides: Mapping[str, Any] | None = None, device: str = "cpu",
               cache_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
               threads: int | None = 1) -> dict:
    """Run the registered ``method`` end to end, in this process, exactly as ``zsqbench run`` does
    (:func:`zsqbench.spine.loop.run`: resolve and check settings, teacher, student, calibration, distillation,
    evaluation on real test images, schema-validated record), and return the record (a dict; the file is the one
    JSON file it writes into ``out_dir``).

    ``overrides`` are ``--set`` values as a dict (``{"train.steps": 2, "synthesizer.width": 8}``); they make the
    record off-protocol, as on the command line. ``cache_dir`` defaults to ``out_dir/cache``: a fresh synthetic-set
    and FP-evaluation cache per test, so a set cached by older code of your synthesizer is never reused (pass a
    folder of your own to share one between tests). ``threads`` sets torch's intra-op threads for the run (and
    restores them after; ``None`` leaves them): tiny smoke tensors run fastest on one.

    Bad input raises :class:`~zsqbench.spine.errors.UserError` (what the CLI prints as its one ``error:`` line); a run
    that hits NaN/Inf returns a record with ``"status": "diverged"`` (:func:`check_record` refuses it).
    """
    from zsqbench.spine.loop import run
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
    """Run ``zsqbench ARGS...`` (this interpreter's, ``python -m zsqbench.frontends.cli``) in a subprocess with this
    process's environment (so ``PYTHONPATH`` plugins are seen) plus ``env``; returns the CompletedProcess (text).
    Tables are printed 200 columns wide and torch uses one thread unless ``env`` or the environment says otherwise."""
    full = {"COLUMNS": "200", "OMP_NUM_THREADS": "1", **os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "zsqbench.frontends.cli", *map(str, args)], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=timeout)


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


# --- the conformance suite ---------------------------------------------------------------------------------------

CHECKS = {
    "registers": "the plugin's hook registers all of it or nothing: run again on an empty registry it raises nothing "
                 "and adds exactly what the loaded registry holds from it (no name lost to another plugin), and "
                 "the method's components are registered",
    "settings": "it lists its settings: every component declares typed Settings with a default for every field, "
                "`zsqbench list settings` renders them, and it has (valid) settings for the protocol",
    "smoke_run": "a smoke run (tiny budgets) writes a record that passes check_record, naming the method's provider",
    "deterministic": "a second run with the same seed (and a fresh cache) gives the same metrics",
    "bad_setting": "a bad setting (an unknown key in each component, a wrongly typed value for each field) is one "
                   "`error:` line naming it, before the data or the teacher is loaded, and writes no record",
    "cache_code": "an edit to the synthesizer's module (no version bump) changes its synthetic-set cache key, so "
                  "the set is rebuilt (image-set synthesizers; a generator caches nothing)",
    "no_real_data": "it never touches real data: its modules import nothing of zsqbench but zsqbench.api (and "
                    "zsqbench.testing), and during the smoke run its code opens none of the files the evaluation reads",
}

# tiny budgets: (key, largest value) — a value the method sets lower stays
FAST = (("train.steps", 2), ("train.warmup_steps", 2), ("train.batch_size", 8), ("eval.limit", 100),
        ("eval.every", 0), ("synthesizer.num_images", 8), ("synthesizer.synthesis_batch_size", 8),
        ("synthesizer.iterations", 2), ("synthesizer.calibration_batch_size", 8))
_BAD_KEY = "zsqbench_check_no_such_setting"
_BAD_VALUES = ("zsqbench-check", 12345, -12345, [1], {"x": 1}, 0.5, True, None)


class _Check(Exception):
    """A check that cannot run (skipped, with the reason)."""


def conformance_test(method: str, **kwargs):
    """A pytest test function that runs :func:`check_method` on ``method`` in a temporary folder — in a plugin's test
    module: ``test_conformance = conformance_test("my-method")``."""
    def test_conformance(tmp_path):
        check_method(method, out_dir=tmp_path, **kwargs)
    test_conformance.__name__ = f"test_conformance_{method.replace('-', '_')}"
    return test_conformance


def check_method(method: str, *, out_dir: str | os.PathLike | None = None, checks: Iterable[str] | None = None,
                 protocol: str = "smoke", model: str = SMOKE_MODEL, bits: int = 4, seed: int = 0,
                 fast: bool = True, cli: bool = True) -> dict[str, str]:
    """Run the conformance suite on the registered ``method`` (scikit-learn's ``check_estimator`` for zsqbench
    plugins): every check of :data:`CHECKS` (or those named in ``checks``), each on the real registry, teacher,
    loop, cache and CLI. Returns ``{check: "ok" | "skipped: why"}``; raises ``AssertionError`` listing every failed
    check with what to fix.

    Runs go under ``out_dir`` (default: a temporary folder) with their own caches, under ``protocol`` (``smoke``)
    on ``model``, with tiny budgets (:data:`FAST`: 2 steps, 8 images, 100 test images; off ``fast``: the protocol's
    budgets). ``cli=False`` leaves out the one subprocess of ``bad_setting`` (the real ``zsqbench run``)."""
    import tempfile
    unknown = sorted(set(checks or ()) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; valid: {', '.join(CHECKS)}")
    wanted = [c for c in CHECKS if checks is None or c in set(checks)]
    with tempfile.TemporaryDirectory(prefix="zsqbench-check-") as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp)
        suite = _Conformance(method, out, protocol, model, bits, seed, fast, cli)
        results, failed = {}, []
        for name in wanted:
            try:
                getattr(suite, name)()
                results[name] = "ok"
            except _Check as e:
                results[name] = f"skipped: {e}"
            except Exception as e:  # noqa: BLE001 — every failure is reported, with the check's name
                text = str(e) if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}"
                results[name] = f"FAILED: {text}"
                failed.append(f"{name} ({CHECKS[name].split(':')[0]}): {text}")
                if name == "registers" and suite.entry is None:
                    break  # nothing else can run on an unregistered method
    if failed:
        raise AssertionError(f"check_method({method!r}): {len(failed)} of {len(wanted)} check(s) failed:\n  - "
                             + "\n  - ".join(f.replace("\n", "\n    ") for f in failed))
    return results


class _Conformance:
    def __init__(self, method, out, protocol, model, bits, seed, fast, cli):
        from zsqbench.spine.registry import get_registry
        self.method, self.out, self.protocol, self.model, self.bits, self.seed = method, out, protocol, model, bits, seed
        self.fast, self.cli = fast, cli
        self.registry = get_registry()
        self.entry = self.registry._lookup("methods", method)
        self._records: dict[str, dict] = {}
        self._opened: list = []
        self._overrides: dict | None = None

    # --- helpers ---

    def _method(self):
        if self.entry is None:
            raise _Check(f"method {self.method!r} is not registered")
        return self.entry.obj

    def _classes(self) -> dict:
        m = self._method()
        return {kind: self.registry.get(kind + "s", getattr(m, kind)) for kind in ("synthesizer", "distiller",
                                                                                     "quantizer")}

    def overrides(self) -> dict:
        """The tiny-budget ``--set`` values for this method (only keys it has, only where they lower a value)."""
        if self._overrides is None:
            self._overrides = {}
            if self.fast:
                from zsqbench.spine.loop import resolve
                config = resolve(_spec(self.method, model=self.model, wbits=self.bits, abits=self.bits,
                                       protocol=self.protocol, seed=self.seed, overrides=None)).config
                for key, tiny in FAST:
                    section, name = key.split(".")
                    value = config.get(section, {}).get(name, "absent")
                    if key == "eval.every" and value:
                        self._overrides[key] = tiny
                    elif isinstance(value, int) and not isinstance(value, bool) and value > tiny:
                        self._overrides[key] = tiny
        return self._overrides

    def _run(self, tag: str) -> dict:
        """The smoke run ``tag`` (run once; run "a" under the audit of :meth:`no_real_data`)."""
        if tag not in self._records:
            if tag == "a":
                _AUDIT["plugin_files"] = {str(f.resolve()) for f in self._plugin_files().values()}
                _AUDIT["events"] = []
                _install_audit()
                _AUDIT["on"] = True
            try:
                self._records[tag] = run_method(self.method, out_dir=self.out / f"run-{tag}", protocol=self.protocol,
                                                model=self.model, bits=self.bits, seed=self.seed,
                                                overrides=self.overrides(), cache_dir=self.out / f"cache-{tag}")
            finally:
                if tag == "a":
                    _AUDIT["on"] = False
                    self._opened = list(_AUDIT["events"])
        return self._records[tag]

    def _plugin_files(self) -> dict[str, Path]:
        """{module: file} of the method's own code: the module that registered it and the modules of its components'
        classes (and their bases) outside zsqbench's core."""
        import importlib
        from zsqbench.spine.provenance import module_source_files, with_sibling_imports
        modules = {self.entry.module} if self.entry.module and self.entry.module != "zsqbench.builtin" else set()
        for cls in self._classes().values():
            modules |= {c.__module__ for c in cls.__mro__ if c.__module__ not in ("builtins", "abc")
                        and not c.__module__.startswith(("zsqbench.", "pydantic")) and c.__module__ != "zsqbench"}
        files = {}
        for module in sorted(modules):
            if module.startswith("zsqbench_plugins"):  # a built-in: its own modules, not every built-in's
                for name in with_sibling_imports([module]):
                    f = getattr(importlib.import_module(name), "__file__", None)
                    if f:
                        files[name] = Path(f)
            else:
                for name, f in module_source_files(module.split(".")[0]):
                    files[name] = f
        return files

    # --- the checks ---

    def registers(self) -> None:
        import warnings
        from zsqbench.spine.registry import Registry, get_plugin_manager
        if self.entry is None:
            names = ", ".join(sorted(self.registry.methods))
            failed = [f"{p['entry_point']} ({p['distribution']}): {p['status']}" for p in self.registry.plugins
                      if p["status"] != "loaded"]
            raise AssertionError(f"method {self.method!r} is not registered (registered: {names}); is its package "
                                 "installed (pip install -e .)?" + (f" plugins not loaded: {'; '.join(failed)}"
                                                                    if failed else ""))
        problems = []
        for kind in ("synthesizer", "distiller", "quantizer"):
            name = getattr(self.entry.obj, kind)
            if self.registry._lookup(kind + "s", name) is None:
                problems.append(f"its {kind} {name!r} is not registered")
        hook = None
        for _, plugin in get_plugin_manager().list_name_plugin():
            if getattr(plugin, "__name__", None) == self.entry.module:
                hook = getattr(plugin, "zsqbench_register", None)
        if hook is None:
            problems.append(f"no loaded entry-point module {self.entry.module!r} with a zsqbench_register hook")
        else:
            stage = Registry(_provider=self.entry.provider, _distribution=self.entry.distribution,
                             _module=self.entry.module)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    hook(registry=stage)
            except Exception as e:  # noqa: BLE001
                problems.append(f"its zsqbench_register hook raises when called again: {type(e).__name__}: {e}")
            else:
                for table in Registry.KINDS:
                    added = set(getattr(stage, table))
                    for name in sorted(added):
                        owner = self.registry._lookup(table, name)
                        if owner is None or owner.module != self.entry.module:
                            who = "nobody" if owner is None else owner.provider
                            problems.append(f"the hook adds {table[:-1]} {name!r}, but the registry has it from "
                                            f"{who}: the plugin registered only part of what it adds (rename it)")
                    held = {n for n, e in getattr(self.registry, table).items() if e.module == self.entry.module}
                    if held - added:
                        problems.append(f"a second call of the hook does not add {table} {sorted(held - added)}: "
                                        "registration must not depend on state")
        if problems:
            raise AssertionError("; ".join(problems))

    def settings(self) -> None:
        import io
        from rich.console import Console
        from zsqbench.frontends.listing import settings_table
        from zsqbench.spine.loop import resolve
        from zsqbench.spine.settings import defaults_of
        problems = []
        for kind, cls in self._classes().items():
            model = getattr(cls, "Settings", None)
            if model is None or not hasattr(model, "model_fields"):
                problems.append(f"{kind} {cls.name!r} declares no Settings model")
                continue
            missing = sorted(set(model.model_fields) - set(defaults_of(model)))
            if missing:
                problems.append(f"{kind} {cls.name!r} has settings without a default: {', '.join(missing)}")
        if self._method().settings_for(self.protocol) is None:
            problems.append(f"no settings for protocol {self.protocol!r}: add a {self.protocol!r} (or '*') entry")
        else:
            resolve(_spec(self.method, model=self.model, wbits=self.bits, abits=self.bits, protocol=self.protocol,
                          seed=self.seed, overrides=None))
        text = io.StringIO()
        Console(file=text, width=1000).print(settings_table(self.registry, self.method))
        for kind, cls in self._classes().items():
            for key in getattr(cls, "Settings").model_fields:
                if f"{kind}.{key}" not in text.getvalue():
                    problems.append(f"`zsqbench list settings {self.method}` does not list {kind}.{key}")
        if problems:
            raise AssertionError("; ".join(problems))

    def smoke_run(self) -> None:
        record = check_record(self._run("a"))
        provider = self.entry.provider
        assert record["method"]["provider"] == provider, \
            f"the record names provider {record['method']['provider']!r}, not {provider!r}"
        assert self.entry.distribution in record.get("code", {}), \
            f"the record's code fingerprints do not name {self.entry.distribution}"

    def deterministic(self) -> None:
        a, b = self._run("a"), self._run("b")
        diffs = []
        for key in ("status", "final_top1", "eval_history", "train_metrics"):
            if a.get(key) != b.get(key):
                diffs.append(f"{key}: {json.dumps(a.get(key))[:120]} vs {json.dumps(b.get(key))[:120]}")
        syn_a, syn_b = (r.get("diagnostics", {}).get("synthesis", {}).get("final") for r in (a, b))
        if syn_a != syn_b:
            diffs.append(f"synthesis: {syn_a} vs {syn_b}")
        if diffs:
            raise AssertionError(f"two runs with seed {self.seed} differ — " + "; ".join(diffs) + ". Draw every "
                                 "random number from torch's global generator (the engine seeds it) or from a "
                                 "torch.Generator seeded with ctx.seed")

    def bad_setting(self) -> None:
        from zsqbench.spine.errors import UserError
        from zsqbench.spine.loop import run
        from zsqbench.spine.settings import check as settings_check
        empty = self.out / "no-data"
        empty.mkdir(parents=True, exist_ok=True)
        problems = []
        cases = [(f"{kind}.{_BAD_KEY}", 1) for kind in ("synthesizer", "distiller", "quantizer")]
        for kind, cls in self._classes().items():
            if kind == "quantizer":
                continue
            for field in cls.Settings.model_fields:
                for value in _BAD_VALUES:
                    try:
                        settings_check(cls.Settings, {**cls.defaults, field: value}, kind)
                    except UserError:  # a value its Settings refuse: the run must refuse it, in one line
                        cases.append((f"{kind}.{field}", value))
                        break
        for key, value in cases:
            out = self.out / "bad-setting"
            spec = _spec(self.method, model=self.model, wbits=self.bits, abits=self.bits, protocol=self.protocol,
                         seed=self.seed, overrides={key: value}, out=str(out), data_root=str(empty),
                         cache_dir=str(self.out / "cache-bad"), device="cpu")
            try:
                run(spec)
            except UserError as e:
                msg = str(e)
                if key not in msg:
                    problems.append(f"--set {key}={json.dumps(value)} fails with an error that does not name it "
                                    f"(before any work?): {msg}")
                elif "\n" in msg:
                    problems.append(f"--set {key}={json.dumps(value)}: the error is not one line: {msg!r}")
            except Exception as e:  # noqa: BLE001
                problems.append(f"--set {key}={json.dumps(value)} raises {type(e).__name__}: {e} (a bug, not a "
                                "one-line error): declare the setting's type/range in Settings")
            else:
                problems.append(f"--set {key}={json.dumps(value)} is accepted")
            written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
            if written:
                problems.append(f"--set {key}={json.dumps(value)} wrote {written[0]}")
        if self.cli and not problems:
            key = f"synthesizer.{_BAD_KEY}"
            try:
                assert_one_line_error("run", "--method", self.method, "--model", self.model, "--bits", self.bits,
                                      "--protocol", self.protocol, "--seed", self.seed, "--set", f"{key}=1",
                                      "--data-root", empty, "--device", "cpu", "--out", self.out / "bad-cli",
                                      contains=[key])
            except AssertionError as e:
                problems.append(f"zsqbench run --set {key}=1: {e}")
        if problems:
            raise AssertionError("; ".join(problems))

    def cache_code(self) -> None:
        import importlib
        import importlib.util
        import shutil
        import tempfile
        from zsqbench.synthesizer.imageopt import ImageSetSynthesizer
        synth = method_components(self.method, protocol=self.protocol, model=self.model)["synthesizer"]
        if not isinstance(synth, ImageSetSynthesizer) and not hasattr(synth, "cache_path"):
            raise _Check(f"synthesizer {synth.name!r} caches nothing")
        ctx = smoke_context(self.method, model=self.model, wbits=self.bits, abits=self.bits, seed=self.seed,
                            protocol=self.protocol, cache_dir=self.out / "cache-key")
        before = synth.cache_path(ctx)
        if before is None:
            raise _Check("the teacher has no sha256, so nothing is cached")
        module = importlib.import_module(type(synth).__module__)
        top = module.__name__.split(".")[0]
        spec = importlib.util.find_spec(top)
        with tempfile.TemporaryDirectory(prefix="zsqbench-edit-") as site:
            if spec.submodule_search_locations:
                root = Path(list(spec.submodule_search_locations)[0])
                shutil.copytree(root, Path(site) / top, ignore=shutil.ignore_patterns("__pycache__"))
                edited = Path(site) / top / Path(module.__file__).relative_to(root)
            else:
                edited = Path(site) / Path(module.__file__).name
                shutil.copy(module.__file__, edited)
            edited.write_text(edited.read_text() + "\n_zsqbench_check_method_edit = 1  # an edit, no version bump\n")
            # the same context, without loading the teacher again: the key needs only its hash, model and card
            given = {"hash": ctx.teacher_hash, "card": ctx.teacher_card, "seed": ctx.seed, "cache": ctx.cache_dir}
            script = ("import importlib, json, sys, torch\n"
                      "from zsqbench.spine.interfaces import RunContext\n"
                      "from zsqbench.testing import method_components\n"
                      f"s = method_components({self.method!r}, protocol={self.protocol!r}, model={self.model!r})"
                      "['synthesizer']\n"
                      "from zsqbench.spine.loop import resolve, RunSpec\n"
                      f"r = resolve(RunSpec(method={self.method!r}, model={self.model!r}, wbits={self.bits}, "
                      f"abits={self.bits}, protocol={self.protocol!r}))\n"
                      "g = json.loads(sys.argv[1])\n"
                      "ctx = RunContext(teacher=None, student=None, model=r.model_spec, dataset=r.dataset, "
                      "wbits=0, abits=0, quantizer=None, device=torch.device('cpu'), seed=g['seed'], total_steps=0, "
                      "warmup_steps=0, cache_dir=g['cache'], teacher_hash=g['hash'], teacher_card=g['card'])\n"
                      "print(json.dumps({'file': importlib.import_module(type(s).__module__).__file__, "
                      "'path': str(s.cache_path(ctx))}))\n")
            env = {**os.environ, "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [site, os.environ.get("PYTHONPATH")]))}
            proc = subprocess.run([sys.executable, "-c", script, json.dumps(given)], capture_output=True, text=True,
                                  env=env, timeout=600)
            if proc.returncode != 0:
                raise AssertionError(f"the edited copy of {top} does not load: {proc.stderr.strip()[-500:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            if Path(got["file"]).resolve() != edited.resolve():
                raise _Check(f"the edited copy could not shadow {module.__file__} (imported {got['file']})")
        if Path(got["path"]) == before:
            raise AssertionError(
                f"an edit to {Path(module.__file__).name} (no version bump) keeps the synthetic-set cache key "
                f"({before.name}): a set made by the old code would be reused. Key the set by the code — "
                "ImageSetSynthesizer.cache_key_fields does (its 'code' field); an override must keep it")

    def no_real_data(self) -> None:
        import ast
        files = self._plugin_files()
        problems = []
        for name, path in sorted(files.items()):
            for node in ast.walk(ast.parse(path.read_text())):
                mods = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                        else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                for m in mods:
                    if (m == "zsqbench" or m.startswith("zsqbench.")) and m not in ("zsqbench.api", "zsqbench.testing"):
                        problems.append(f"{path.name} imports {m}: a plugin imports only zsqbench.api")
        self._run("a")
        events = self._opened
        data = {p for p, outer in events if outer and outer[0] == "evaluation"}
        data_dirs = {str(Path(p).parent) for p in data}
        for path, outer in events:
            if outer and outer[0] == "plugin" and (path in data or str(Path(path).parent) in data_dirs):
                problems.append(f"{Path(outer[1]).name} opened {path}, real data the evaluation reads")
        if problems:
            raise AssertionError("; ".join(sorted(set(problems))))


_CODE_SUFFIXES = {".py", ".pyc", ".pyi", ".so", ".pth"}
_AUDIT: dict[str, Any] = {"on": False, "installed": False, "plugin_files": set(), "events": []}


def _install_audit() -> None:
    """A process-wide audit hook (never removable, so it is installed once and idle unless a check is on) that
    records each file opened (not code) with who asked for it: the method's own code or the evaluation
    (``zsqbench/evaluation/``), whichever is outermost on the stack — the evaluation calling a plugin's dataset
    loader is the evaluation; a method calling the evaluation's loaders is the method."""
    if _AUDIT["installed"]:
        return

    def hook(event, args):
        if not _AUDIT["on"] or event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        try:
            path = Path(os.fsdecode(args[0])).resolve()
        except (OSError, ValueError):
            return
        if path.suffix in _CODE_SUFFIXES or "__pycache__" in path.parts:
            return  # imports and source reads, not data
        outer = None  # the outermost of the method's code and the evaluation: who asked for the file
        frame = sys._getframe(1)
        while frame is not None:
            fn = frame.f_code.co_filename
            if fn in _AUDIT["plugin_files"]:
                outer = ("plugin", fn)
            elif f"{os.sep}zsqbench{os.sep}evaluation{os.sep}" in fn:
                outer = ("evaluation", fn)
            frame = frame.f_back
        _AUDIT["events"].append((str(path), outer))

    sys.addaudithook(hook)
    _AUDIT["installed"] = True
