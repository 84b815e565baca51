"""Keep what you quantized (issue #30): the saved student reloads bit-exact, `zsqbench evaluate` reproduces its
record's top-1, the ONNX QDQ export agrees with the fake-quant student in a real onnxruntime session, an own network
(`--model module:factory`) goes through run, save and export, and bad input gets one line."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line
import torch

from zsqbench.export import export_dir
from zsqbench.export.measure import state_dict_bytes
from zsqbench.export.student import load_student, pack, read_student, save_student, unpack
from zsqbench.quantizer.components import MinMaxEMAQuantizer
from zsqbench.spine.errors import UserError
from zsqbench.spine.loop import RunSpec, run
from zsqbench.spine.registry import get_registry
from zsqbench.teacher.zoo import load_teacher

pytest.importorskip("onnxruntime")

TESTS = Path(__file__).resolve().parent
OWN_ENV = {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_roundtrip(bits):
    codes = np.random.default_rng(bits).integers(0, 2 ** bits, size=1001)
    packed = pack(codes, bits)
    assert packed.size == -(-1001 * bits // 8)
    assert np.array_equal(unpack(packed, bits, 1001), codes)


def _calibrated_student(key: str, bits: int, **quantization):
    teacher, info = load_teacher(get_registry().get("models", key))
    q = MinMaxEMAQuantizer(**MinMaxEMAQuantizer.defaults)
    student = q.quantize(teacher, bits, bits, **quantization).eval()
    torch.manual_seed(0)
    q.set_calibrating(student, True)
    with torch.no_grad():
        for _ in range(3):
            student(torch.randn(8, 1, 32, 32))
    q.set_calibrating(student, False)
    return teacher, info, student


def _meta(key, bits, card, **quantization):
    name, dataset = key.split("@")
    return {"quantization": quantization, "architecture": {"name": name, "key": key, "factory": None}, "dataset": dataset, "num_classes": 10,
            "input_shape": [1, 32, 32], "wbits": bits, "abits": bits,
            "quantizer": {"name": "minmax-ema", "config": MinMaxEMAQuantizer.defaults}, "card": card,
            "teacher": {"source": "embedded"}}


@pytest.mark.parametrize("key", ["resnet20@fmnist", "mobilenetv1@fmnist"])
def test_reload_is_bit_exact_and_small(tmp_path, key):
    teacher, _, student = _calibrated_student(key, 4)
    card = {"mean": [0.286], "std": [0.353], "fit": "pad"}
    saved = save_student(tmp_path / "s.student.pt", student, _meta(key, 4, card))
    again, meta = load_student(tmp_path / "s.student.pt")
    x = torch.randn(16, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(student(x), again(x))  # the same floats, not merely close
    fp = state_dict_bytes(teacher)
    print(f"{key} W4A4: student file {saved['bytes']} B, FP state dict {fp} B ({saved['bytes'] / fp:.3f})")
    if key.startswith("resnet20"):
        assert saved["bytes"] <= fp / 6  # the size target at W4A4


EMBEDDED = [(m, b) for m in ("resnet20", "mobilenetv1") for b in (4, 8, 3)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Smoke runs with --export, one per (teacher, bits), made once for the tests below."""
    done = {}

    def get(model, bits):
        if (model, bits) not in done:
            d = tmp_path_factory.mktemp(f"{model}-w{bits}")
            rec, path = run(RunSpec(method="noise", model=model, wbits=bits, abits=bits, protocol="smoke",
                                    out=str(d / "res"), quiet=True, save_student=True, export_dir=str(d / "onnx")))
            done[model, bits] = (rec, path, d)
        return done[model, bits]
    return get


@pytest.mark.parametrize("model, bits", EMBEDDED, ids=[f"{m}-W{b}A{b}" for m, b in EMBEDDED])
def test_onnx_student_matches_the_record(exported, model, bits):
    rec, path, d = exported(model, bits)
    ex = rec["export"]
    m = ex["measured"]
    print(f"{model} W{bits}A{bits}: fake-quant {rec['final_top1']} %, onnxruntime {m['student_onnx_top1']} %, "
          f"teacher.onnx {m['teacher_onnx_top1']} % (FP {rec['fp_top1']} %); sizes {ex['sizes']}; "
          f"agreement {m['vs_fake_quant']}, folded {m['student_onnx_folded_top1']} % {m['folded_vs_fake_quant']}; "
          f"latency {m.get('latency')}; {m['student_graph']['verdict']}")
    assert m["images"] == rec["eval_samples"]
    tolerance = 0.5 if bits == 3 else 0.1  # W3A3: knife-edge rounding (see docs/export.md)
    assert abs(m["student_onnx_top1"] - rec["final_top1"]) <= tolerance + 1e-9
    assert m["teacher_onnx_top1"] == pytest.approx(rec["fp_top1"], abs=0.1 + 1e-9)
    files = {p.name for p in (d / "onnx").iterdir()}
    assert files == {"student.onnx", "teacher.onnx", "export.json", "README.md"}
    student_file = path.parent / rec["student"]["file"]
    assert student_file.is_file() and student_file.stat().st_size == rec["student"]["bytes"]
    import onnx
    g = onnx.load(str(d / "onnx" / "student.onnx")).graph
    ops = [n.op_type for n in g.node]
    if bits < 8:  # the n-bit range inside the 8-bit container
        assert ops.count("Clip") == ops.count("QuantizeLinear") > 0
    assert ops.count("DequantizeLinear") == ops.count("QuantizeLinear") + ops.count("Conv") + ops.count("Gemm")


def test_evaluate_reproduces_the_record_exactly(exported, cli):
    rec, path, _ = exported("resnet20", 4)
    proc = cli("evaluate", path.parent / rec["student"]["file"])
    assert proc.returncode == 0, proc.stderr
    assert "reproduces the record exactly" in proc.stdout
    assert f"{rec['final_top1']:.4f}" in proc.stdout


def test_export_command(exported, cli, tmp_path):
    rec, path, _ = exported("mobilenetv1", 4)
    proc = cli("export", path.parent / rec["student"]["file"], "-o", tmp_path / "again", "--no-latency")
    assert proc.returncode == 0, proc.stderr
    fig = json.loads((tmp_path / "again" / "export.json").read_text())
    assert fig["measured"]["student_onnx_top1"] == rec["export"]["measured"]["student_onnx_top1"]
    assert "onnxruntime" in proc.stdout and "README" not in proc.stderr


# --- your own network -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def own_weights(tmp_path_factory):
    """`own_network.tiny` trained briefly on Fashion-MNIST, with a teacher card beside its weights."""
    import own_network
    from zsqbench.evaluation.data import load_split
    card = {"mean": [0.286], "std": [0.353], "fit": "pad"}
    x, y = load_split("fmnist", "train", None, card)
    torch.manual_seed(0)
    net = own_network.tiny()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for step in range(150):
        idx = torch.randint(0, len(y), (64,))
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = tmp_path_factory.mktemp("own")
    torch.save(net.state_dict(), d / "tiny.pt")
    (d / "tiny.pt.card.json").write_text(json.dumps({**card, "num_classes": 10, "input_size": [1, 32, 32]}))
    return d / "tiny.pt"


def test_own_network_end_to_end(cli, tmp_path, own_weights):
    out, onnx_dir = tmp_path / "res", tmp_path / "onnx"
    proc = cli("run", "-m", "gdfq", "--model", "own_network:tiny", "--weights", own_weights, "--protocol", "smoke",
               "--bits", "4", "-q", "--out", out, "--export", onnx_dir, env=OWN_ENV)
    assert proc.returncode == 0, proc.stderr
    (record_file,) = out.glob("*.json")
    rec = json.loads(record_file.read_text())
    assert rec["model"] == "own_network:tiny" and rec["fp_top1"] > 50  # it learned something
    m = rec["export"]["measured"]
    assert abs(m["student_onnx_top1"] - rec["final_top1"]) <= 0.1 + 1e-9
    proc = cli("evaluate", out / rec["student"]["file"], env=OWN_ENV)
    assert proc.returncode == 0 and "reproduces the record exactly" in proc.stdout, proc.stdout + proc.stderr
    proc = cli("export", out / rec["student"]["file"], "-o", tmp_path / "again", "--no-latency", env=OWN_ENV)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "student.onnx").is_file()


OWN_BAD = {
    "factory-raises": ("own_network:raises", "gdfq", ["factory raised RuntimeError", "out of coffee"]),
    "factory-not-a-module": ("own_network:not_a_module", "gdfq", ["returned a str, not a torch.nn.Module"]),
    "no-such-module": ("no_such_module_xyz:net", "gdfq", ["cannot import no_such_module_xyz"]),
    "no-bn-for-bns-method": ("own_network:no_bn", "gdfq", ["gdfq cannot serve", "no BatchNorm2d"]),
    "unwrappable-op": ("own_network:conv1d", "noise", ["cannot serve", "Conv1d", "cannot wrap"]),
}


@pytest.mark.parametrize("model, method, expected", OWN_BAD.values(), ids=OWN_BAD.keys())
def test_own_network_refused_before_the_teacher(cli, tmp_path, model, method, expected):
    garbage = tmp_path / "garbage.pt"  # the teacher's weights are unreadable: the refusal must come first
    garbage.write_bytes(b"not a torch file")
    out = tmp_path / "res"
    proc = cli("run", "-m", method, "--model", model, "--weights", garbage, "--protocol", "smoke", "--bits", "4",
               "-q", "--out", out, "--export", tmp_path / "onnx", env=OWN_ENV)
    line = error_line(proc)
    for text in expected:
        assert text in line
    assert not out.exists() and not (tmp_path / "onnx").exists()


# --- bad student files and destinations ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def student_file(tmp_path_factory):
    _, _, student = _calibrated_student("resnet20@fmnist", 4)
    d = tmp_path_factory.mktemp("student")
    path = d / "s.student.pt"
    save_student(path, student, {**_meta("resnet20@fmnist", 4, {"mean": [0.286], "std": [0.353], "fit": "pad"}),
                                 "evaluation": {"split": "test", "limit": 100, "batch_size": 100},
                                 "final_top1": None, "record": {"config_hash": "0" * 64, "method": "none", "seed": 0,
                                                                "protocol": "smoke", "created": ""}})
    return path


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bad_students(src: Path, d: Path) -> dict[str, Path]:
    obj = torch.load(src, weights_only=True)
    obj["floats"][0] += 1.0
    torch.save(obj, d / "edited.pt")
    data = src.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"format": "zsqbench-student", "payload": _Evil(d / "pwned")}, d / "code.pt")
    return {"edited": d / "edited.pt", "truncated": d / "truncated.pt", "code": d / "code.pt"}


BAD_STUDENT = {"edited": ["was edited or is corrupt"], "truncated": ["cannot read student file"],
               "code": ["cannot read student file", "could run code"]}


@pytest.mark.parametrize("command", ["evaluate", "export"])
@pytest.mark.parametrize("case", BAD_STUDENT, ids=BAD_STUDENT.keys())
def test_bad_student_file_one_line(cli, tmp_path, student_file, case, command):
    path = _bad_students(student_file, tmp_path)[case]
    args = [command, path] + (["-o", tmp_path / "out"] if command == "export" else [])
    line = error_line(cli(*args))
    for text in BAD_STUDENT[case]:
        assert text in line
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "out").exists()


def test_read_student_refuses_in_process(tmp_path, student_file):
    bad = _bad_students(student_file, tmp_path)
    for path in bad.values():
        with pytest.raises(UserError):
            read_student(path)
    assert not (tmp_path / "pwned").exists()


def test_export_dir_is_a_file(cli, tmp_path, student_file):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    line = error_line(cli("export", student_file, "-o", target))
    assert "is a file" in line and target.read_text() == "keep me"
    out = tmp_path / "res"
    line = error_line(cli("run", "-m", "noise", "--model", "resnet20", "--protocol", "smoke", "--bits", "4", "-q",
                           "--out", out, "--export", target))
    assert "is a file" in line and not out.exists()


def test_export_writes_nothing_on_failure(tmp_path, student_file):
    empty = tmp_path / "no-data"  # the evaluation data is missing: the measurement fails after the graphs exist
    empty.mkdir()
    out = tmp_path / "onnx"
    with pytest.raises(UserError, match="data not found"):
        export_dir(student_file, out, data_root=str(empty))
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".onnx")]


def test_saved_file_is_plain_data(student_file):
    # weights_only loading works on it (no Python objects), and torch.save of it round-trips
    obj = torch.load(student_file, weights_only=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    assert obj["format"] == "zsqbench-student" and len(buf.getvalue()) > 0


def test_a_student_without_integer_weights_is_refused_before_work():
    from zsqbench.spine.loop import resolve
    with pytest.raises(UserError, match="quantizer 'none' does not make"):
        resolve(RunSpec(method="fp", model="resnet20", wbits=4, abits=4, protocol="smoke", save_student=True))


def test_protocol_first_last_bits_survive_save_and_export(tmp_path):
    """A protocol's quantization block (first/last layers at 8 bits) is rebuilt on reload and exported per layer."""
    import onnxruntime as ort
    from zsqbench.export.onnx import export_student
    from zsqbench.export.student import weight_layers
    _, _, student = _calibrated_student("resnet20@fmnist", 4, first_last_bits=8)
    card = {"mean": [0.286], "std": [0.353], "fit": "pad"}
    save_student(tmp_path / "s.student.pt", student, _meta("resnet20@fmnist", 4, card, first_last_bits=8))
    again, meta = load_student(tmp_path / "s.student.pt")
    bits = [int(m.wbits) for _, m in weight_layers(again)]
    assert bits[0] == bits[-1] == 8 and set(bits[1:-1]) == {4}
    pixels = torch.rand(8, 1, 32, 32)
    with torch.no_grad():
        ref = again((pixels - 0.286) / 0.353)
        assert torch.equal(ref, student((pixels - 0.286) / 0.353))
    sess = ort.InferenceSession(export_student(again, meta), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"pixels": pixels.numpy()})[0]
    assert np.array_equal(out.argmax(1), ref.numpy().argmax(1))


def test_sweep_save_student(cli, tmp_path):
    out = tmp_path / "sweep"
    proc = cli("sweep", "-p", "smoke", "--methods", "noise", "--models", "resnet20@fmnist", "--save-student", "-q",
               "-o", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (student,) = out.glob("*/record.student.pt")
    rec = json.loads((student.parent / "record.json").read_text())
    assert rec["student"]["file"] == student.name and rec["student"]["bytes"] == student.stat().st_size
    proc = cli("evaluate", student)
    assert proc.returncode == 0 and "reproduces the record exactly" in proc.stdout, proc.stdout + proc.stderr
