"""The CUDA check (issue 16), run by ``benchmarks/gpu_check.sh``: does every path of zsqbench build and train on a
GPU, and how fast. Stages, each through the real command line, each written into the JSON summary as it ends (a
killed check keeps what it measured):

1. ``smoke``: a sweep of every method on both embedded teachers (``zsqbench sweep -p smoke``);
2. ``cpu_families``: one ``cpu``-protocol job per method family (gdfq, adadfq, intraq, hast, zeroq) on ResNet-20 W3A3;
3. ``step_time``: benchmarks/step_time.py and benchmarks/method_step_time.py on the GPU and on the CPU, and ratios;
   ``speed``: benchmarks/speed.py --quick on the GPU (this tree against the baseline commit, interleaved; issue 29);
4. ``paper_first_steps``: the ``paper`` protocol's first steps for every method with paper settings on
   ResNet-20@cifar100, with a random-initialised teacher (``--weights``) and a fabricated CIFAR-100-format test set
   (``--data-root``): no download. The records are off-protocol (``--set``, other weights) by design; the accuracy is
   that of a random teacher and means nothing, the step times and peak memory are the point.

``--dry`` runs the same stages on the CPU with tiny budgets and one item per stage, so that CI keeps the script
working; its figures mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 450  # a GPU run must end within 8 minutes: stages that would start later are skipped, and say so
FAMILIES = ["gdfq", "adadfq", "intraq", "hast", "zeroq"]
PAPER_MODEL = "resnet20@cifar100"


class Check:
    def __init__(self, args):
        self.dry = args.dry
        self.device = "cpu" if args.dry else args.device
        self.work = Path(args.work).resolve()
        self.summary_path = Path(args.summary).resolve()
        self.t0 = time.perf_counter()
        self.budget_s = args.budget_s
        self.summary = {"mode": "dry (CPU, tiny budgets: the figures mean nothing)" if self.dry else "gpu",
                        "device": self.device, "torch": torch.__version__, "cuda": torch.version.cuda,
                        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        "cpu_count": os.cpu_count(), "stages": {}, "failures": []}
        self.fmnist_root = self.find_or_fabricate_fmnist()

    def find_or_fabricate_fmnist(self) -> str | None:
        """The embedded teachers' test set where this machine has it; else random images in its format, so the
        CUDA paths still run (their top-1 then means nothing, and the summary says so)."""
        from zsqbench.evaluation.data import load_fmnist
        from zsqbench.spine.errors import UserError
        try:
            load_fmnist("test")
            self.summary["fmnist"] = "real (system folder or $ZSQBENCH_DATA_ROOT)"
            return None
        except UserError:
            root = self.work / "fake-fmnist"
            write_fake_fmnist(root, 5000)
            self.summary["fmnist"] = "fabricated (no Fashion-MNIST on this machine): smoke/cpu top-1 mean nothing"
            return str(root)

    def elapsed(self) -> float:
        return round(time.perf_counter() - self.t0, 1)

    def save(self) -> None:
        self.summary["wall_s"] = self.elapsed()
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.summary_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.summary, indent=2))
        tmp.replace(self.summary_path)

    def stage(self, name: str, fn) -> None:
        if self.elapsed() > self.budget_s:
            self.summary["stages"][name] = {"skipped": f"out of time ({self.elapsed()} s of {self.budget_s} s used)"}
        else:
            t = time.perf_counter()
            print(f"[gpu_check] {name} ...", flush=True)
            try:
                result = fn()
            except Exception as e:  # one stage's failure is a finding; the other stages still run
                result = {"error": f"{type(e).__name__}: {e}"[:2000]}
                self.summary["failures"].append(name)
            result["wall_s"] = round(time.perf_counter() - t, 1)
            self.summary["stages"][name] = result
            print(f"[gpu_check] {name}: {result['wall_s']} s{' FAILED' if 'error' in result else ''}", flush=True)
        self.save()

    def cli(self, *args, timeout: float = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "COLUMNS": "200"}
        res = subprocess.run([sys.executable, "-m", "zsqbench.frontends.cli", *map(str, args)], capture_output=True,
                             text=True, timeout=timeout, env=env, cwd=ROOT)
        if res.returncode not in (0, 3):  # 3: diverged, a result
            raise RuntimeError(f"zsqbench {' '.join(map(str, args[:3]))} ... exit {res.returncode}: "
                               f"{(res.stderr or res.stdout).strip()[-1500:]}")
        return res

    def script(self, name: str, *args, timeout: float = 300) -> dict:
        res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *map(str, args)], capture_output=True,
                             text=True, timeout=timeout, cwd=ROOT)
        if res.returncode != 0:
            raise RuntimeError(f"{name} exit {res.returncode}: {res.stderr.strip()[-1500:]}")
        return json.loads(res.stdout)

    # --- stages -----------------------------------------------------------------------------------------------

    def sweep(self, name: str, protocol: str, methods: list[str] | None, models: str, extra: list[str],
              parallel: int) -> dict:
        out = self.work / name
        args = ["sweep", "-p", protocol, "--models", models, "--device", self.device, "-o", out, "--cache-dir",
                self.work / "cache", "-j", parallel, "-q", *extra]
        if methods:
            args += ["--methods", ",".join(methods)]
        if self.fmnist_root:
            args += ["--data-root", self.fmnist_root]
        res = self.cli(*args, timeout=min(600.0, max(60.0, self.budget_s + 30 - self.elapsed())))  # a hang: < 8 min
        runs = [run_figures(json.loads(p.read_text())) for p in sorted(out.glob("*/record.json"))]
        return {"command": "zsqbench " + " ".join(map(str, args)), "exit": res.returncode, "runs": runs,
                "failed_jobs": [p.parent.name for p in out.glob("*/log.txt") if not (p.parent / "record.json").exists()]}

    def smoke(self) -> dict:
        methods = ["noise"] if self.dry else None  # None: every method with smoke settings
        models = "resnet20@fmnist" if self.dry else "resnet20@fmnist,mobilenetv1@fmnist"
        tiny = ["--set", "train.warmup_steps=1", "--set", "eval.limit=100"] if self.dry else []
        return self.sweep("smoke", "smoke", methods, models, tiny, 1 if self.dry else 4)

    def cpu_families(self) -> dict:
        tiny = ["--set", "train.steps=2", "--set", "train.warmup_steps=1", "--set", "eval.limit=100",
                "--set", "synthesizer.num_images=8", "--set", "synthesizer.iterations=1"] if self.dry else []
        methods = ["zeroq"] if self.dry else FAMILIES
        return self.sweep("cpu_families", "cpu", methods, "resnet20@fmnist", ["--bits", "3", "--seeds", "0", *tiny],
                          1 if self.dry else len(FAMILIES))

    def step_time(self) -> dict:
        quick = ["--repeat", "1", "--batch", "4"] if self.dry else ["--repeat", "20"]
        devices = ["cpu"] if self.dry else [self.device, "cpu"]
        loop = {d: self.script("step_time.py", *quick, "--device", d) for d in devices}
        methods = {d: self.script("method_step_time.py", *quick, "--warmup", "1" if self.dry else "5", "--device", d)
                   for d in devices}
        result = {"step_time": loop, "method_step_time": methods}
        if not self.dry:
            gpu, cpu = loop[self.device], loop["cpu"]
            result["cpu_over_gpu"] = {
                k: round(cpu[k] / gpu[k], 2) for k in ("fp_step_ms", "quant_step_ms", "generator_step_ms")}
            result["cpu_over_gpu"]["eval_images_per_s (gpu/cpu)"] = round(
                gpu["eval_images_per_s"] / cpu["eval_images_per_s"], 2)
            result["cpu_over_gpu"]["method_step_ms"] = {
                m: round(methods["cpu"]["median_step_ms"][m] / methods[self.device]["median_step_ms"][m], 2)
                for m in methods["cpu"]["median_step_ms"]}
        return result

    def speed(self) -> dict:
        """benchmarks/speed.py (issue 29): this tree against the baseline commit, interleaved, on the GPU, with the
        default speed switches and with channels-last forced on (``auto`` leaves it off on CUDA)."""
        # dry: HEAD as the baseline (a shallow CI clone has no older commit; the machinery is what is checked)
        quick = ["--quick", "--rounds", "1", "--eval-rounds", "1", "--methods", "gdfq", "--synthesis-iterations", "1",
                 "--baseline", "HEAD", "--baseline-dir", str(self.work / "baseline")] if self.dry else ["--quick"]
        if not self.dry and os.environ.get("ZSQBENCH_SPEED_BASELINE_DIR"):  # a copy without git history
            quick += ["--baseline-dir", os.environ["ZSQBENCH_SPEED_BASELINE_DIR"]]
        out = {}
        for name, switches in (("default", []), ("channels_last", ["--speed", "channels_last=1"])):
            if self.dry and name != "default":
                continue
            path = self.work / f"speed_{name}.json"
            res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), *quick, *switches,
                                  "--device", self.device, "--out", str(path), "--note", "gpu_check"],
                                 capture_output=True, text=True, timeout=420, cwd=ROOT)
            if res.returncode != 0:
                raise RuntimeError(f"speed.py exit {res.returncode}: {res.stderr.strip()[-1500:]}")
            result = json.loads(path.read_text())
            out[name] = {"speed_switches": result["speed_switches"],
                         "ratios": {k: {"thread": v["ratio_thread"], "wall": v["ratio_wall"]}
                                    for k, v in result["phases"].items()},
                         "phases": result["phases"]}
        return out

    def paper_first_steps(self, steps: int) -> dict:
        from zsqbench.spine.registry import get_registry
        registry = get_registry()
        spec = registry.get("models", PAPER_MODEL)
        weights = self.work / "random_resnet20_cifar100.pt"
        torch.manual_seed(0)
        torch.save(spec.build().state_dict(), weights)  # random init: the check needs no download
        data = self.work / "fake-cifar100"
        write_fake_cifar100(data / "cifar-100-python" / "test", 100 if self.dry else 2000)
        methods = sorted(m for m, e in registry.methods.items()
                         if e.obj.settings_for("paper", "cifar100") is not None)
        if self.dry:
            methods = ["gdfq"]
        # caps, never raises: a method that trains 0 steps (fp, noise, zeroq) keeps 0; the paper's 5120 x 1000
        # synthesis would take minutes per method, so the image-optimisation set shrinks (its rate is measured)
        caps = {"train.steps": steps, "train.warmup_steps": 2 if self.dry else 50,
                "synthesizer.num_images": 8 if self.dry else 512, "synthesizer.iterations": 1 if self.dry else 100}
        extra = ["train.batch_size=4", "eval.limit=50"] if self.dry else []
        runs = []
        for method in methods:
            if self.elapsed() > self.budget_s:
                runs.append({"method": method, "skipped": "out of time"})
                continue
            sets, paper_steps = capped_settings(method, caps)
            sets += extra
            record_file = self.work / "paper" / f"{method}.json"
            args = ["run", "--method", method, "--model", PAPER_MODEL, "--bits", "4", "--protocol", "paper",
                    "--device", self.device, "--weights", weights, "--data-root", data, "--cache-dir",
                    self.work / "cache", "--record-file", record_file, "-q"]
            for s in sets:
                args += ["--set", s]
            t = time.perf_counter()
            try:
                self.cli(*args, timeout=300 if self.dry else 120)
                figures = run_figures(json.loads(record_file.read_text()))
                figures["paper_steps"] = paper_steps
                if figures["mean_step_ms"]:
                    figures["projected_full_run_h"] = round(figures["mean_step_ms"] * paper_steps / 3.6e6, 2)
                runs.append({"method": method, **figures})
            except Exception as e:
                runs.append({"method": method, "error": f"{type(e).__name__}: {e}"[:1500],
                             "wall_s": round(time.perf_counter() - t, 1)})
                self.summary["failures"].append(f"paper_first_steps:{method}")
            self.save()
        return {"model": PAPER_MODEL, "bits": "W4A4", "caps": caps, "extra_sets": extra,
                "note": "random teacher + fabricated test set: top-1 is meaningless; step times, memory and that "
                        "every method builds and trains are the point. projected_full_run_h = mean step x the "
                        "method's paper step count (synthesis and evaluation not included).",
                "runs": runs}


def capped_settings(method: str, caps: dict) -> tuple[list[str], int]:
    """``--set`` items that bring each capped setting of the method's paper config down to at most its cap, and
    the method's paper step count."""
    from zsqbench.spine.plan import RunSpec, resolve
    config = resolve(RunSpec(method=method, model=PAPER_MODEL, wbits=4, abits=4, protocol="paper")).config
    sets = []
    for key, cap in caps.items():
        section, name = key.split(".")
        value = config.get(section, {}).get(name)
        if isinstance(value, int) and value > cap:
            sets.append(f"{key}={cap}")
    return sets, config["train"]["steps"]


def write_fake_fmnist(root: Path, n: int) -> None:
    """A Fashion-MNIST test split of ``n`` random images in the idx format, for a machine without the data."""
    import gzip
    import struct
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, n * 784, dtype=np.uint8).tobytes())
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + rng.integers(0, 10, n, dtype=np.uint8).tobytes())


def write_fake_cifar100(path: Path, n: int) -> None:
    """A CIFAR-100 python batch of ``n`` random images: what zsqbench.evaluation.data reads."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                     b"fine_labels": rng.integers(0, 100, size=n).tolist(),
                     b"filenames": [b"fake.png"] * n}, f)


def run_figures(record: dict) -> dict:
    timing, memory = record.get("timing", {}), record.get("memory", {})
    synthesis = (record.get("diagnostics") or {}).get("synthesis") or {}
    return {"method": record["method"]["name"], "model": f"{record['model']}@{record['dataset']}",
            "bits": f"W{record['wbits']}A{record['abits']}", "status": record["status"],
            "final_top1": record.get("final_top1"), "fp_top1": record.get("fp_top1"),
            "config_steps": record.get("config", {}).get("train", {}).get("steps"),
            "batch_size": record.get("config", {}).get("train", {}).get("batch_size"),
            "mean_step_ms": round(timing["mean_step_s"] * 1e3, 2) if timing.get("mean_step_s") else None,
            "phases_s": timing.get("phases_s"), "total_s": timing.get("total_s"),
            "peak_cuda_mb": memory.get("peak_cuda_mb"), "peak_rss_mb": memory.get("peak_rss_mb"),
            "synthesis_image_iterations_per_s": synthesis.get("image_iterations_per_s"),
            "device": (record.get("device") or {}).get("name") if isinstance(record.get("device"), dict)
            else record.get("device")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("summary", nargs="?", default=None,
                    help="where the JSON summary goes (default: $OUT/gpu_check.json, else gpu_check.json here)")
    ap.add_argument("--dry", action="store_true", help="on the CPU, tiny budgets, one item per stage (CI)")
    ap.add_argument("--device", default="cuda", help="the GPU to check (cuda, cuda:N)")
    ap.add_argument("--paper-steps", type=int, default=300, help="paper-protocol steps per method")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help=f"start no stage or run after this many seconds (default {BUDGET_S} on a GPU, none --dry)")
    args = ap.parse_args()
    if args.budget_s is None:
        args.budget_s = float("inf") if args.dry else BUDGET_S
    if args.summary is None:
        args.summary = str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else "gpu_check.json"
    if args.work is None:
        import tempfile
        args.work = tempfile.mkdtemp(prefix="gpu_check.")
    if not args.dry and not torch.cuda.is_available():
        print(f"error: torch {torch.__version__} sees no CUDA device: install a CUDA build of torch on a GPU machine, "
              "or run `benchmarks/gpu_check.sh --dry` to check the script on the CPU", file=sys.stderr)
        sys.exit(2)
    check = Check(args)
    check.stage("smoke", check.smoke)
    check.stage("cpu_families", check.cpu_families)
    check.stage("step_time", check.step_time)
    check.stage("speed", check.speed)
    check.stage("paper_first_steps", lambda: check.paper_first_steps(2 if args.dry else args.paper_steps))
    print(f"[gpu_check] summary: {check.summary_path} ({check.elapsed()} s; failures: "
          f"{', '.join(check.summary['failures']) or 'none'})")
    sys.exit(1 if check.summary["failures"] else 0)


if __name__ == "__main__":
    main()
