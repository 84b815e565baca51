"""The transfer table (issue #25 part 5): a protocol's ``transfer`` names the teachers held out from choosing
settings; `leaderboard build` sets each one's table beside its chosen-on teacher's, `show` prints it, the validator
recomputes it, and a bad ``transfer`` is refused in one line.

Inputs are modified copies of one real smoke record (the `noise` method), as in test_leaderboard.py."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from conftest import error_line, zsqbench_cli
from test_leaderboard import invoke, real_record, write_set  # noqa: F401 (a fixture)

from zsqbench.leaderboard.build import validate_leaderboard
from zsqbench.protocols import load_protocol_file
from zsqbench.spine.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
HELD, CHOSEN = "resnet20x@fmnist", "resnet20@fmnist"


def build(tmp_path: Path, records: Path, protocol: Path):
    out = tmp_path / "lb" / "board.json"
    return invoke("leaderboard", "build", "--protocol", protocol, records, "-o", out), out


def protocol_file(tmp_path: Path, **changes) -> Path:
    """The smoke protocol under another name, with a held-out teacher."""
    proto = json.loads((ROOT / "zsqbench" / "protocols" / "smoke.json").read_text())
    proto.update(name="smoke-transfer", models=[CHOSEN, HELD], transfer={HELD: CHOSEN})
    proto.update(changes)
    path = tmp_path / "smoke-transfer.json"
    path.write_text(json.dumps(proto))
    return path


@pytest.fixture(scope="module")
def proto_path(tmp_path_factory) -> Path:
    """One file for the module: a protocol name is registered once per process, with its path."""
    return protocol_file(tmp_path_factory.mktemp("protocol"))


@pytest.fixture
def base(real_record, proto_path) -> dict:
    """The real smoke record, as a record of the protocol file (variant() re-seals each copy)."""
    proto = load_protocol_file(proto_path)
    rec = copy.deepcopy(real_record[1])
    rec["protocol"].update(name=proto["name"], hash=proto["hash"])
    return rec


@pytest.fixture
def board(tmp_path, base, proto_path):
    """Records of the protocol file: gdfq, bag, qimera and noise on both teachers; bag only transfers badly."""
    path = proto_path
    d = tmp_path / "sweep"
    finals = {CHOSEN: {"gdfq": [80, 81, 82], "bag": [85, 86, 87], "qimera": [70, 71, 72], "noise": [30, 31, 32]},
              HELD: {"gdfq": [75, 76, 77], "bag": [40, 41, 42], "qimera": [65, 66, 67], "noise": [20, 21, 22],
                     "intraq": [60, 61, 62]}}
    for model, methods in finals.items():
        for method, values in methods.items():
            write_set(d, base, method, values, tag=model.split("@")[0], model=model,
                      teacher=None if model == CHOSEN else "cd" * 32)
    proc, out = build(tmp_path, d, path)
    assert proc.exit_code == 0, proc.output
    return path, out


def test_transfer_block_sets_the_held_out_table_beside_the_chosen_one(board):
    path, out = board
    lb = json.loads(out.read_text())
    assert lb["protocol"]["name"] == "smoke-transfer"
    t = lb["transfer"]
    assert t["pairs"] == {HELD: CHOSEN} and t["roles"] == {"noise": "floor"} and t["margin"] == 20
    (table,) = t["tables"]
    assert table["held_out"] == f"{HELD} W4A4" and table["chosen_on"] == f"{CHOSEN} W4A4"
    assert table["floor"] == {"method": "noise", "mean": 21.0}
    rows = {r["method"]: r for r in table["rows"]}
    assert [r["method"] for r in table["rows"]] == ["gdfq", "qimera", "bag", "noise"]  # held-out order
    assert rows["gdfq"]["chosen_on_mean"] == 81 and rows["gdfq"]["held_out_mean"] == 76
    assert rows["gdfq"]["change"] == -5 and rows["gdfq"]["above_floor"] == 55
    assert rows["bag"]["above_floor"] == 20 and rows["noise"]["above_floor"] is None
    assert rows["noise"]["role"] == "floor"
    assert table["below_margin"] == [] and table["worst_margin"] == 20
    assert table["only_held_out"] == ["intraq"] and table["only_chosen_on"] == []
    # chosen on: bag > gdfq > qimera; held out: gdfq > qimera > bag -> one concordant pair of three
    assert table["kendall_tau"]["n"] == 3 and table["kendall_tau"]["tau"] == pytest.approx(-1 / 3)
    assert validate_leaderboard(lb) == []


def test_show_prints_the_transfer_table_and_json_keeps_it(board):
    _, out = board
    proc = invoke("leaderboard", "show", out)
    assert proc.exit_code == 0, proc.output
    text = proc.output
    assert f"transfer · {HELD} W4A4, held out from choosing settings, beside {CHOSEN} W4A4" in text
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("gdfq") and "-5.00" in ln)
    assert "81.00" in line and "76.00" in line and "+55.00" in line
    assert "every method keeps 20 points above noise on the held-out teacher" in text
    assert f"only on {HELD} W4A4: intraq" in text
    proc = invoke("leaderboard", "show", "--json", out)
    assert json.loads(proc.output)["transfer"]["tables"][0]["worst_margin"] == 20


def test_a_method_under_the_margin_is_named(tmp_path, board):
    _, out = board
    lb = json.loads(out.read_text())
    bag = next(r for r in lb["rows"] if r["method"] == "bag" and r["model"] == "resnet20x")
    for run in bag["runs"]:
        run["final_top1"] -= 5
    out.write_text(json.dumps(lb))
    assert invoke("leaderboard", "restat", out).exit_code == 0
    lb = json.loads(out.read_text())
    assert lb["transfer"]["tables"][0]["below_margin"] == ["bag"]
    assert "under 20 points above noise on the held-out teacher: bag" in invoke("leaderboard", "show", out).output


def test_a_table_of_only_the_floor_claims_nothing_about_methods(tmp_path, base, proto_path):
    """A grid in progress (only `noise` on both teachers so far): no method is said to keep the margin."""
    d = tmp_path / "sweep"
    for model in (CHOSEN, HELD):
        write_set(d, base, "noise", [30, 31, 32], tag=model.split("@")[0], model=model,
                  teacher=None if model == CHOSEN else "cd" * 32)
    proc, out = build(tmp_path, d, proto_path)
    assert proc.exit_code == 0, proc.output
    text = invoke("leaderboard", "show", out).output
    assert "every method keeps" not in text
    assert "no method but the floor and the ceiling on both teachers yet, so none is held to 20 points above noise" \
        in text


def test_validator_recomputes_the_transfer_block(board):
    _, out = board
    lb = json.loads(out.read_text())
    lb["transfer"]["tables"][0]["rows"][0]["held_out_mean"] = 99.0
    assert any(e.startswith("transfer: the tables do not match") for e in validate_leaderboard(lb))
    out.write_text(json.dumps(lb))
    proc = invoke("leaderboard", "show", out)
    assert proc.exit_code == 2 and "transfer: the tables do not match the rows" in proc.output


def test_no_transfer_block_without_a_held_out_table(tmp_path, base, proto_path):
    """Records of the chosen-on teacher only: the block would be empty, so there is none."""
    write_set(tmp_path / "sweep", base, "gdfq", [80, 81, 82])
    proc, out = build(tmp_path, tmp_path / "sweep", proto_path)
    assert proc.exit_code == 0, proc.output
    assert "transfer" not in json.loads(out.read_text())


@pytest.mark.parametrize("transfer, expected", [
    ({HELD: "mobilenetv1@fmnist"}, "transfer names mobilenetv1@fmnist, not in its models"),
    ({HELD: CHOSEN, CHOSEN: HELD}, "holds out resnet20@fmnist, resnet20x@fmnist and chooses settings on it too"),
    ([HELD, CHOSEN], "transfer must map a held-out teacher to the teacher its settings were chosen on"),
])
def test_bad_transfer_refused_in_one_line(tmp_path, transfer, expected):
    path = protocol_file(tmp_path, transfer=transfer)
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        load_protocol_file(path)


def test_bad_transfer_is_one_line_on_the_command_line(tmp_path):
    path = protocol_file(tmp_path, transfer={HELD: "mobilenetv1@fmnist"})
    proc = zsqbench_cli("sweep", "-p", path, "--methods", "noise", "--dry-run")
    assert proc.returncode == 2 and "transfer names mobilenetv1@fmnist, not in its models" in error_line(proc)


def test_transfer_is_outside_the_protocol_hash(tmp_path):
    """Which teachers are held out changes no job: the hash (and so every record) is the same without it."""
    with_pairs = load_protocol_file(protocol_file(tmp_path))
    without = load_protocol_file(protocol_file(tmp_path, transfer={}))
    assert with_pairs["hash"] == without["hash"]


@pytest.mark.slow
def test_page_shows_the_transfer_table_in_chromium(tmp_path, board):
    """The page's transfer section, in a real browser: the held-out order, both means, the margin note; a method
    under the margin is marked."""
    from zsqbench.leaderboard.site import write_site
    from test_site import chromium_or_skip
    _, out = board
    lb = json.loads(out.read_text())
    for row in lb["rows"]:  # bag now keeps less than 20 points over noise on the held-out teacher
        if row["method"] == "bag" and row["model"] == "resnet20x":
            for run in row["runs"]:
                run["final_top1"] -= 5
    out.write_text(json.dumps(lb))
    assert invoke("leaderboard", "restat", out).exit_code == 0
    write_site([str(out)], tmp_path / "site", use_records=False, command="CMD")
    html = (tmp_path / "site" / "index.html").read_text()
    assert "Transfer to held-out teachers" in html and 'href="#' in html
    binary = chromium_or_skip()
    from chromium_cdp import Browser
    with Browser(binary, width=1280, height=900) as b:
        b.open((tmp_path / "site" / "index.html").as_uri())
        rows = b.eval("Array.from(document.querySelectorAll('table.transfer tbody tr')).map(r => "
                      "Array.from(r.cells).map(c => c.textContent))")
        assert rows == [["gdfq", "81.00", "76.00", "-5.00", "+55.00"], ["qimera", "71.00", "66.00", "-5.00", "+45.00"],
                        ["bag", "86.00", "36.00", "-50.00", "+15.00"], ["noise (floor)", "31.00", "21.00", "-10.00", "—"]]
        assert b.eval("Array.from(document.querySelectorAll('table.transfer td.short')).map(c => c.textContent)") \
            == ["+15.00"]
        text = b.eval("document.getElementById(document.querySelector('table.transfer').closest('section').id)"
                      ".innerText")
        assert "under 20 points above noise on the held-out teacher: bag" in text
        assert b.eval("document.querySelector('a[href$=\"-transfer\"]') !== null")
        assert b.errors() == []


def test_restat_keeps_the_block_where_the_protocol_is_not_installed(board):
    """A leaderboard restated by someone without its protocol file recomputes the block from the pairs and roles it
    carries, instead of dropping it."""
    _, out = board
    lb = json.loads(out.read_text())
    lb["protocol"]["name"] = "nowhere-installed"
    for row in lb["rows"]:
        for run in row["runs"]:
            run["protocol_hash"] = lb["protocol"]["hash"]
    out.write_text(json.dumps(lb))
    assert invoke("leaderboard", "restat", out).exit_code == 0
    again = json.loads(out.read_text())
    assert again["transfer"]["tables"] == lb["transfer"]["tables"]
