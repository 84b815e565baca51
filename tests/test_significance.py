"""Adjacent-row significance in leaderboards: Welch per pair, Holm per table, rank groups, validation, display."""
import copy
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from zsqbench.cli import cli
from zsqbench.leaderboard.build import add_significance, validate_leaderboard
from zsqbench.leaderboard.stats import holm, pvalue

ROOT = Path(__file__).resolve().parent.parent


def test_holm_by_hand():
    # sorted: 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> raised to 0.06 (monotone); original order kept
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def _row(method, finals, model="resnet20", wbits=3):
    return {"model": model, "dataset": "fmnist", "wbits": wbits, "abits": wbits, "method": method,
            "final_top1": finals, "mean": sum(finals) / len(finals)}


def test_adjacent_rows_groups_and_family_per_table():
    rows = [_row("b", [80.0, 80.2, 80.4]), _row("a", [90.0, 90.5, 91.0]), _row("c", [79.9, 80.3, 80.1]),
            _row("one-seed", [70.0]),
            _row("x", [50.0, 51.0, 52.0], wbits=4), _row("y", [40.0, 41.0, 42.0], wbits=4)]
    meta = add_significance(rows)
    by = {r["method"]: r for r in rows}
    p_ab = pvalue(by["a"]["final_top1"], by["b"]["final_top1"])
    p_bc = pvalue(by["b"]["final_top1"], by["c"]["final_top1"])
    # W3A3 is one family of two pairs (the one-seed row cannot be tested); W4A4 another of one pair
    assert meta == {"test": "welch", "correction": "holm", "alpha": 0.05, "comparisons": 3}
    assert by["a"]["significance"]["next"] == "b"
    assert by["a"]["significance"]["p"] == pytest.approx(p_ab)
    assert by["a"]["significance"]["p_holm"] == pytest.approx(holm([p_ab, p_bc])[0])
    assert by["a"]["significance"]["differs"] and not by["b"]["significance"]["differs"]
    assert by["c"]["significance"] is None and by["one-seed"]["significance"] is None
    assert [by[m]["group"] for m in "abc"] == [1, 2, 2]
    assert by["x"]["significance"]["p_holm"] == pytest.approx(pvalue([50.0, 51.0, 52.0], [40.0, 41.0, 42.0]))
    assert by["x"]["group"] == 1 and by["y"]["group"] == 2


def test_validator_recomputes_significance():
    lb = json.loads((ROOT / "leaderboard" / "cpu.json").read_text())
    lb["significance"] = add_significance(lb["rows"])
    assert validate_leaderboard(lb) == []
    bad = copy.deepcopy(lb)
    bad["rows"][1]["group"] += 1
    assert any("group" in e for e in validate_leaderboard(bad))
    bad = copy.deepcopy(lb)
    row = next(r for r in bad["rows"] if r["significance"])
    row["significance"]["differs"] = not row["significance"]["differs"]
    assert any("significance" in e for e in validate_leaderboard(bad))


def test_show_prints_groups_and_tests(tmp_path):
    result = CliRunner().invoke(cli, ["leaderboard", "show", str(ROOT / "leaderboard" / "cpu.json")],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "grp" in result.output and "Holm" in result.output
