"""Loss terms checked against hand computation: logit KD (zsqbench.distiller.kd) and BNS matching
(zsqbench.synthesizer.bns)."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from zsqbench.distiller.kd import KDDistiller, kd_kl
from zsqbench.spine.interfaces import Batch
from zsqbench.synthesizer.bns import BNStatHooks


S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=torch.float64)
T_ = torch.tensor([[0.5, 1.5, 2.0], [2.0, 0.0, 1.0]], dtype=torch.float64)


def softmax_by_hand(row, temp):
    e = [math.exp(v / temp) for v in row]
    z = sum(e)
    return [v / z for v in e]


def kl_sum_by_hand(student, teacher, temp):
    """sum over batch and classes of p*log(p/q), p = softmax(teacher/T), q = softmax(student/T)."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p, q = softmax_by_hand(t_row, temp), softmax_by_hand(s_row, temp)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total


@pytest.mark.parametrize("temp", [1.0, 4.0, 20.0])
def test_kd_kl_mean_is_sum_over_batch_times_classes(temp):
    expected = kl_sum_by_hand(S, T_, temp) / (2 * 3)
    assert float(kd_kl(S, T_, temp, "mean")) == pytest.approx(expected, rel=1e-10)
    assert float(kd_kl(S, T_, temp)) == pytest.approx(expected, rel=1e-10)  # "mean" is the default


@pytest.mark.parametrize("temp", [1.0, 4.0, 20.0])
def test_kd_kl_batchmean_is_sum_over_batch(temp):
    expected = kl_sum_by_hand(S, T_, temp) / 2
    assert float(kd_kl(S, T_, temp, "batchmean")) == pytest.approx(expected, rel=1e-10)


def test_kd_kl_reductions_differ_by_num_classes():
    s, t = torch.randn(4, 10, generator=torch.Generator().manual_seed(0)), torch.randn(4, 10)
    assert float(kd_kl(s, t, 3.0, "batchmean")) == pytest.approx(10 * float(kd_kl(s, t, 3.0, "mean")), rel=1e-5)


def test_kd_kl_zero_for_equal_logits_and_positive_otherwise():
    assert float(kd_kl(S, S.clone(), 4.0)) == pytest.approx(0.0, abs=1e-12)
    assert float(kd_kl(S, T_, 4.0)) > 0


def test_kd_kl_gradient_only_to_student():
    s = S.clone().requires_grad_(True)
    t = T_.clone().requires_grad_(True)
    kd_kl(s, t, 2.0).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None
    # d/ds of sum-KL at temperature T is (q - p)/T per element; "mean" divides by numel
    p, q = F.softmax(T_ / 2.0, dim=1), F.softmax(S / 2.0, dim=1)
    assert torch.allclose(s.grad, (q - p) / 2.0 / S.numel())


def test_kd_kl_rejects_unknown_reduction():
    with pytest.raises(ValueError):
        kd_kl(S, T_, 1.0, "sum")


class _Fixed(nn.Module):
    """A 'network' that returns given logits whatever the input (keeps the arithmetic exact)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits.clone())
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.logits[: x.shape[0]] * 1


@pytest.mark.parametrize("cfg", [
    {},
    {"temperature": 4.0, "alpha": 0.5, "kl_reduction": "batchmean", "ce_weight": 0.3},
    {"temperature": 20.0, "alpha": 20.0, "kl_reduction": "batchmean", "ce_weight": 1.0},
    {"temperature": 1.0, "alpha": 2.0, "kl_reduction": "mean", "ce_weight": 0.0},
])
def test_kd_distiller_total_loss(cfg):
    d = KDDistiller(**cfg)
    c = d.config
    ctx = SimpleNamespace(student=_Fixed(S), teacher=_Fixed(T_))
    labels = torch.tensor([1, 2])
    batch = Batch(images=torch.zeros(2, 1, 4, 4, dtype=torch.float64), labels=labels)
    loss, parts = d.loss(ctx, batch)

    # CE by hand
    ce = 0.0
    for row, y in zip(S.tolist(), labels.tolist()):
        ce += -(row[y] - math.log(sum(math.exp(v) for v in row)))
    ce /= 2
    kl_sum = kl_sum_by_hand(S, T_, c["temperature"])
    kl = kl_sum / (S.numel() if c["kl_reduction"] == "mean" else S.shape[0])
    expected = c["ce_weight"] * ce + c["alpha"] * c["temperature"] ** 2 * kl
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert parts["ce"] == pytest.approx(ce, rel=1e-9)
    assert parts["kl"] == pytest.approx(kl, rel=1e-9)
    assert float(F.cross_entropy(S, labels)) == pytest.approx(ce, rel=1e-12)
    # the teacher was asked for its logits, and the loss trains the student only
    assert ctx.teacher.calls == 1
    loss.backward()
    assert ctx.student.logits.grad is not None and ctx.teacher.logits.grad is None


def test_kd_distiller_uses_precomputed_teacher_logits():
    d = KDDistiller(temperature=2.0)
    teacher = _Fixed(S)  # would give KL 0 if it were run
    ctx = SimpleNamespace(student=_Fixed(S), teacher=teacher)
    batch = Batch(images=torch.zeros(2, 1, 4, 4, dtype=torch.float64), labels=torch.tensor([0, 1]),
                  teacher_logits=T_)
    _, parts = d.loss(ctx, batch)
    assert teacher.calls == 0
    assert parts["kl"] == pytest.approx(kl_sum_by_hand(S, T_, 2.0) / 6, rel=1e-9)


def test_kd_distiller_defaults_and_unknown_setting():
    from zsqbench.spine.errors import UserError
    assert KDDistiller().config == {"temperature": 20.0, "alpha": 1.0, "kl_reduction": "mean", "ce_weight": 1.0}
    with pytest.raises(UserError):
        KDDistiller(temprature=3)


# --- BNS ---------------------------------------------------------------------------------------------------

def _bn_net(running_mean, running_var):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3), nn.ReLU())
    net[1].running_mean.copy_(torch.tensor(running_mean))
    net[1].running_var.copy_(torch.tensor(running_var))
    return net.eval()


def _bns_by_hand(feat, rm, rv):
    """feat: (N, C, H, W) BN input as nested lists. MSE over channels of mean and biased variance."""
    x = torch.as_tensor(feat, dtype=torch.float64)
    n, c = x.shape[0], x.shape[1]
    err_m = err_v = 0.0
    for ch in range(c):
        vals = x[:, ch].flatten().tolist()
        m = sum(vals) / len(vals)
        v = sum((a - m) ** 2 for a in vals) / len(vals)  # biased
        err_m += (m - rm[ch]) ** 2
        err_v += (v - rv[ch]) ** 2
    return err_m / c + err_v / c


def test_bns_hand_computed():
    rm, rv = [0.5, -1.0, 2.0], [1.0, 0.25, 4.0]
    net = _bn_net(rm, rv)
    hooks = BNStatHooks(net)
    assert hooks.layers == [net[1]]
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feat = net[0](x)
    with hooks.recording():
        net(x)
    expected = _bns_by_hand(feat.tolist(), rm, rv)
    assert hooks.loss().item() == pytest.approx(expected, rel=1e-5)


def test_bns_uses_variance_not_std_and_biased():
    """Inputs with a known mean/var: constant-per-channel shift, +-a pattern with biased variance a^2."""
    rm, rv = [0.0, 0.0], [1.0, 1.0]
    net = nn.Sequential(nn.BatchNorm2d(2)).eval()
    net[0].running_mean.copy_(torch.tensor(rm))
    net[0].running_var.copy_(torch.tensor(rv))
    hooks = BNStatHooks(net)
    x = torch.zeros(2, 2, 1, 1)
    x[0, 0], x[1, 0] = 3.0, -3.0   # channel 0: mean 0, biased var 9 (unbiased would be 18, std 3)
    x[:, 1] = 2.0                  # channel 1: mean 2, var 0
    with hooks.recording():
        net(x)
    expected = ((0 - 0) ** 2 + (2 - 0) ** 2) / 2 + ((9 - 1) ** 2 + (0 - 1) ** 2) / 2
    assert hooks.loss().item() == pytest.approx(expected)


def test_bns_mean_over_layers_and_gradient_to_input():
    net = nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2)).eval()
    with torch.no_grad():
        net[1].weight.copy_(2 * torch.eye(2).view(2, 2, 1, 1))
        net[2].running_mean.fill_(1.0)
    hooks = BNStatHooks(net)
    x = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(2), requires_grad=True)
    with hooks.recording():
        out = net(x)
    bn0_in = x.detach()
    bn1_in = net[1](net[0](bn0_in)).detach()
    l0 = _bns_by_hand(bn0_in.tolist(), [0.0, 0.0], [1.0, 1.0])
    l1 = _bns_by_hand(bn1_in.tolist(), [1.0, 1.0], [1.0, 1.0])
    assert len(hooks.stats()) == 2
    loss = hooks.loss()
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert out.shape == x.shape


def test_bns_records_nothing_outside_recording():
    net = _bn_net([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    hooks = BNStatHooks(net)
    x = torch.randn(2, 2, 3, 3)
    net(x)
    with pytest.raises(RuntimeError):
        hooks.loss()
    with hooks.recording():
        net(x)
    first = hooks.loss().item()
    net(x * 10)  # outside: must not add to (or change) what was recorded
    assert len(hooks.stats()) == 1 and hooks.loss().item() == first
    with hooks.recording():  # a new recording starts afresh
        net(x * 10)
        net(x * 10)
    assert len(hooks.stats()) == 2 and hooks.loss().item() != first


def test_bns_recording_off_after_exception_and_remove():
    net = _bn_net([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    hooks = BNStatHooks(net)
    with pytest.raises(KeyError):
        with hooks.recording():
            raise KeyError("x")
    net(torch.randn(2, 2, 3, 3))
    assert hooks._stats == []
    hooks.remove()
    with hooks.recording():
        net(torch.randn(2, 2, 3, 3))
    with pytest.raises(RuntimeError):
        hooks.loss()
