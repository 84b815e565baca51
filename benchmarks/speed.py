"""This tree against a fixed baseline commit, interleaved in one process (issue 29).

    .venv/bin/python benchmarks/speed.py [--quick] [--baseline d7c716d] [--device cpu|cuda] [--note "..."]

The baseline commit's tracked files are extracted (``git archive``) into ``--baseline-dir`` (default
``.speed-baseline/<commit>``, created on first use) and imported beside this tree's: each tree's ``zsqbench`` and ``zsqbench_plugins`` modules
are loaded once and swapped into ``sys.modules`` before each of its iterations (outside the timed region), so
both run in the same process, on the same thread, on the same teacher weights. Iterations alternate
baseline/new (ABBA order per round, so a machine whose speed drifts affects both alike). Each phase:

* ``train:<method>``: one training step of the method as ``zsqbench run`` builds it on the ``cpu`` protocol (its
  own batch size, synthesizer, distiller, settings; embedded ResNet-20 W3A3): the generator step and the student
  step for gdfq, adadfq, bag, qimera; the student step after synthesis for hast, intraq, synq, zeroq-kd (their set
  is a small one built for the benchmark: the step's cost does not depend on the images);
* ``synthesis:intraq``: image-set synthesis (64 images, the ``cpu`` batch) over ``--synthesis-iterations``
  iterations, per iteration (the call's set-up and final teacher-agreement pass are included, in both trees);
* ``eval``: the 10 000-image evaluation of the quantized student (gdfq's, else the first method's; ``--quick``:
  2 000 images), the protocol's batch of 100.

Reported per phase: median thread CPU time and wall time of each tree, the ratio new/baseline of each, and the
FLOPs of one iteration (torch's FlopCounterMode: convolutions and matrix products, forward and backward) with the
achieved rate beside the machine's measured single-thread sgemm rate. The JSON result goes to
``benchmarks/speed/`` with the machine, the torch threads and the load average before and after; say what else
ran with ``--note``. The new tree runs with its default speed switches, or those of ``--speed`` (``ZSQBENCH_SPEED``
syntax, zsqbench/spine/speed.py): turning one off at a time measures what each change pays.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "d7c716d"  # main just before the speed work merged: the typed run plan is in both trees
GENERATOR_METHODS = ["gdfq", "adadfq", "bag", "qimera"]
IMAGESET_METHODS = ["hast", "intraq", "synq", "zeroq-kd"]
PACKAGES = ("zsqbench", "zsqbench_plugins")


def _ours(name: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in PACKAGES)


# the modules the benchmark drives, by short name: where each lives in the new layout (issue 26) and before it
SPINE_MODULES = {name: (f"zsqbench.spine.{name}", f"zsqbench.{name}")
                 for name in ("loop", "interfaces", "registry", "speed")}


class Tree:
    """One checkout of zsqbench loaded as its own set of modules."""

    def __init__(self, label: str, root: Path):
        self.label, self.root = label, root
        saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _ours(k)}
        sys.path.insert(0, str(root))
        try:
            importlib.invalidate_caches()
            spec = importlib.util.spec_from_file_location(
                "zsqbench_plugins", root / "plugins" / "__init__.py", submodule_search_locations=[str(root / "plugins")])
            plugins = importlib.util.module_from_spec(spec)
            sys.modules["zsqbench_plugins"] = plugins
            spec.loader.exec_module(plugins)
            for name in ("zsqbench", "zsqbench.teacher.zoo", "zsqbench.evaluation.evaluate",
                         "zsqbench.synthesizer.imageopt", "zsqbench.synthesizer.generator"):
                importlib.import_module(name)
            self.alias = {}
            for logical, candidates in SPINE_MODULES.items():
                for name in candidates:
                    try:
                        importlib.import_module(name)
                    except ImportError:
                        continue
                    self.alias[logical] = name
                    break
            self.modules = {k: v for k, v in sys.modules.items() if _ours(k)}
            zsq_file = Path(self.modules["zsqbench"].__file__).resolve()
            if root.resolve() not in zsq_file.parents:
                raise RuntimeError(f"{label}: imported {zsq_file}, not the tree at {root}")
            self.registry = self.m("registry").get_registry()  # loads the plugins of this tree
            self.modules = {k: v for k, v in sys.modules.items() if _ours(k)}
        finally:
            for k in [k for k in sys.modules if _ours(k)]:
                del sys.modules[k]
            sys.path.remove(str(root))
            sys.modules.update(saved)

    def m(self, name: str):
        """A module by its full name, or a spine module by its short name (``loop``, ``speed``: None if absent)."""
        if name in SPINE_MODULES:
            return self.modules.get(self.alias.get(name, ""))
        return self.modules[name]

    @contextlib.contextmanager
    def active(self):
        saved = {k: sys.modules.pop(k) for k in list(sys.modules) if _ours(k)}
        sys.modules.update(self.modules)
        try:
            yield self
        finally:
            for k in [k for k in sys.modules if _ours(k)]:
                del sys.modules[k]
            sys.modules.update(saved)

    def place(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """What this tree's loop does to a network before it runs (channels-last where its switches say so)."""
        speed = self.m("speed")
        return speed.to_memory_format(module, device) if speed is not None else module

    def speed_switches(self, device) -> dict | None:
        speed = self.m("speed")
        return speed.current().resolved(device) if speed is not None else None


def baseline_tree(commit: str, where: Path | None) -> Path:
    if where is not None and (where / "zsqbench" / "__init__.py").exists():
        return where  # a checkout made elsewhere (a machine whose copy of this tree has no git history)
    full = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
                          capture_output=True, text=True, check=True).stdout.strip()
    path = where or ROOT / ".speed-baseline" / full[:12]
    if not (path / "zsqbench" / "__init__.py").exists():
        # the commit's tracked files (git archive: a checkout that registers no worktree in the repository)
        path.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", full], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive, check=True, capture_output=True)
    return path


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- what is timed -------------------------------------------------------------------------------------------

def _resolve(loop, spec) -> dict:
    """What a phase needs from a resolved run, from either tree: the typed run plan (issue 26 onwards) or the dict
    ``resolve()`` returned before it (a baseline commit may be either)."""
    r = loop.resolve(spec)
    if isinstance(r, dict):
        return {"instances": r["instances"], "model_spec": r["model_spec"], "dataset": r["dataset"],
                "train": r["config"]["train"], "batch_size": int(r["config"]["train"]["batch_size"]), "card": r["card"]}
    return {"instances": r.build_components(), "model_spec": r.model_spec, "dataset": r.dataset, "train": r.train,
            "batch_size": int(r.train.batch_size), "card": dict(r.card)}

def build_train(tree: Tree, method: str, device: torch.device, warmup: int = 3):
    """One training step of ``method`` as the loop runs it, and the objects the other phases reuse."""
    loop = tree.m("loop")
    imageopt = tree.m("zsqbench.synthesizer.imageopt")
    first = _resolve(loop, loop.RunSpec(method=method, model="resnet20", wbits=3, abits=3, protocol="cpu"))
    overrides = []
    if isinstance(first["instances"]["synthesizer"], imageopt.ImageSetSynthesizer):
        overrides = ["synthesizer.num_images=64", "synthesizer.synthesis_batch_size=64", "synthesizer.iterations=1"]
    resolved = _resolve(loop, loop.RunSpec(method=method, model="resnet20", wbits=3, abits=3, protocol="cpu",
                                           overrides=overrides))
    synth, distiller, quantizer = (resolved["instances"][k] for k in ("synthesizer", "distiller", "quantizer"))
    spec, train = resolved["model_spec"], resolved["train"]
    teacher, _ = tree.m("zsqbench.teacher.zoo").load_teacher(spec)
    teacher = tree.place(teacher.to(device), device)
    loop.seed_everything(0)
    student = tree.place(quantizer.quantize(teacher, 3, 3).to(device).eval(), device)
    ctx = tree.m("interfaces").RunContext(
        teacher=teacher, student=student, model=spec, dataset=resolved["dataset"], wbits=3, abits=3,
        quantizer=quantizer, device=device, seed=0, total_steps=1000, warmup_steps=warmup)  # no teacher hash: no cache
    synth.prepare(ctx)
    distiller.setup(ctx)
    bs = resolved["batch_size"]
    quantizer.set_calibrating(student, True)
    for _ in range(warmup):
        images = synth.calibration_batch(ctx, bs).images  # a generator step needs autograd
        with torch.no_grad():
            student(images)
    quantizer.set_calibrating(student, False)
    opt = loop._optimizer(train, [p for p in student.parameters() if p.requires_grad])

    def step():
        batch = synth.next_batch(ctx, bs)
        loss, _ = distiller.loss(ctx, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, {"resolved": resolved, "teacher": teacher, "student": student, "batch": bs}


def build_synthesis(tree: Tree, device: torch.device, iterations: int, method: str = "intraq"):
    loop = tree.m("loop")
    resolved = _resolve(loop, loop.RunSpec(
        method=method, model="resnet20", wbits=3, abits=3, protocol="cpu",
        overrides=["synthesizer.num_images=64", "synthesizer.synthesis_batch_size=64",
                   f"synthesizer.iterations={iterations}"]))
    synth, spec = resolved["instances"]["synthesizer"], resolved["model_spec"]
    teacher, _ = tree.m("zsqbench.teacher.zoo").load_teacher(spec)
    teacher = tree.place(teacher.to(device), device)
    ctx = tree.m("interfaces").RunContext(
        teacher=teacher, student=None, model=spec, dataset=resolved["dataset"], wbits=3, abits=3, quantizer=None,
        device=device, seed=0, total_steps=0, warmup_steps=0)

    def run():
        synth.synthesize(ctx)
    return run


def build_eval(tree: Tree, device: torch.device, limit: int, trained: dict):
    resolved = trained["resolved"]
    evaluate = tree.m("zsqbench.evaluation.evaluate")
    evaluator = evaluate.Evaluator(resolved["model_spec"].dataset, None, device, limit, 100, "test",
                                   resolved["card"])
    student = trained["student"]

    def run():
        evaluator.top1(student)
    return run


# --- measuring -----------------------------------------------------------------------------------------------

def sgemm_rate(device: torch.device, n: int = 1024, repeat: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    clock = time.thread_time if device.type == "cpu" else time.perf_counter  # thread time: the phases' clock
    t0 = clock()
    for _ in range(repeat):
        a @ b
    _sync(device)
    return 2 * n ** 3 * repeat / (clock() - t0) / 1e9


def count_flops(tree: Tree, fn) -> int | None:
    from torch.utils.flop_counter import FlopCounterMode
    try:
        with tree.active(), FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())
    except Exception:  # a counter that cannot follow an op: report none rather than a wrong figure
        return None


def interleave(trees: list[Tree], fns: list, rounds: int, device: torch.device, warmup: int = 1) -> dict:
    times = {t.label: {"thread": [], "wall": []} for t in trees}
    for tree, fn in zip(trees, fns):
        with tree.active():
            for _ in range(warmup):
                fn()
    for r in range(rounds):
        order = list(zip(trees, fns)) if r % 2 == 0 else list(zip(trees, fns))[::-1]  # ABBA
        for tree, fn in order:
            with tree.active():
                _sync(device)
                c0, w0 = time.thread_time(), time.perf_counter()
                fn()
                _sync(device)
                times[tree.label]["thread"].append(time.thread_time() - c0)
                times[tree.label]["wall"].append(time.perf_counter() - w0)
    return times


def summarise(times: dict, per: int = 1, flops: dict | None = None, sgemm: float | None = None) -> dict:
    med = {label: {k: statistics.median(v) / per for k, v in kinds.items()} for label, kinds in times.items()}
    out = {"n": len(times["baseline"]["wall"]),
           "baseline_ms": {k: round(v * 1e3, 2) for k, v in med["baseline"].items()},
           "new_ms": {k: round(v * 1e3, 2) for k, v in med["new"].items()},
           "ratio_thread": round(med["new"]["thread"] / med["baseline"]["thread"], 3),
           "ratio_wall": round(med["new"]["wall"] / med["baseline"]["wall"], 3)}
    if flops:
        out["gflop"] = {k: (round(v / per / 1e9, 3) if v else None) for k, v in flops.items()}
        out["gflop_per_s_thread"] = {k: (round(v / per / 1e9 / med[k]["thread"], 1) if v else None)
                                     for k, v in flops.items()}
        if sgemm:
            out["fraction_of_sgemm_rate"] = {k: (round(v / per / 1e9 / med[k]["thread"] / sgemm, 2) if v else None)
                                             for k, v in flops.items()}
    return out


def machine(device: torch.device) -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"host": platform.node(), "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "python": platform.python_version()}


def git_head() -> dict:
    def git(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help=f"commit to compare with (default {DEFAULT_BASELINE})")
    ap.add_argument("--baseline-dir", type=Path, default=None, help="its checkout (extracted with git archive if missing)")
    ap.add_argument("--quick", action="store_true", help="5 rounds, 2 000 evaluation images")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--methods", nargs="+", default=GENERATOR_METHODS + IMAGESET_METHODS)
    ap.add_argument("--rounds", type=int, default=None, help="alternations per training phase (default 12, quick 5)")
    ap.add_argument("--eval-rounds", type=int, default=None, help="default 3, quick 3")
    ap.add_argument("--synthesis-iterations", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: one grid slot)")
    ap.add_argument("--speed", default=None,
                    help="the new tree's speed switches (ZSQBENCH_SPEED syntax, e.g. channels_last=0): one change at a time")
    ap.add_argument("--note", default="", help="what else ran on the machine (load)")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/speed/<time>-<dev>.json)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (5 if args.quick else 12)
    eval_rounds = args.eval_rounds or 3
    eval_limit = 2000 if args.quick else 10000
    load_before = os.getloadavg()
    t_start = time.perf_counter()

    if args.speed is not None:
        os.environ["ZSQBENCH_SPEED"] = args.speed  # read when the new tree's speed module is imported
    base = Tree("baseline", baseline_tree(args.baseline, args.baseline_dir))
    new = Tree("new", ROOT)
    trees = [base, new]
    sgemm = sgemm_rate(device)
    result = {"issue": 29, "baseline": subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.baseline],
                                                      capture_output=True, text=True).stdout.strip() or args.baseline,
              "baseline_tree": str(base.root),
              "head": git_head(), "speed_switches": new.speed_switches(device), "machine": machine(device),
              "load_avg_before": [round(x, 2) for x in load_before], "note": args.note,
              "quick": args.quick, "rounds": rounds, "sgemm_gflop_per_s": round(sgemm, 1), "phases": {}}

    def report(name: str, summary: dict) -> None:
        result["phases"][name] = summary
        print(f"{name:20s} base {summary['baseline_ms']['thread']:9.1f} ms  new {summary['new_ms']['thread']:9.1f} ms"
              f"  thread x{summary['ratio_thread']:.3f}  wall x{summary['ratio_wall']:.3f}", flush=True)

    trained = {}
    for method in args.methods:
        fns = []
        for tree in trees:
            with tree.active():
                torch.manual_seed(0)
                fn, info = build_train(tree, method, device)
            fns.append(fn)
            if method == "gdfq" or tree.label not in trained:  # the evaluated student: gdfq's, else the first
                trained[tree.label] = info
        flops = {t.label: count_flops(t, f) for t, f in zip(trees, fns)}
        report(f"train:{method}", summarise(interleave(trees, fns, rounds, device), 1, flops, sgemm))

    fns = []
    for tree in trees:
        with tree.active():
            fns.append(build_synthesis(tree, device, args.synthesis_iterations))
    flops = {t.label: count_flops(t, f) for t, f in zip(trees, fns)}
    report("synthesis:intraq", summarise(interleave(trees, fns, max(3, rounds // 2), device),
                                         args.synthesis_iterations, flops, sgemm))

    if trained:
        fns = []
        for tree in trees:
            with tree.active():
                fns.append(build_eval(tree, device, eval_limit, trained[tree.label]))
        flops = {t.label: count_flops(t, f) for t, f in zip(trees, fns)}
        summary = summarise(interleave(trees, fns, eval_rounds, device, warmup=0), 1, flops, sgemm)
        summary["images"] = eval_limit
        report("eval", summary)

    result["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    if not args.no_save:
        out = args.out or ROOT / "benchmarks" / "speed" / (
            f"{dt.datetime.now(dt.timezone.utc):%Y%m%d-%H%M}-{device.type}{'-quick' if args.quick else ''}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    print(json.dumps({k: {"thread": v["ratio_thread"], "wall": v["ratio_wall"]} for k, v in result["phases"].items()}))


if __name__ == "__main__":
    main()
