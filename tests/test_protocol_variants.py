"""Protocol variants: a protocol file by its path, `method_settings` (a variant keeps its methods' settings), and the
`quantization` block (the first and last layers at 8 bits) — in the student, the record and the job identity."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from zsqbench.protocols import BUILTIN_DIR, load_protocol_file
from zsqbench.quantizer.fakequant import QuantConv2d, QuantLinear, act_quantizers, quantize_model
from zsqbench.spine.errors import UserError
from zsqbench.teacher.zoo import builtin_models

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("key", ["resnet20@fmnist", "mobilenetv1@fmnist"])
def test_first_last_bits_keeps_the_ends_at_8_bits(key):
    net = {s.key: s for s in builtin_models()}[key].build()
    plain = quantize_model(net, 3, 3)
    ends = quantize_model(net, 3, 3, first_last_bits=8)
    layers = [m.wbits for m in ends.modules() if isinstance(m, (QuantConv2d, QuantLinear))]
    assert layers[0] == layers[-1] == 8 and set(layers[1:-1]) == {3}
    assert {m.wbits for m in plain.modules() if isinstance(m, (QuantConv2d, QuantLinear))} == {3}
    acts = [q.bits for q in act_quantizers(ends)]
    assert acts[-1] == 8 and set(acts[:-1]) == {3}  # the classifier's input; every other activation at 3 bits


def variant(tmp_path, **extra) -> Path:
    data = json.loads((BUILTIN_DIR / "smoke.json").read_text())
    data.update(name="smoke-ends8", method_settings="smoke", **extra)
    path = tmp_path / "smoke-ends8.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("quant", [{"first_last_bits": 1}, {"first_last_bits": "8"}, {"first_bits": 8}, [8]])
def test_a_bad_quantization_block_is_one_line(tmp_path, quant):
    with pytest.raises(UserError, match="quantization must be"):
        load_protocol_file(variant(tmp_path, quantization=quant))


def test_a_run_under_a_protocol_file_with_8_bit_ends(tmp_path):
    proto = variant(tmp_path, quantization={"first_last_bits": 8})
    cmd = [sys.executable, "-m", "zsqbench.frontends.cli", "run", "--method", "noise", "--model", "resnet20",
           "--bits", "4", "--protocol", str(proto), "--out", str(tmp_path / "out"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (path,) = (tmp_path / "out").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["protocol"]["name"] == "smoke-ends8" and not rec["off_protocol"]
    assert rec["config"]["quantization"] == {"first_last_bits": 8}  # in the record and in its config hash
    # the protocol without the block is another protocol (its hash covers the block) with the same settings
    plain = load_protocol_file(variant(tmp_path))
    assert plain["hash"] != rec["protocol"]["hash"]
