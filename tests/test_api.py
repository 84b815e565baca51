"""The public plugin surface, ``zsqbench.api``: built-in plugins import nothing else from zsqbench, and the
extension points it documents (soft targets, generator conditioning, quantizer capabilities) work as documented."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

import zsqbench.api as api

ROOT = Path(__file__).resolve().parents[1]


def zsqbench_imports(path: Path) -> list[str]:
    """Every ``zsqbench[.x]`` module a file imports (``zsqbench_plugins`` siblings are other plugins: allowed)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [n for n in names if n == "zsqbench" or n.startswith("zsqbench.")]
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "plugins").glob("*.py")), ids=lambda p: p.name)
def test_builtin_plugins_import_only_the_public_api(path):
    outside = [m for m in zsqbench_imports(path) if m != "zsqbench.api"]
    assert not outside, f"{path.name} imports {outside}: built-in plugins may import only zsqbench.api"


def test_every_public_name_resolves_and_is_documented():
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    doc = api.__doc__
    for name in ("GeneratorSynthesizer", "ImageSetSynthesizer", "Batch", "RunContext", "UserError", "Quantizer",
                 "sample_conditioning", "generator_loss", "synthesis_loss", "label_loss", "require"):
        assert name in doc, f"zsqbench.api's docstring does not mention {name}"


def _ce_by_hand(logits, target_probs):
    total = 0.0
    for row, p in zip(logits, target_probs):
        lse = math.log(sum(math.exp(v) for v in row))
        total += -sum(pc * (v - lse) for v, pc in zip(row, p))
    return total / len(logits)


def test_batch_label_loss_hard_and_soft_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], dtype=torch.float64)
    hard = api.Batch(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]))
    assert hard.label_loss(logits).item() == pytest.approx(_ce_by_hand(logits.tolist(), [[1, 0, 0], [0, 0, 1]]))
    soft_targets = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.3, 0.7]], dtype=torch.float64)
    soft = api.Batch(torch.zeros(2, 1, 2, 2), torch.tensor([0, 2]), soft_labels=soft_targets)
    assert soft.label_loss(logits).item() == pytest.approx(_ce_by_hand(logits.tolist(), soft_targets.tolist()))
    cond = api.Conditioning(torch.tensor([0, 2]), soft_targets)
    assert cond.cross_entropy(logits).item() == pytest.approx(soft.label_loss(logits).item())


def test_quantizer_capabilities_give_one_line_errors():
    from zsqbench.quantizer.components import MinMaxEMAQuantizer, NoQuantizer
    MinMaxEMAQuantizer().require("quantize_inputs", "bag")  # has it: no error
    with pytest.raises(api.UserError) as e:
        NoQuantizer().require("quantize_inputs", "bag's quantized generator")
    msg = str(e.value)
    assert "\n" not in msg and "'none'" in msg and "quantize inputs" in msg and "minmax-ema" in msg


class MixingSynthesizer(api.GeneratorSynthesizer):
    """Overrides only the conditioning and the generator call: two classes mixed per image."""
    name = "test-mixing"

    def sample_conditioning(self, ctx, batch_size):
        a, b = ctx.random_labels(batch_size), ctx.random_labels(batch_size)
        soft = 0.7 * torch.nn.functional.one_hot(a, ctx.num_classes).float() \
            + 0.3 * torch.nn.functional.one_hot(b, ctx.num_classes).float()
        return api.Conditioning(soft.argmax(1), soft)

    def generate(self, ctx, z, cond):
        self.seen_soft = cond.soft_labels
        return self.generator(z, cond.soft_labels)  # the shared generator superposes the class embeddings

    def generator_loss(self, ctx, images, cond, teacher_logits, student_logits=None):
        return cond.cross_entropy(teacher_logits), {}


def test_generator_extension_points_carry_soft_targets_to_the_distiller():
    from zsqbench.distiller.kd import KDDistiller
    from zsqbench.spine.registry import get_registry
    from zsqbench.teacher.zoo import load_teacher
    spec = get_registry().get("models", "resnet20@fmnist")
    teacher = load_teacher(spec)[0].eval()
    from zsqbench.quantizer.components import MinMaxEMAQuantizer
    quantizer = MinMaxEMAQuantizer()
    student = quantizer.quantize(teacher, 4, 4)
    info = api.DatasetInfo("toy", 10, (1, 32, 32), (0.5,), (0.5,))
    ctx = api.RunContext(teacher=teacher, student=student, model=spec, dataset=info, wbits=4, abits=4,
                         quantizer=quantizer, device=torch.device("cpu"), seed=0, total_steps=2, warmup_steps=0)
    torch.manual_seed(0)
    synth = MixingSynthesizer(width=8, latent_dim=8)
    synth.prepare(ctx)
    batch = synth.next_batch(ctx, 4)
    assert batch.soft_labels is not None and torch.equal(batch.soft_labels, synth.seen_soft)
    assert torch.equal(batch.labels, batch.soft_labels.argmax(1))
    assert torch.allclose(batch.soft_labels.sum(1), torch.ones(4))
    quantizer.set_calibrating(student, True)
    student(batch.images)
    quantizer.set_calibrating(student, False)
    loss, parts = KDDistiller(alpha=0.0).loss(ctx, batch)  # alpha 0: the loss is the (soft) label term alone
    assert loss.item() == pytest.approx(parts["ce"])
    assert parts["ce"] == pytest.approx(batch.label_loss(student(batch.images)).item(), rel=1e-5)
    hard = api.Batch(batch.images, batch.labels, batch.teacher_logits)
    assert parts["ce"] != pytest.approx(hard.label_loss(student(batch.images)).item(), rel=1e-5)


def test_list_protocols_shows_each_protocols_grid_and_budget(cli):
    """`zsqbench list protocols` (issue #8, item 6): version, grid and per-run budget, read from the protocols."""
    from zsqbench.spine.registry import get_registry
    proc = cli("list", "protocols")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    for name, entry in get_registry().protocols.items():
        proto = entry.obj
        train = proto["train"]
        assert f"{name} │ {entry.provider} │ v{proto['version']}: {proto['models'][0]}" in out
        assert f"{train['warmup_steps']} warm-up + {train['steps']} steps at batch {train['batch_size']}" in out
        assert f"seeds {','.join(map(str, proto['seeds']))}" in out
