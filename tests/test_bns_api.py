"""Issue #28, part 3: BN statistics as a public API. Per-layer batch and per-sample moments beside the teacher's
running statistics; the built-in BNS losses written on them give the old formulas' numbers; the DSG-style example in
docs/plugins.md runs on it without hooks of its own."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zsqbench.api import BNLayerStats, BNStatHooks, bns_loss, per_sample_moment_loss, per_sample_bns_loss
from zsqbench.testing import smoke_context

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def old_formulas(teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The BNS losses as zsqbench computed them before the API (two-pass mean and var in each hook)."""
    batch, zeroq = [], []

    def hook(module, inputs, output):
        y = inputs[0]
        mean, var = y.mean(dim=(0, 2, 3)), y.var(dim=(0, 2, 3), unbiased=False)
        batch.append(F.mse_loss(mean, module.running_mean) + F.mse_loss(var, module.running_var))
        flat = y.flatten(2)
        m, s = flat.mean(2), (flat.var(2) + 1e-6).sqrt()
        target = (module.running_var + 1e-6).sqrt()
        zeroq.append(((m - module.running_mean).pow(2).sum(1) + (s - target).pow(2).sum(1)).mean())
    handles = [m.register_forward_hook(hook) for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        teacher(x)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(batch).mean(), torch.stack(zeroq).sum()


@pytest.fixture(scope="module")
def ctx():
    return smoke_context()


@pytest.mark.parametrize("form", ["batch", "per-sample"])
def test_builtin_losses_on_the_api_equal_the_old_formulas_values_and_gradients(ctx, form):
    torch.manual_seed(0)
    x_old = torch.randn(8, *ctx.image_shape, requires_grad=True)
    x_new = x_old.detach().clone().requires_grad_(True)
    old = old_formulas(ctx.teacher, x_old)[0 if form == "batch" else 1]
    hooks = BNStatHooks(ctx.teacher, form)
    try:
        with hooks.recording():
            ctx.teacher(x_new)
        new = hooks.loss()
        assert torch.allclose(new, (bns_loss if form == "batch" else per_sample_bns_loss)(hooks.stats()))
    finally:
        hooks.remove()
    assert torch.allclose(new, old, rtol=1e-5, atol=1e-7), (new.item(), old.item())
    old.backward()
    new.backward()
    scale = x_old.grad.abs().max()
    assert (x_new.grad - x_old.grad).abs().max() <= 1e-4 * scale


def test_per_sample_moment_loss_keeps_its_values():
    torch.manual_seed(1)
    x, mean, std = torch.randn(4, 3, 8, 8), torch.randn(3), torch.rand(3) + 0.5
    flat = x.flatten(2)
    by_hand = ((flat.mean(2) - mean).pow(2).sum(1) + ((flat.var(2) + 1e-6).sqrt() - std).pow(2).sum(1)).mean()
    assert torch.allclose(per_sample_moment_loss(x, mean, std), by_hand, rtol=1e-6)


def test_stats_per_layer_names_order_moments_and_running_statistics(ctx):
    bn_named = [(n, m) for n, m in ctx.teacher.named_modules() if isinstance(m, nn.BatchNorm2d)]
    seen = []
    handles = [m.register_forward_hook(lambda mod, i, o: seen.append((mod, i[0]))) for _, m in bn_named]
    hooks = BNStatHooks(ctx.teacher, per_sample=True)
    try:
        with hooks.recording():
            ctx.teacher(torch.randn(5, *ctx.image_shape))
        stats = hooks.stats()
    finally:
        hooks.remove()
        for h in handles:
            h.remove()
    assert hooks.names == [n for n, _ in bn_named] and hooks.layers == [m for _, m in bn_named]
    assert len(stats) == len(seen) == len(bn_named)
    for s, (module, x) in zip(stats, seen):  # forward order
        assert isinstance(s, BNLayerStats) and s.module is module and s.input is x
        assert s.name == hooks.names[s.index] and hooks.layers[s.index] is module
        assert torch.allclose(s.mean, x.mean(dim=(0, 2, 3)), atol=1e-6)
        assert torch.allclose(s.var, x.var(dim=(0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6)
        mean, var = s.per_sample()
        assert mean.shape == var.shape == x.shape[:2]
        assert torch.allclose(var, x.flatten(2).var(2, unbiased=False), rtol=1e-5, atol=1e-6)
        assert torch.allclose(s.per_sample(unbiased=True)[1], x.flatten(2).var(2), rtol=1e-5, atol=1e-6)
        assert s.running_mean is module.running_mean and s.running_var is module.running_var
        assert s.eps == module.eps
    with pytest.raises(RuntimeError, match="no BatchNorm2d"):
        with hooks.recording():
            pass
        hooks.stats()


def docs_example() -> str:
    text = DOCS.read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "class SlackLayerwiseSet" in b]
    return code


def test_the_docs_dsg_style_slack_layerwise_loss_runs_on_the_public_api(ctx, tmp_path):
    code = docs_example()
    assert "register_forward_hook" not in code and "BNStatHooks(" not in code  # no hooks of its own
    assert all(line.startswith("from zsqbench.api import") for line in code.splitlines() if "zsqbench" in line
               and "import" in line)
    ns: dict = {}
    exec(compile(code, str(DOCS), "exec"), ns)
    cls = ns["SlackLayerwiseSet"]
    synth = cls(num_images=8, synthesis_batch_size=8, iterations=2, slack=0.05, enhance=2.0)
    ctx.cache_dir = str(tmp_path)
    synth.prepare(ctx)  # synthesizes the set with the example's loss
    final = ctx.stats["synthesis"]["final"]
    assert final["slack_bns"] > 0 and synth.images.shape == (8, *ctx.image_shape)

    # the loss is what the docs say, checked against statistics taken by hand
    images = torch.randn(6, *ctx.image_shape)
    synth.bns = BNStatHooks(ctx.teacher)  # what synthesis gives it for each pass (removed when the set is done)
    with synth.bns.recording():
        logits = ctx.teacher(images)
    synth.bns.remove()
    loss, parts = synth.synthesis_loss(ctx, {}, images, logits, None, synth.bns.loss(), None)
    ran = [(s.input, s.module) for s in synth.bns.stats()]  # forward order (not module order: a downsampling
    assert [s.index for s in synth.bns.stats()] != list(range(len(ran)))  # unit's shortcut BN runs before its body's)
    per_layer = torch.stack([
        (F.relu((x.flatten(2).mean(2) - m.running_mean).abs() - 0.05).pow(2)
         + F.relu((x.flatten(2).var(2, unbiased=False) - m.running_var).abs() - 0.05).pow(2)).mean(1)
        for x, m in ran])
    weight = torch.ones_like(per_layer)
    for i in range(6):
        weight[i % len(ran), i] += 2.0
    assert loss.item() == pytest.approx((weight * per_layer).mean(1).sum().item(), rel=1e-5)
    assert parts["bns"] == pytest.approx(bns_loss(synth.bns.stats()).item())
