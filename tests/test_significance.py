"""A table's statistics: every pair by Games-Howell, compact letters, bootstrap rank intervals, CIs inside [0, 100];
validation recomputes them; `leaderboard restat` upgrades a leaderboard of the old (adjacent-row) statistics."""
import copy
import itertools
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from zsqbench.frontends.cli import cli
from zsqbench.leaderboard.build import add_significance, power_of, validate_leaderboard
from zsqbench.leaderboard.stats import (ci_half_width, compact_letters, games_howell, holm, pvalue, rank_intervals,
                                        summarize)

ROOT = Path(__file__).resolve().parent.parent
CPU = ROOT / "leaderboard" / "cpu.json"
# the cpu v4 board (commit a4a4fbb) frozen as a rich, fixed input: seven methods over three tables with published
# counterparts, so that the statistics' tests do not move with the committed board (a grid in progress has few rows)
V4 = ROOT / "tests" / "data" / "cpu-v4-board.json"


def test_holm_by_hand():
    # sorted: 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> raised to 0.06 (monotone); original order kept
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_games_howell_of_two_rows_is_welch_and_grows_with_the_family():
    a, b = [90.0, 90.5, 91.2], [88.0, 89.1, 88.4, 88.9]
    # the studentized range of two means is |t|·√2: with k = 2 Games-Howell is Welch's two-sided t-test
    assert games_howell(a, b, 2) == pytest.approx(pvalue(a, b), rel=1e-4)
    # more rows in the family, a larger p for the same pair (the price of asking about every pair at once)
    assert games_howell(a, b, 2) < games_howell(a, b, 5) < games_howell(a, b, 12) <= 1
    assert games_howell([94.04] * 3, [94.04] * 3, 4) == 1.0 and games_howell([94.04] * 3, [90.0] * 3, 4) == 0.0
    # a constant row against a varying one: the varying row's error alone (dof n - 1)
    assert 0 < games_howell([94.04] * 3, [93.0, 93.2, 93.1], 3) < 0.05


def letters_are_a_valid_display(names, separated, letters):
    for x, y in itertools.combinations(names, 2):
        shares = bool(set(_tokens(letters[x])) & set(_tokens(letters[y])))
        assert shares == (frozenset((x, y)) not in separated), (x, y, letters)


def _tokens(s):
    return s.replace("(", " (").split() if "(" in s else list(s)


def test_compact_letters_by_hand_and_on_random_designs():
    sep = {frozenset("ac"), frozenset("ad"), frozenset("bd")}
    assert compact_letters(list("abcd"), sep) == {"a": "a", "b": "ab", "c": "bc", "d": "c"}
    assert compact_letters(list("xyz"), set()) == {"x": "a", "y": "a", "z": "a"}  # nothing separated: one group
    rng = random.Random(0)
    for _ in range(200):
        names = [f"m{i}" for i in range(rng.randint(1, 9))]
        separated = {frozenset(p) for p in itertools.combinations(names, 2) if rng.random() < 0.5}
        letters = compact_letters(names, separated)
        letters_are_a_valid_display(names, separated, letters)
        assert letters[names[0]].startswith("a")  # 'a' is the best row's group


def test_rank_intervals():
    samples = {"top": [95.0, 95.2, 95.1], "mid1": [80.0, 83.0, 81.0], "mid2": [81.0, 82.0, 80.5],
               "low": [50.0, 51.0, 49.0]}
    got = rank_intervals(samples, resamples=2000, seed=0)
    assert got == rank_intervals(samples, resamples=2000, seed=0)  # seeded: the validator recomputes it
    assert got["top"] == [1, 1] and got["low"] == [4, 4]
    assert got["mid1"] == [2, 3] and got["mid2"] == [2, 3]  # they overlap: either can be second


def _row(method, finals, model="resnet20", wbits=3, diverged=0):
    return {"model": model, "dataset": "fmnist", "wbits": wbits, "abits": wbits, "method": method,
            "final_top1": finals, "mean": sum(finals) / len(finals) if finals else None, "n": len(finals),
            "diverged": diverged}


def test_table_statistics_family_per_table_and_unplaced_rows():
    rows = [_row("b", [80.0, 80.2, 80.4]), _row("a", [90.0, 90.5, 91.0]), _row("c", [79.9, 80.3, 80.1]),
            _row("one-seed", [70.0]), _row("all-diverged", [], diverged=3),
            _row("x", [50.0, 51.0, 52.0], wbits=4), _row("y", [40.0, 41.0, 42.0], wbits=4)]
    meta = add_significance(rows)
    by = {r["method"]: r for r in rows}
    # W3A3: a family of 3 testable rows (3 pairs); W4A4 one of 2 (1 pair); rows under 2 seeds are not placed
    assert meta["test"] == "games-howell" and meta["comparisons"] == 4
    assert [t["rows"] for t in meta["tables"]] == [["a", "b", "c"], ["x", "y"]]
    pairs = {(p["a"], p["b"]): p for t in meta["tables"] for p in t["pairs"]}
    assert pairs[("a", "b")]["p"] == pytest.approx(games_howell(by["a"]["final_top1"], by["b"]["final_top1"], 3))
    assert pairs[("a", "b")]["differs"] and not pairs[("b", "c")]["differs"]
    assert [by[m]["letters"] for m in "abc"] == ["a", "b", "b"]
    assert by["one-seed"]["letters"] is None and by["all-diverged"]["letters"] is None
    assert by["one-seed"]["rank_interval"] is None and by["all-diverged"]["rank_interval"] is None
    assert by["a"]["rank_interval"] == [1, 1] and by["x"]["letters"] == "a" and by["y"]["letters"] == "b"


def test_confidence_intervals_stay_inside_0_100_and_power_uses_the_uncut_width():
    s = summarize([99.9, 100.0, 96.0])
    assert s["ci95"][1] == 100.0 and s["ci95"][0] < s["mean"]
    row = {"final_top1": [99.9, 100.0, 96.0], **s}
    assert power_of(row, 2.0)["half_width"] == pytest.approx(ci_half_width([99.9, 100.0, 96.0]))
    assert power_of(row, 2.0)["half_width"] > (s["ci95"][1] - s["ci95"][0]) / 2
    assert summarize([0.0, 0.0, 3.0])["ci95"][0] == 0.0


def test_committed_leaderboard_carries_its_statistics_and_the_validator_recomputes_them():
    lb = json.loads(CPU.read_text())
    assert lb["schema_version"] == 2 and lb["significance"]["test"] == "games-howell"
    assert validate_leaderboard(lb) == []
    assert all(0 <= x <= 100 for r in lb["rows"] if r["ci95"] for x in r["ci95"])
    assert all(r["letters"] is None for r in lb["rows"] if r["n"] < 2)  # diverged rows are not grouped
    bad = copy.deepcopy(lb)
    row = next(r for r in bad["rows"] if r["letters"])
    row["letters"] += "z"
    assert any("letters" in e for e in validate_leaderboard(bad))
    bad = copy.deepcopy(lb)
    bad["rows"][1]["rank_interval"] = [1, 1]
    assert any("rank_interval" in e for e in validate_leaderboard(bad))
    bad = copy.deepcopy(lb)
    pair = bad["significance"]["tables"][0]["pairs"][0]
    pair["differs"] = not pair["differs"]
    assert any("pairwise tests" in e for e in validate_leaderboard(bad))


def old_style(lb: dict) -> dict:
    """The v4 leaderboard as schema version 1 wrote it: adjacent-row groups, no letters."""
    old = copy.deepcopy(lb)
    old["schema_version"] = 1
    old["significance"] = {"test": "welch", "correction": "holm", "alpha": 0.05, "comparisons": 33}
    for r in old["rows"]:
        r.pop("letters"), r.pop("rank_interval")
        r["group"] = 1
    return old


def test_restat_upgrades_a_version_1_leaderboard(tmp_path):
    lb = json.loads(V4.read_text())
    old = tmp_path / "old.json"
    old.write_text(json.dumps(old_style(lb)))
    runner = CliRunner()
    shown = runner.invoke(cli, ["leaderboard", "show", str(old)])
    assert shown.exit_code == 2 and "zsqbench leaderboard restat" in shown.output
    out = tmp_path / "new.json"
    result = runner.invoke(cli, ["leaderboard", "restat", str(old), "-o", str(out)])
    assert result.exit_code == 0, result.output
    new = json.loads(out.read_text())
    assert validate_leaderboard(new) == []
    assert [r["letters"] for r in new["rows"]] == [r["letters"] for r in lb["rows"]]
    assert [r["runs"] for r in new["rows"]] == [r["runs"] for r in lb["rows"]]  # the runs are kept as they were
    assert [r.get("note") for r in new["rows"]] == [r.get("note") for r in lb["rows"]]
    assert "restat" in new["provenance"]["statistics"]


def test_show_prints_letters_rank_intervals_and_the_rule():
    result = CliRunner().invoke(cli, ["leaderboard", "show", str(V4)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "grp" in result.output and "rank" in result.output and "Games-Howell" in result.output
    synq = next(line for line in result.output.splitlines() if " synq " in line and "91.98" in line)
    assert " b " in synq  # resnet20 W3A3: synq's letters as the v4 board holds them


def test_validity_per_table_is_reported_and_recomputed():
    from scipy.stats import kendalltau
    from zsqbench.leaderboard.published import published_rows
    import statistics
    lb = json.loads(V4.read_text())
    tables = {t["table"]: t["validity"] for t in lb["significance"]["tables"]}
    w3 = tables["resnet20@fmnist W3A3"]["kendall_tau_vs_papers"]
    assert w3["against"] == "resnet20@cifar100 W3A3" and w3["n"] == len(w3["methods"]) >= 3
    rows = {r["method"]: r for r in lb["rows"] if (r["model"], r["wbits"]) == ("resnet20", 3)}
    ours = [rows[m]["mean"] for m in w3["methods"]]
    theirs = [statistics.median(e["top1"] for e in published_rows(m, "resnet20", "cifar100", 3, 3))
              for m in w3["methods"]]
    assert w3["tau"] == pytest.approx(kendalltau(ours, theirs).statistic)
    assert tables["mobilenetv1@fmnist W4A4"]["kendall_tau_vs_papers"] is None  # no published MobileNetV1 table
    assert all(0 < v["rank_stability"] <= 1 for v in tables.values())
    assert all(v["best_on_test_gap"] == {"mean": 0.0, "max": 0.0} for v in tables.values())  # one evaluation a run
    bad = copy.deepcopy(lb)
    bad["significance"]["tables"][1]["validity"]["kendall_tau_vs_papers"]["tau"] = 0.9
    assert any("pairwise tests" in e for e in validate_leaderboard(bad))
    shown = CliRunner().invoke(cli, ["leaderboard", "show", str(V4)], env={"COLUMNS": "250"})
    assert "validity · resnet20@fmnist W3A3" in shown.output and "vs the papers" in shown.output
