"""zsqbench sweep: the grid, hash-named job directories, skip/resume (also after kill -9), retry once."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ONE_THREAD
from zsqbench.frontends.sweep import RECORD, Job, expand, run_sweep
from zsqbench.spine.errors import UserError

# compared between an interrupted and an uninterrupted sweep: everything a run computes (not its timings)
COMPARED = ("final_top1", "best_top1_selected_on_test", "eval_history", "train_metrics", "config_hash", "fp_top1",
            "status", "sweep_job")


def sweep_cmd(out, cache, *extra):
    return [sys.executable, "-m", "zsqbench.frontends.cli", "sweep", "-p", "smoke", "--methods", "noise,gdfq,adadfq",
            "--models", "resnet20@fmnist", "-o", str(out), "--cache-dir", str(cache), "-j", "1", "--threads", "1",
            "-q", *extra]


def records(out: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob(f"*/{RECORD}"))}


def test_expand_grid_and_hashes():
    jobs = expand("smoke", out="/tmp/x")
    from zsqbench.spine.registry import get_registry
    methods = [m for m, e in get_registry().methods.items() if e.obj.settings_for("smoke") is not None]
    assert len(jobs) == len(methods) * 2  # smoke: 2 teachers x W4A4 x seed 0
    assert len({j.hash for j in jobs}) == len(jobs)
    one = expand("smoke", ["gdfq"], ["resnet20@fmnist"], ["W4A4"], ["0"], out="/tmp/x")
    # the directory is named by the settings hash; the job hash adds the code and the teacher's preprocessing
    assert len(one) == 1 and one[0].dir.name.startswith(one[0].settings_hash[:16]) and \
        "gdfq-resnet20-fmnist-w4a4-s0" in one[0].dir.name
    assert one[0].hash == expand("smoke", ["gdfq"], ["resnet20@fmnist"], ["4"], ["0"], out="/tmp/x")[0].hash
    seeds = expand("cpu", ["gdfq"], ["resnet20@fmnist"], ["3"], ["0,1"], out="/tmp/x")  # smoke has seed 0 only
    assert seeds[0].hash != seeds[1].hash and seeds[0].settings_hash != seeds[1].settings_hash


def test_a_choice_named_twice_makes_its_jobs_once():
    jobs = expand("smoke", ["noise", "noise,fp"], ["resnet20@fmnist", "resnet20@fmnist"], ["4", "W4A4"], out="/tmp/x")
    assert [j.method for j in jobs] == ["noise", "fp"]


def test_jobs_run_method_by_method_in_the_order_asked():
    """A long grid finishes whole leaderboard rows one after another (bit-widths before teachers and seeds within a
    method, so that an image method's second bit-width finds the first one's synthetic set cached)."""
    from zsqbench.protocols import bits_for
    from zsqbench.spine.registry import get_registry
    cpu = get_registry().get("protocols", "cpu")
    jobs = expand("cpu", ["noise", "fp"], out="/tmp/x")  # every seed the protocol lists (the seed rule is sweep's)
    order = [(j.method, j.wbits, j.abits, j.model, j.seed) for j in jobs]
    widths = dict.fromkeys([tuple(b) for b in cpu["bits"]] +
                           [tuple(b) for per in cpu.get("bits_by_model", {}).values() for b in per])
    expected = [(w, a, m, s) for w, a in widths for m in cpu["models"] if [w, a] in bits_for(cpu, m)
                for s in cpu["seeds"]]
    assert len({(w, a) for w, a, *_ in expected}) > 1 and len({m for _, _, m, _ in expected}) > 1
    assert order == [("noise", *job) for job in expected] + [("fp", *job) for job in expected]


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["nosuch"]}, "nosuch"),
    ({"bits": ["W3A"]}, "--bits"),
    ({"bits": ["3"]}, "off protocol"),  # smoke has W4A4 only: a sweep runs the protocol's grid, nothing else
    ({"seeds": ["0,1"]}, "seed 1 is not in protocol smoke's seeds"),  # smoke has seed 0 only (#28)
    ({"seeds": ["x"]}, "--seeds 'x'"),
    ({"models": ["resnet20@cifar10"]}, "model resnet20@cifar10 is not in protocol smoke"),
])
def test_expand_refuses_bad_input(kwargs, message):
    with pytest.raises(UserError, match=message):
        expand("smoke", out="/tmp/x", **kwargs)


@pytest.mark.slow
def test_sweep_resumes_after_kill9_with_the_same_records(tmp_path):
    env = {**os.environ, **ONE_THREAD, "COLUMNS": "200"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = subprocess.run(sweep_cmd(whole, tmp_path / "cache-a"), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    assert len(records(whole)) == 3

    proc = subprocess.Popen(sweep_cmd(cut, tmp_path / "cache-b"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(cut.glob(f"*/{RECORD}")) and time.time() < deadline:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = records(cut)
    assert 1 <= len(first) < 3, "the kill should land between the first and the last job"
    time.sleep(3)  # the running job died with the sweep (PR_SET_PDEATHSIG): no record appears afterwards
    assert records(cut).keys() == first.keys()
    mtimes = {p: p.stat().st_mtime for p in cut.glob(f"*/{RECORD}")}

    again = subprocess.run(sweep_cmd(cut, tmp_path / "cache-b"), env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr + again.stdout
    assert all(p.stat().st_mtime == t for p, t in mtimes.items()), "finished jobs must not run again"
    events = [json.loads(line) for line in (cut / "sweep.jsonl").read_text().splitlines()]
    assert [e["skipped"] for e in events if e["event"] == "start"] == [0, len(first)]  # append-only: both sweeps

    a, b = records(whole), records(cut)
    assert a.keys() == b.keys()  # same job directories: named by the configuration hash
    for name in a:
        assert {k: a[name].get(k) for k in COMPARED} == {k: b[name].get(k) for k in COMPARED}, name
    # a third call has nothing left to do
    dry = subprocess.run(sweep_cmd(cut, tmp_path / "cache-b", "--dry-run"), env=env, capture_output=True, text=True)
    assert dry.stdout.count("done") == 3 and "todo" not in dry.stdout


def _fake_job(tmp_path: Path, name: str) -> Job:
    return Job("noise", "resnet20@fmnist", 4, 4, 0, {"x": name}, (name * 64)[:64], tmp_path / name)


def test_failed_job_is_retried_once_then_reported(tmp_path, monkeypatch):
    """The scheduler alone: a job command that fails on its first attempt and succeeds on the second is retried
    once; one that always fails is reported after two attempts, with both attempts in its log."""
    import zsqbench.frontends.sweep as sweep
    flaky, broken = _fake_job(tmp_path, "a"), _fake_job(tmp_path, "b")

    def command(job, *args):
        script = ("import json, pathlib, sys; d = pathlib.Path(sys.argv[1]); m = d / 'tried'\n"
                  "if sys.argv[2] == 'b' or not m.exists():\n    m.touch(); sys.exit(1)\n"
                  "(d / 'record.json').write_text(json.dumps({'sweep_job': sys.argv[3]}))")
        return [sys.executable, "-c", script, str(job.dir), job.dir.name, job.hash]

    monkeypatch.setattr(sweep, "_command", command)
    summary = run_sweep([flaky, broken], "smoke", jobs_at_once=2, quiet=True, out=tmp_path)
    assert summary["ok"] == 1 and summary["failed"] == [broken.dir.name] and summary["retried"] == 2
    assert flaky.done() and not broken.done()
    assert (broken.dir / "log.txt").read_text().count("attempt") == 2


def test_fp_reference_is_cached_per_teacher_and_data(tmp_path):
    from zsqbench.evaluation.evaluate import Evaluator
    from zsqbench.spine.registry import get_registry
    from zsqbench.teacher.zoo import load_teacher
    spec = get_registry().get("models", "resnet20@fmnist")
    teacher, info = load_teacher(spec)
    first = Evaluator("fmnist", None, torch.device("cpu"), 300, 100)
    top1, status = first.reference(teacher, spec.pool_module, info["sha256"], tmp_path)
    assert status == "miss" and len(list(tmp_path.glob("fp_*.json"))) == 1
    second = Evaluator("fmnist", None, torch.device("cpu"), 300, 100)
    again, status2 = second.reference(teacher, spec.pool_module, info["sha256"], tmp_path)
    assert status2 == "hit" and again == top1 and second.real_stats == first.real_stats
    assert top1 == first.top1(teacher)  # the cached figure is the real one
    other = Evaluator("fmnist", None, torch.device("cpu"), 200, 100)  # other images: another entry
    assert other.reference(teacher, spec.pool_module, info["sha256"], tmp_path)[1] == "miss"
    assert Evaluator("fmnist", None, torch.device("cpu"), 200, 100).reference(
        teacher, spec.pool_module, None, tmp_path)[1] == "off"  # no weights hash, no cache


def test_protocol_narrows_bit_widths_per_teacher(tmp_path):
    """cpu narrows a teacher's bit-widths where a width was measured not to separate methods on it (v5: the
    MobileNetV2 teachers at W4A3 only; v4: MobileNetV1 at W4A4 only): the sweep leaves those jobs out, and a single
    run of them is marked off-protocol."""
    from zsqbench.protocols import bits_for, load_protocol_file
    from zsqbench.spine.loop import RunSpec, resolve
    from zsqbench.spine.registry import get_registry
    cpu = get_registry().get("protocols", "cpu")
    narrowed = next(m for m in cpu["models"] if m in cpu.get("bits_by_model", {}))
    w, a = next(b for b in cpu["bits"] if b not in bits_for(cpu, narrowed))
    jobs = expand("cpu", ["noise"], out=tmp_path)
    assert sorted((j.model, j.wbits, j.abits) for j in jobs if j.seed == 0) == sorted(
        (m, *b) for m in cpu["models"] for b in bits_for(cpu, m))
    assert (narrowed, w, a) not in {(j.model, j.wbits, j.abits) for j in jobs}
    off = resolve(RunSpec(method="noise", model=narrowed, wbits=w, abits=a, protocol="cpu")).off_protocol
    assert off == (f"W{w}A{a} is not in protocol cpu for {narrowed}",)
    with pytest.raises(UserError, match="off protocol"):
        expand("cpu", ["noise"], [narrowed], [f"W{w}A{a}"], out=tmp_path)
    bad = json.loads(Path(cpu["path"]).read_text())
    bad["bits_by_model"] = {"resnet56@fmnist": [[4, 4]]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="resnet56@fmnist, not in its models"):
        load_protocol_file(tmp_path / "bad.json")


def test_sweep_overrides_make_an_off_protocol_grid_with_its_own_hashes(tmp_path):
    """`sweep --set` (learning curves, ablations): every job carries the overrides into its command and hash; a
    bad override is refused before any job starts."""
    from zsqbench.frontends.sweep import _command
    plain = expand("smoke", ["noise"], ["resnet20@fmnist"], None, ["0"], tmp_path)
    curve = expand("smoke", ["noise"], ["resnet20@fmnist"], None, ["0"], tmp_path,
                   overrides=["eval.split=dev", "eval.limit=500"])
    assert plain[0].hash != curve[0].hash
    assert curve[0].identity["overrides"] == ["eval.split=dev", "eval.limit=500"]
    assert curve[0].identity["config"]["eval"]["limit"] == 500
    cmd = _command(curve[0], "smoke", "cpu", None, None)
    assert cmd[-4:] == ["--set", "eval.split=dev", "--set", "eval.limit=500"]
    with pytest.raises(UserError, match="not a known setting"):
        expand("smoke", ["noise"], ["resnet20@fmnist"], None, ["0"], tmp_path, overrides=["train.stepz=3"])


def test_a_record_of_other_code_says_why_its_job_runs_again(tmp_path):
    """A job whose folder holds a record of other code (or another configuration) is not done, and says why: what
    `sweep --dry-run` prints beside it, and what a sweep counts in its start event."""
    code_now = {"zsqbench": {"version": "0.1.0", "sha256": "b" * 64, "files": 51}}
    job = Job("noise", "resnet20@fmnist", 4, 4, 0, {"code": code_now}, "c" * 64, tmp_path / "job")
    assert job.stale() is None and not job.done()  # no record: plain todo
    job.dir.mkdir()
    rec = {"sweep_job": "d" * 64, "code": {"zsqbench": {"version": "0.1.0", "sha256": "a" * 64, "files": 51}}}
    (job.dir / RECORD).write_text(json.dumps(rec))
    assert not job.done()
    assert job.stale() == f"its record is of other code: zsqbench 0.1.0 {'a' * 12}, now zsqbench 0.1.0 {'b' * 12}"
    (job.dir / RECORD).write_text(json.dumps({**rec, "code": code_now}))
    assert job.stale() == "its record is of another configuration"
    (job.dir / RECORD).write_text(json.dumps({**rec, "sweep_job": job.hash}))
    assert job.done() and job.stale() is None
