"""The protocol's seed rule: a row gets seeds until its own 95 % CI half-width meets the table's target or it reaches
the cap, decided from its own seeds only; `zsqbench sweep` applies it and resumes it; a protocol file by its path."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zsqbench.frontends.seed_rule import SeedRule, SeedSchedule
from zsqbench.frontends.sweep import RECORD
from zsqbench.leaderboard.stats import ci_half_width
from zsqbench.protocols import BUILTIN_DIR
from zsqbench.spine.errors import UserError

RULE = {"first": 2, "cap": 4, "ci_half_width": 2.0}


def protocol(**over):
    return {"name": "p", "seeds": [0, 1, 2, 3], "seed_rule": {**RULE, **over}}


def test_the_rule_reads_only_the_rows_own_seeds():
    rule = SeedRule.of({**protocol(), "seed_rule": {**RULE, "ci_half_width_by_table": {"m@d W4A4": 0.5}}})
    assert rule.wants_more([], "m@d W3A3") and rule.wants_more([90.0], "m@d W3A3")  # under `first`
    assert not rule.wants_more([90.0, 90.2], "m@d W3A3")  # half-width 1.27 <= 2: the row stops
    assert rule.wants_more([90.0, 90.4], "m@d W3A3")  # 2.54 > 2: one more seed
    assert rule.wants_more([90.0, 93.0], "m@d W3A3") == (ci_half_width([90.0, 93.0]) > 2.0)
    assert rule.wants_more([90.0, 90.4], "m@d W4A4") == (ci_half_width([90.0, 90.4]) > 0.5)  # the table's target
    assert rule.wants_more([90.0, None], "m@d W3A3")  # a diverged seed: one finished value, no interval yet
    assert not rule.wants_more([90.0, 60.0, 95.0, 70.0], "m@d W3A3")  # the cap, however wide
    assert SeedRule.of({"name": "p", "seeds": [0]}) is None
    capped = SeedRule.of(protocol(cap_by_table={"m@d W3A3": 2}))  # a table with its own, lower cap
    assert not capped.wants_more([90.0, 99.0], "m@d W3A3") and capped.wants_more([90.0, 99.0], "m@d W4A4")
    one = SeedRule.of(protocol(cap_by_table={"m@d W3A3": 1}))  # a cap under `first`: the table's whole seed count
    assert one.first_of("m@d W3A3") == 1 and one.first_of("m@d W4A4") == 2
    assert one.wants_more([], "m@d W3A3") and not one.wants_more([90.0], "m@d W3A3")


def test_a_table_capped_under_first_starts_with_its_cap():
    class Job:
        def __init__(self, model, seed):
            self.method, self.model, self.wbits, self.abits, self.seed = "m", model, 3, 3, seed

        def done(self):
            return False

    jobs = [Job(model, seed) for model in ("d", "e") for seed in range(4)]
    rule = SeedRule.of(protocol(cap_by_table={"e W3A3": 1}))
    started = SeedSchedule(rule, jobs, final=lambda job: None).initial()
    assert [(j.model, j.seed) for j in started] == [("d", 0), ("d", 1), ("e", 0)]


@pytest.mark.parametrize("rule, message", [
    ({"first": 0}, "1 <= first <= cap"),
    ({"first": 5}, "1 <= first <= cap"),
    ({"cap": 9}, "more than the 4 seeds"),
    ({"ci_half_width": -1}, "targets must be numbers > 0"),
    ({"ci_half_width_by_table": {"x": "2"}}, "targets must be numbers > 0"),
    ({"typo": 1}, "expected an object"),
    ({"cap_by_table": {"x": 0}}, "cap_by_table must map tables to integers from 1 to cap"),
    ({"cap_by_table": {"x": 5}}, "cap_by_table must map tables to integers from 1 to cap"),
])
def test_a_bad_rule_is_one_line(rule, message):
    with pytest.raises(UserError, match=message):
        SeedRule.of(protocol(**rule))


def write_protocol(path: Path, target: float) -> Path:
    """The smoke protocol as a file of its own: 4 seeds, a seed rule, the methods' smoke settings."""
    data = json.loads((BUILTIN_DIR / "smoke.json").read_text())
    data.update(name="smoke-seeds", method_settings="smoke", seeds=[0, 1, 2, 3],
                seed_rule={"first": 2, "cap": 4, "ci_half_width": target})
    path.write_text(json.dumps(data))
    return path


def sweep(proto: Path, out: Path, cache: Path, *extra):
    cmd = [sys.executable, "-m", "zsqbench.frontends.cli", "sweep", "-p", str(proto), "--methods", "noise",
           "--models", "resnet20@fmnist", "-o", str(out), "--cache-dir", str(cache), "-j", "1", "--threads", "1",
           "-q", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})


def seeds_run(out: Path) -> list[int]:
    return sorted(json.loads(p.read_text())["seed"] for p in out.glob(f"*/{RECORD}"))


def test_sweep_applies_the_rule_and_resumes_it(tmp_path):
    proto = write_protocol(tmp_path / "smoke-seeds.json", target=1000.0)  # any two seeds meet it
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    proc = sweep(proto, out, cache)
    assert proc.returncode == 0, proc.stderr
    assert seeds_run(out) == [0, 1]  # the first two, then the rule stops the row
    recs = [json.loads(p.read_text()) for p in out.glob(f"*/{RECORD}")]
    assert {r["protocol"]["name"] for r in recs} == {"smoke-seeds"} and not any(r["off_protocol"] for r in recs)
    # a stricter target (the rule is not in the hash: seeds 0-1 stay done): the row goes on to the cap
    write_protocol(proto, target=1e-9)
    dry = sweep(proto, out, cache, "--dry-run")
    assert dry.returncode == 0 and dry.stdout.count("done") == 2 and dry.stdout.count("todo") == 1, dry.stdout
    proc = sweep(proto, out, cache)
    assert proc.returncode == 0, proc.stderr
    assert seeds_run(out) == [0, 1, 2, 3]
    log = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    added = [e for e in log if e["event"] == "seed_rule"]
    assert len(added) == 1 and added[0]["added"][0].endswith("-s3")  # seed 2 came from the resume, seed 3 after it
    # an explicit --seeds turns the rule off
    dry = sweep(proto, out, cache, "--dry-run", "--seeds", "0")
    assert dry.stdout.count("done") == 1 and "todo" not in dry.stdout


def test_a_rows_added_seed_runs_before_the_next_methods_jobs(tmp_path):
    """The rule's extra seeds join the queue after their own method's jobs, not at the end of the grid: a long grid
    still finishes whole rows one method after another (leaderboard/README.md's pending methods)."""
    proto = write_protocol(tmp_path / "smoke-seeds.json", target=1e-9)  # noise's row goes on to the cap
    out = tmp_path / "sweep"
    proc = sweep(proto, out, tmp_path / "cache", "--methods", "fp")  # after the helper's noise: noise, then fp
    assert proc.returncode == 0, proc.stderr
    log = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    ran = [e["job"].split("-", 1)[1] for e in log if e["event"] == "ok"]
    # fp's seeds agree to the digit (half-width 0): its row stops at the first two
    assert ran == [f"noise-resnet20-fmnist-w4a4-s{s}" for s in range(4)] + \
        [f"fp-resnet20-fmnist-w4a4-s{s}" for s in range(2)], ran


def test_a_protocol_file_may_not_take_a_registered_name(tmp_path):
    data = json.loads((BUILTIN_DIR / "smoke.json").read_text())
    data["seeds"] = [0, 1]
    (tmp_path / "mine.json").write_text(json.dumps(data))
    proc = sweep(tmp_path / "mine.json", tmp_path / "out", tmp_path / "cache", "--dry-run")
    assert proc.returncode == 2 and "named 'smoke'" in proc.stderr and "Traceback" not in proc.stderr


def test_grid_cost_plan_applies_the_rule_to_each_rows_spread():
    """benchmarks/grid_cost.py (issue #25 part 4): on the v4 board (tests/data, as committed at a4a4fbb), a row
    without spread (fp) stops at the first seeds, the widest (qimera W3A3, sd 13.5) nearly always reaches the cap,
    and a row's cost is its expected seeds times its run time."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "grid_cost.py"
    spec = importlib.util.spec_from_file_location("grid_cost", path)
    grid_cost = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid_cost)
    lb = json.loads((Path(__file__).resolve().parent / "data" / "cpu-v4-board.json").read_text())
    rule = SeedRule(3, 10, 2.0)
    rows = {r["method"]: r for r in grid_cost.plan(lb, rule, {"resnet20@fmnist W3A3"}, draws=200, seed=0)}
    assert rows["fp"]["seeds"] == 3 and rows["fp"]["at_cap"] == 0
    assert rows["qimera"]["at_cap"] > 0.9 and rows["qimera"]["seeds"] > 9.5
    assert all(3 <= r["seeds"] <= 10 and r["cost_s"] == pytest.approx(r["seeds"] * r["wall_s"]) for r in rows.values())
