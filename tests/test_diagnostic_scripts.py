"""The diagnostics behind the leaderboard's notes (benchmarks/set_bns.py, real_data_finetune.py, divergence_probe.py) run
and measure what they say, on real data and the embedded teachers, at tiny budgets."""
import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.fixture(autouse=True)
def fresh_registry():
    """The scripts register diagnostic methods in this process; later tests get the registry without them."""
    yield
    from zsqbench.spine.registry import get_registry
    get_registry(reload=True)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layer_bns_is_the_records_form_split_by_layer():
    set_bns = _load("set_bns")
    from zsqbench.evaluation.data import load_split
    from zsqbench.synthesizer.bns import BNStatHooks
    from zsqbench.teacher.zoo import builtin_models, load_teacher
    teacher = load_teacher(next(m for m in builtin_models() if m.key == "resnet20@fmnist"))[0].eval()
    images = load_split("fmnist", "test")[0][:200]
    layers = set_bns.layer_bns(teacher, images)
    assert layers.shape == (sum(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules()),)
    hooks, per_batch = BNStatHooks(teacher), []
    with torch.no_grad():
        for i in (0, 100):
            with hooks.recording():
                teacher(images[i:i + 100])
            per_batch.append(float(hooks.loss()))
    assert abs(set_bns.set_bns(teacher, images) - sum(per_batch) / 2) < 1e-6
    # real images match a teacher's BN statistics closely, and no one layer dominates on ResNet-20
    assert float(layers.mean()) < 0.05 and float(layers[0] / layers.sum()) < 0.1


def test_set_bns_cli_splits_real_images_by_layer():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "set_bns.py"), "--layers", "--real",
                           "resnet20@fmnist", "--images", "200"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "first BN layer" in done.stdout and "running variances" in done.stdout


def test_real_data_finetune_feeds_train_images_outside_dev_and_stays_off_protocol(tmp_path):
    real = _load("real_data_finetune")
    real.register()
    from zsqbench.evaluation.data import DEV_SIZE, load_split
    from zsqbench.testing import run_method, smoke_context
    ctx = smoke_context("real-kd", protocol="cpu")
    synth = real.RealTrainImages()
    synth.prepare(ctx)
    assert len(synth.images) == len(load_split("fmnist", "train")[0]) - DEV_SIZE
    batch = synth.next_batch(ctx, 8)
    assert batch.images.shape == (8, *ctx.image_shape) and batch.labels.shape == (8,)
    record = run_method("real-kd", out_dir=tmp_path, protocol="cpu", seed=0,
                        overrides={"eval.split": "dev", "eval.limit": 200, "train.steps": 3,
                                   "train.warmup_steps": 2})
    assert record["status"] == "ok" and record["off_protocol"] and record["config"]["eval"]["split"] == "dev"
    assert record["timing"]["steps"] == 3 and record["final_top1"] > 50
    assert record["method"]["provider"] == "benchmarks/real_data_finetune.py"


def test_real_data_finetune_takes_activation_bits_apart(tmp_path, capsys):
    """--abits: real-image calibration at W3A8 (is it the weights or the activations calibration cannot hold?)."""
    real = _load("real_data_finetune")
    real.main(["--model", "resnet20@fmnist", "--bits", "3", "--abits", "8", "--variants", "real-calib",
               "--out", str(tmp_path)])
    (record,) = (tmp_path / "real-calib-resnet20-fmnist-w3a8-s0").glob("*.json")
    record = json.loads(record.read_text())
    assert (record["wbits"], record["abits"]) == (3, 8) and record["off_protocol"]
    assert capsys.readouterr().out.startswith(f"real-calib  W3A8 seed 0  dev top-1 {record['final_top1']:6.2f}")


def test_divergence_probe_replays_a_run_and_logs_every_step(tmp_path, capsys):
    probe = _load("divergence_probe")
    jsonl = tmp_path / "steps.jsonl"
    probe.main(["--method", "gdfq", "--model", "resnet20@fmnist", "--protocol", "smoke", "--seed", "0",
                "--from-step", "3", "--last", "2", "--jsonl", str(jsonl)])
    out = capsys.readouterr().out
    assert out.startswith("gdfq resnet20@fmnist W4A4 seed 0: ok")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    from zsqbench.spine.registry import get_registry
    steps = get_registry().get("protocols", "smoke")["train"]["steps"]
    assert [r["step"] for r in rows] == list(range(steps))
    assert all(r["nonfinite_params"] == [] and r["param_absmax"] > 0 and r["images_absmax"] > 0 for r in rows)
    assert "first_nonfinite_module" in rows[-1] and "first_nonfinite_module" not in rows[0]
    assert get_registry().methods["gdfq-probe"].provider == "benchmarks/divergence_probe.py"


def test_divergence_probe_names_the_first_non_finite_module(tmp_path, capsys):
    probe = _load("divergence_probe")
    jsonl = tmp_path / "steps.jsonl"
    probe.main(["--method", "gdfq", "--model", "resnet20@fmnist", "--protocol", "smoke", "--set", "train.lr=1e12",
                "--jsonl", str(jsonl)])
    assert ": diverged" in capsys.readouterr().out
    last = json.loads(jsonl.read_text().splitlines()[-1])
    assert last["nonfinite_params"] and last["first_nonfinite_module"] is not None


def test_seed_split_crosses_set_and_train_seeds_and_its_diagonal_is_the_plain_run(tmp_path, capsys):
    split = _load("seed_split")
    out = tmp_path / "split"
    split.main(["--method", "intraq", "--protocol", "smoke", "--set-seeds", "0,1", "--train-seeds", "0,1",
                "--set", "eval.limit=200", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert "set seed: " in capsys.readouterr().out
    result = json.loads((out / "intraq-resnet20-fmnist-w3a3.json").read_text())
    runs = {(r["set_seed"], r["train_seed"]): r for r in result["runs"]}
    assert set(runs) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    # the set follows the set seed alone; the two sets differ
    assert runs[0, 0]["set_bns_error"] == runs[0, 1]["set_bns_error"] != runs[1, 0]["set_bns_error"]
    shares = result["anova"]["set"]["share"] + result["anova"]["train"]["share"] + result["anova"]["residual_share"]
    assert abs(shares - 1) < 1e-9
    from zsqbench.testing import run_method
    plain = run_method("intraq", out_dir=tmp_path / "plain", protocol="smoke", bits=3, seed=1,
                       overrides={"eval.split": "dev", "eval.limit": 200})
    assert plain["final_top1"] == runs[1, 1]["dev_top1"]
    assert plain["diagnostics"]["data"]["synthetic"]["bns_error"] == runs[1, 1]["set_bns_error"]


def test_seed_split_refuses_a_generator_method_in_one_line():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seed_split.py"), "--method", "gdfq"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "image set" in done.stderr


def test_learning_curve_plateau_and_schedule_names():
    curves = _load("learning_curves")
    # the first step within 0.5 of the best mean from there on; a curve still rising at its end plateaus at its end
    assert curves.plateau_step({100: [80.0, 82.0], 200: [90.0, 90.4], 300: [89.9, 90.1], 400: [90.3]}) == 200
    assert curves.plateau_step({100: [70.0], 500: [80.0], 1000: [88.0]}) == 1000
    # every schedule's settings read back as its own name (steps included: swa-2000 is not swa-late)
    for name, spec in curves.SCHEDULES.items():
        merged = {**curves.COMMON, **spec}
        train = {"milestones": merged["train.milestones"], "average_from": merged["train.average_from"],
                 "steps": merged["train.steps"]}
        assert curves._schedule_name(train) == name


def test_learning_curve_table_names_diverged_seeds_and_ends_on_the_finished_ones():
    curves = _load("learning_curves")

    def run(seed, history, diverged=None):
        return {"method": "intraq", "model": "mobilenetv1@fmnist", "bits": "W4A4", "schedule": "swa-late",
                "seed": seed, "status": "diverged" if diverged else "ok", "history": history, "mean_step_s": 0.2,
                "diverged": {"phase": "distill", "step": diverged, "what": "student loss"} if diverged else None}

    runs = [run(0, [[100, 50.0], [200, 52.0]]), run(1, [[100, 54.0], [200, 56.0]]), run(2, [[100, 40.0]], 183)]
    [row] = curves.table_rows(runs)
    assert row[4] == "3" and row[5].startswith("48.0 / 54.0 / —")
    assert row[6] == "54.0 (200)" and row[7] == "2.83"  # the end: the two seeds that reached it
    assert row[8] == "1 of 3 (step 183)" and row[10] == "200"
    assert curves.table_rows(runs[:2])[0][8] == "—"


def test_learning_curve_jobs_are_valid_off_protocol_sweep_jobs(tmp_path, capsys):
    curves = _load("learning_curves")
    curves.main(["run", "--methods", "bag", "--models", "resnet20@fmnist", "--bits", "3", "--seeds", "0",
                 "--schedule", "swa-2000", "--out", str(tmp_path), "--dry-run"])
    out = capsys.readouterr().out.split()
    assert out[0] == "todo" and out[1].endswith("bag-resnet20-fmnist-w3a3-s0")


def test_divergence_probe_swap_scores_blocks_and_leaves_the_run_unchanged(tmp_path, capsys):
    probe = _load("divergence_probe")
    args = ["--method", "gdfq", "--model", "resnet20@fmnist", "--protocol", "smoke", "--seed", "1", "--last", "1"]
    probe.main(args)
    plain = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("{")]
    jsonl = tmp_path / "steps.jsonl"
    probe.main(args + ["--swap", "1,3", "--swap-images", "200", "--jsonl", str(jsonl)])
    out = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("{")]
    assert out[:len(plain)] == plain  # the swaps put the step-3 student back: the run's scores are unchanged
    out = out[len(plain):]
    assert out[0].startswith("dev top-1 at step 1: ") and "at step 3: " in out[0]
    swap = next(json.loads(line)["swap"] for line in jsonl.read_text().splitlines() if '"swap"' in line)
    names = [b["block"] for b in swap["blocks"]]
    assert names[0].startswith("features.init_block") and names[-1] == "output" and len(names) == len(set(names))
    assert all(0 <= b["a_with_b_block"] <= 100 and 0 <= b["b_with_a_block"] <= 100 and b["rel_change"] >= 0
               for b in swap["blocks"])
    assert len(out) == 2 + len(names)


def test_divergence_probe_refuses_a_bad_swap_in_one_line():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "divergence_probe.py"), "--method", "gdfq",
                             "--model", "resnet20@fmnist", "--swap", "5,2"], capture_output=True, text=True)
    assert result.returncode != 0 and "--swap takes two steps" in result.stderr and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "divergence_probe.py"), "--method", "gdfq",
                             "--model", "resnet20@fmnist", "--swap", "a,b"], capture_output=True, text=True)
    assert result.returncode != 0 and "--swap takes two steps" in result.stderr and "Traceback" not in result.stderr


def test_divergence_probe_says_when_the_swap_steps_lie_past_the_run(capsys):
    probe = _load("divergence_probe")
    with pytest.raises(SystemExit, match="the run stopped before step 99"):
        probe.main(["--method", "gdfq", "--model", "resnet20@fmnist", "--protocol", "smoke", "--swap", "1,99"])


def test_teacher_bn_report_contrasts_the_embedded_teachers(capsys):
    """benchmarks/teacher_bn.py (issue #25 part 3): the equalised MobileNetV1's first BN holds nearly all BN
    variance; the ResNet-20's holds a small share — the contrast a new MobileNet teacher is judged by."""
    teacher_bn = _load("teacher_bn")
    teacher_bn.main(["resnet20@fmnist", "mobilenetv1@fmnist", "--json"])
    reports = json.loads(capsys.readouterr().out)
    r20, mbv1 = reports["resnet20@fmnist"], reports["mobilenetv1@fmnist"]
    assert r20["bn_layers"] == len(r20["layers"]) > 10
    assert r20["first_layer_share_of_variance"] < 0.05 < 0.9 < mbv1["first_layer_share_of_variance"]
    assert mbv1["max_variance"] > 1e4 > 10 > r20["max_variance"]


def test_dev_criteria_reads_the_reference_rows_by_role():
    """benchmarks/dev_criteria.py: the three criteria of issue #25 on one table's dev means."""
    mod = _load("dev_criteria")
    roles = {"noise": "floor", "fp": "ceiling"}
    rows = {"fp": {0: 95.4}, "noise": {0: 20.0, 1: 30.0}, "gdfq": {0: 80.0}, "qimera": {0: 90.0, 1: 92.0}}
    c = mod.criteria(rows, roles)
    assert (c["floor"], c["fp"], c["best"], c["spread"]) == (25.0, 95.4, 91.0, 11.0)
    assert c["1 floor >= 10 under FP"] and c["2 best >= 1 under FP"] and c["3 two methods 3+ apart"]
    saturated = mod.criteria({"fp": {0: 95.4}, "noise": {0: 90.0}, "a": {0: 95.0}, "b": {0: 94.9}}, roles)
    assert saturated["1 floor >= 10 under FP"] is False and saturated["2 best >= 1 under FP"] is False
    assert saturated["3 two methods 3+ apart"] is False
    assert mod.criteria({"a": {0: 90.0}}, roles)["3 two methods 3+ apart"] is None
