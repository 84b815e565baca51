"""``zsqbench sweep``: every (method, teacher, bit-width, seed) job of a protocol, resumable.

Each job runs in its own directory, named by the hash of its full configuration (method, components and their
resolved settings, teacher and its weights' sha256, bits, seed, protocol hash):

    OUT/<hash16>-<method>-<model>-w<W>a<A>-s<seed>/
        job.json      what the job is (written first)
        log.txt       the run's output (appended to by a retry)
        record.json   the run record, written atomically by the run itself: it exists only if the job finished

A job whose ``record.json`` exists and carries the job's hash is skipped, so killing a sweep (even ``kill -9``)
and starting it again runs only what is missing and yields the same records as an uninterrupted sweep. Jobs run
as child processes (one per ``--jobs`` slot, ``cpu_count // jobs`` threads each) that die with the sweep;
a failed job is retried once. ``OUT/sweep.jsonl`` is an append-only log of the sweep's events.

Where jobs run is a backend's business (``LocalBackend`` here; ``zsqbench.frontends.sweep_ray.RayBackend``: Ray
tasks on a cluster); skipping, retrying, the log and the progress bar are ``run_sweep``'s, the same for every backend.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from zsqbench.protocols import bits_for
from zsqbench.spine.errors import UserError
from zsqbench.spine.registry import Registry, get_registry

RECORD = "record.json"


@dataclass
class Job:
    method: str
    model: str
    wbits: int
    abits: int
    seed: int
    identity: dict
    hash: str
    dir: Path
    overrides: tuple[str, ...] = ()   # --set KEY=VALUE for every job (an off-protocol sweep: curves, ablations)
    settings_hash: str = ""           # the hash of what was asked for (settings, teacher, protocol): the dir name

    @property
    def label(self) -> str:
        return f"{self.method} {self.model} W{self.wbits}A{self.abits} s{self.seed}"

    def done(self) -> bool:
        """True when the job's record exists and belongs to this job (same configuration hash)."""
        try:
            return json.loads((self.dir / RECORD).read_text()).get("sweep_job") == self.hash
        except (OSError, ValueError):
            return False

    def stale(self) -> str | None:
        """Why a record in the job's folder is not this job's (it will run again), or None when there is no record
        or it is this job's: the code changed since it ran (the usual case), or another configuration."""
        try:
            rec = json.loads((self.dir / RECORD).read_text())
        except (OSError, ValueError):
            return None
        if rec.get("sweep_job") == self.hash:
            return None
        from zsqbench.spine.provenance import code_version
        old, new = code_version(rec.get("code")), code_version(self.identity.get("code"))
        if old != new:
            return f"its record is of other code: {old}, now {new}"
        return "its record is of another configuration"


def final_top1(job: Job) -> float | None:
    """A finished job's final top-1 (None when it diverged, failed or has no record)."""
    try:
        rec = json.loads((job.dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec.get("final_top1") if rec.get("status") == "ok" and rec.get("sweep_job") == job.hash else None


def _pick(requested: tuple[str, ...] | None, available: list, parse=str) -> list:
    if not requested:
        return list(available)
    out = []
    for item in requested:
        for part in str(item).split(","):
            if part.strip():
                out.append(parse(part.strip()))
    return list(dict.fromkeys(out))  # named twice (`--methods a --methods a,b`): one set of jobs


def _parse_bits(text: str) -> tuple[int, int]:
    t = text.upper().replace(" ", "")
    try:
        if t.startswith("W") and "A" in t:
            w, a = t[1:].split("A")
            return int(w), int(a)
        return int(t), int(t)
    except ValueError:
        raise UserError(f"--bits {text!r}: use N (WNAN) or WxAy, e.g. --bits 3,4 or --bits W2A4") from None


def _parse_seed(text: str) -> int:
    from zsqbench.spine.loop import MAX_SEED
    try:
        seed = int(text)
    except ValueError:
        raise UserError(f"--seeds {text!r}: give integers in 0..{MAX_SEED}, e.g. --seeds 0,1,2") from None
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seeds {text!r} out of range: give integers in 0..{MAX_SEED}")
    return seed


def expand(protocol: str, methods=None, models=None, bits=None, seeds=None, out: str | Path = "sweeps",
           registry: Registry | None = None, overrides=()) -> list[Job]:
    """The sweep's jobs, in run order: method by method, so that a long grid completes whole leaderboard rows one
    after another (``leaderboard build --methods`` can publish them) while ``--jobs`` slots stay busy across the
    boundary; within a method bit-widths come before teachers and seeds, so that image-optimisation methods find
    the synthetic set of the first bit-width in the cache at the next (the set does not depend on the bit-width).

    ``overrides`` (``KEY=VALUE`` strings, as ``run --set``) apply to every job: the records are off-protocol and
    never enter a leaderboard, but keep the sweep's resume and retry (learning curves, ablations)."""
    from zsqbench.spine.plan import RunSpec, resolve, settings_key
    registry = registry or get_registry()
    protocol = registry.protocol_name(protocol)
    proto = registry.get("protocols", protocol)
    all_methods = sorted(m for m, e in registry.methods.items()
                         if e.obj.settings_for(settings_key(proto)) is not None)
    method_names = _pick(methods, all_methods)
    for m in method_names:
        registry.get("methods", m)
    model_names = _pick(models, proto["models"])
    all_bits = [tuple(b) for b in proto["bits"]]
    for per_model in proto.get("bits_by_model", {}).values():
        all_bits += [tuple(b) for b in per_model if tuple(b) not in all_bits]
    bit_pairs = _pick(bits, all_bits, _parse_bits)
    seed_list = _pick(seeds, proto["seeds"], _parse_seed)
    jobs = []
    root = Path(out)
    for method in method_names:
        for w, a in bit_pairs:
            for model in model_names:
                for seed in seed_list:
                    plan = resolve(RunSpec(method=method, model=model, wbits=w, abits=a, protocol=protocol,
                                           seed=seed, overrides=list(overrides)), registry)
                    if not bits and [w, a] not in bits_for(proto, plan.model_key):
                        break  # the protocol narrows this teacher's bit-widths
                    reasons = [x for x in plan.off_protocol if not x.startswith("overrides:")]
                    if reasons:
                        raise UserError(f"{method} on {plan.model_key} W{w}A{a} would be off protocol {protocol} "
                                        f"({'; '.join(reasons)}): a sweep runs only the protocol's grid")
                    # the directory is named by what was asked for; the job's hash adds the code that runs it and
                    # the teacher's input preprocessing, so changed code re-runs the job (into the same directory)
                    name = f"{plan.settings_hash[:16]}-{method}-{plan.model_key.replace('@', '-')}-w{w}a{a}-s{seed}"
                    jobs.append(Job(method, plan.model_key, w, a, seed, plan.job_identity, plan.job_hash, root / name,
                                    tuple(overrides), plan.settings_hash))
    if not jobs:
        raise UserError(f"the sweep is empty: protocol {protocol} has no job for these choices")
    return jobs


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills it when the sweep process dies (even by SIGKILL), so a
    restarted sweep never races an orphaned job for the same directory."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.setpgrp()  # its own group: Ctrl-C in the terminal reaches the sweep, which stops the jobs itself


def _command(job: Job, protocol: str, device: str, cache_dir: str | None, data_root: str | None,
             save_student: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "zsqbench.frontends.cli", "run", "--method", job.method, "--model", job.model,
           "--wbits", str(job.wbits), "--abits", str(job.abits), "--seed", str(job.seed), "--protocol", protocol,
           "--device", device, "--quiet", "--record-file", str(job.dir / RECORD), "--sweep-job", job.hash]
    if save_student:  # the student beside the record: <job>/record.student.pt (zsqbench.export)
        cmd.append("--save-student")
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    if data_root:
        cmd += ["--data-root", data_root]
    for item in job.overrides:
        cmd += ["--set", item]
    return cmd


class _Log:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, event: str, **fields) -> None:
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "event": event, **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def open_job_log(job: Job, attempt: int, cmd: list[str], where: str = ""):
    """Make the job's directory ready for one attempt and open its log (a retry appends). Every backend calls it
    where the job runs, so a job directory looks the same whichever backend ran it."""
    job.dir.mkdir(parents=True, exist_ok=True)
    for stale in job.dir.glob(f".{RECORD}.*.tmp"):  # a record write cut short by a kill
        stale.unlink(missing_ok=True)
    (job.dir / "job.json").write_text(json.dumps({"hash": job.hash, **job.identity}, indent=2, sort_keys=True))
    logf = open(job.dir / "log.txt", "a")
    logf.write(f"# {datetime.now(timezone.utc).isoformat(timespec='seconds')} attempt {attempt + 1}{where}: "
               f"{' '.join(cmd[1:])}\n")
    logf.flush()
    return logf


class LocalBackend:
    """Jobs as child processes of the sweep, ``slots`` at a time with ``threads`` intra-op threads each.

    A backend is what ``run_sweep`` drives: ``submit`` starts one attempt of a job and returns a handle,
    ``finished`` returns ``(handle, returncode or None, error text)`` for the attempts that ended, ``capacity`` says
    how many may run at once, ``stop`` ends the running ones. Skipping, retrying, the sweep log and the progress bar
    are ``run_sweep``'s, the same for every backend."""
    name = "local"
    settle_s = 0.0  # how long a finished job's record may take to become visible to the sweep (shared storage)

    def __init__(self, slots: int = 1, threads: int | None = None):
        self.slots = slots
        self.threads = threads or max(1, (os.cpu_count() or 1) // slots)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        self.procs: dict[subprocess.Popen, object] = {}

    def describe(self) -> dict:
        return {"parallel": self.slots, "threads": self.threads}

    def capacity(self) -> int:
        return self.slots

    def submit(self, job: Job, attempt: int, cmd: list[str]) -> subprocess.Popen:
        cmd = [*cmd, "--threads", str(self.threads)]  # set by the run itself and recorded (zsqbench/spine/numerics.py)
        logf = open_job_log(job, attempt, cmd)
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env,
                                preexec_fn=_die_with_parent)
        self.procs[proc] = logf
        return proc

    def finished(self) -> list[tuple[object, int | None, str]]:
        time.sleep(0.2)
        ended = [proc for proc in self.procs if proc.poll() is not None]
        for proc in ended:
            self.procs.pop(proc).close()
        return [(proc, proc.returncode, "") for proc in ended]

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()

    def close(self) -> None:
        pass


def _record_appears(job: Job, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not job.done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def run_sweep(jobs: list[Job], protocol: str, jobs_at_once: int = 1, threads: int | None = None,
              device: str = "cpu", cache_dir: str | None = None, data_root: str | None = None,
              retries: int = 1, quiet: bool = False, out: Path | None = None, backend=None, more=None,
              save_student: bool = False) -> dict:
    """Run the jobs that have no record yet on ``backend`` (default: ``jobs_at_once`` local child processes).
    ``more(job)``, if given, is called when a job has ended for good and returns jobs to add (the protocol's seed
    rule: :class:`zsqbench.frontends.seed_rule.SeedSchedule`). Returns a summary dict."""
    out = Path(out or jobs[0].dir.parent)
    out.mkdir(parents=True, exist_ok=True)
    log = _Log(out / "sweep.jsonl")
    backend = backend or LocalBackend(jobs_at_once, threads)
    todo = [j for j in jobs if not j.done()]
    skipped = len(jobs) - len(todo)
    t0 = time.perf_counter()
    stale = sum(j.stale() is not None for j in todo)
    log("start", protocol=protocol, jobs=len(jobs), skipped=skipped, **({"stale": stale} if stale else {}),
        **backend.describe())
    if stale and not quiet:  # why finished-looking jobs run again (`sweep --dry-run` names each one)
        print(f"{stale} job(s) have a record of other code or another configuration: they run again "
              "(`zsqbench sweep ... --dry-run` says which and why)", file=sys.stderr, flush=True)
    summary = {"jobs": len(jobs), "skipped": skipped, "ok": 0, "diverged": 0, "failed": [], "retried": 0}

    progress = None
    if not quiet and not sys.stdout.isatty():  # a log file or a pipe: plain lines every 30 s (spine/progress.py)
        from zsqbench.spine.progress import LineProgress
        progress = LineProgress()
    elif not quiet:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn
        progress = Progress(TextColumn("[bold]sweep {task.fields[protocol]}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    task = None
    queue = [(j, 0) for j in todo]
    running: dict[object, tuple[Job, int, float]] = {}

    def info() -> str:
        now = ", ".join(j.label for j, *_ in running.values())
        fails = f" · [red]{len(summary['failed'])} failed[/]" if summary["failed"] else ""
        return f"{summary['ok']} ok · {summary['diverged']} diverged · {skipped} skipped{fails} · now: {now}"

    def ended(job: Job) -> None:
        added = [j for j in more(job) if not j.done()] if more else []
        if added:
            # right after the method's own queued jobs (at the front if none is left), never at the end of the
            # grid: rows keep finishing method by method, so a partial grid still gives complete rows
            at = max((i + 1 for i, (queued, _) in enumerate(queue) if queued.method == job.method), default=0)
            queue[at:at] = [(j, 0) for j in added]
            summary["jobs"] += len(added)
            log("seed_rule", job=job.dir.name, added=[j.dir.name for j in added])
            if progress:
                progress.update(task, total=summary["jobs"])

    def start(job: Job, attempt: int) -> None:
        cmd = _command(job, protocol, device, cache_dir, data_root, save_student)
        running[backend.submit(job, attempt, cmd)] = (job, attempt, time.perf_counter())

    try:
        with progress or nullcontext():
            if progress:
                task = progress.add_task("sweep", total=len(jobs), completed=skipped, protocol=protocol,
                                         info=info(), unit="job")
            while queue or running:
                while queue and len(running) < backend.capacity():
                    start(*queue.pop(0))
                    if progress:
                        progress.update(task, info=info())
                if progress:
                    progress.update(task)  # a plain-line progress prints its periodic line from here
                for handle, returncode, error in backend.finished():
                    job, attempt, t_job = running.pop(handle)
                    wall = round(time.perf_counter() - t_job, 1)
                    why = {"error": error} if error else {}
                    # 3: a diverged run, a result like any other
                    if returncode in (0, 3) and _record_appears(job, backend.settle_s):
                        kind = "ok" if returncode == 0 else "diverged"
                        summary[kind] += 1
                        log(kind, job=job.dir.name, wall_s=wall)
                        if progress:
                            progress.update(task, advance=1)
                        ended(job)
                    elif attempt < retries:
                        summary["retried"] += 1
                        log("retry", job=job.dir.name, returncode=returncode, wall_s=wall, **why)
                        queue.insert(0, (job, attempt + 1))
                    else:
                        summary["failed"].append(job.dir.name)
                        log("failed", job=job.dir.name, returncode=returncode, wall_s=wall, **why)
                        if progress:
                            progress.update(task, advance=1)
                        ended(job)
                    if progress:
                        progress.update(task, info=info())
    except KeyboardInterrupt:
        backend.stop()
        log("interrupted", wall_s=round(time.perf_counter() - t0, 1))
        raise
    finally:
        backend.close()
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    log("end", **{k: (len(v) if isinstance(v, list) else v) for k, v in summary.items()})
    return summary
