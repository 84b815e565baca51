"""Teacher post-processing: cross-layer equalisation keeps the function and equalises the ranges it targets."""
import subprocess
import sys

import pytest
import torch

from zsqbench.frontends.train_teacher import equalize_cross_layer, relu_chain, relu_peaks
from zsqbench.frontends.train_teacher import main as train_main
from zsqbench.teacher.zoo import mobilenetv1_32, read_manifest, resnet20


def _random_mobilenet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = mobilenetv1_32(10, 1, width=0.25)
    with torch.no_grad():  # uneven BN statistics and scales, as in a trained network
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.01, 4)
                m.weight.copy_(torch.exp(torch.randn(m.num_features) * 1.5))
                m.bias.uniform_(-0.5, 1)
    return net.eval()


def test_equalisation_preserves_the_function_and_equalises_ranges():
    net = _random_mobilenet()
    x = torch.randn(64, 1, 32, 32)
    probe = torch.randn(16, 1, 32, 32)  # images the equalisation never saw
    with torch.no_grad():
        before = net(probe).clone()
    spread_before, spread_after = equalize_cross_layer(net, x)
    with torch.no_grad():
        after = net(probe)
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert spread_after < spread_before
    # on the images it used, each live channel's activation peak equals the weight range that reads it
    chain = relu_chain(net)
    for (block, nxt), r1 in zip(chain, relu_peaks(net, chain, x)):
        w = nxt.weight.detach()
        depthwise = isinstance(nxt, torch.nn.Conv2d) and nxt.groups > 1
        r2 = w.abs().flatten(1).amax(1) if depthwise else w.abs().transpose(0, 1).flatten(1).amax(1)
        live = r1 > 0
        assert torch.allclose(r1[live], r2[live], rtol=1e-3)


def test_equalisation_refuses_networks_with_skip_connections():
    with pytest.raises(ValueError, match="plain conv chain"):
        equalize_cross_layer(resnet20(10, 1), torch.randn(2, 1, 32, 32))
    r = subprocess.run([sys.executable, "-m", "zsqbench.frontends.train_teacher", "--model", "resnet20", "--equalize"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("--equalize needs a plain conv chain: mobilenetv1, not "
                                                      "resnet20 (skip connections)")


def test_embedded_mobilenet_records_its_post_processing():
    entry = read_manifest()["mobilenetv1@fmnist"]
    assert "--decay-all" in entry["trained_by"]
    assert entry["post_processed_by"].endswith("--post-process-only --equalize")
    eq = entry["cross_layer_equalized"]
    assert eq["peak_spread_after"] < eq["peak_spread_before"]
    assert entry["fp_top1"] == entry["fp_top1_before_post_processing"]  # function-preserving, measured


def test_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    """A teacher's training saves its state every epoch; stopped and resumed, it ends with the weights an
    uninterrupted run gives (a session is shorter than the second teachers' trainings)."""
    common = ["--model", "mobilenetv2", "--train-images", "128", "--test-images", "200", "--batch-size", "64", "--seed", "3",
              "--threads", "1", "--epochs", "2"]
    train_main(common + ["--out", str(tmp_path / "straight.pt")])
    ckpt = tmp_path / "run.ckpt"
    train_main(common + ["--out", str(tmp_path / "resumed.pt"), "--checkpoint", str(ckpt), "--stop-after-epoch", "1"])
    assert not (tmp_path / "resumed.pt").exists() and torch.load(ckpt, weights_only=True)["epoch"] == 1
    train_main(common + ["--out", str(tmp_path / "resumed.pt"), "--checkpoint", str(ckpt)])
    a = torch.load(tmp_path / "straight.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit):  # another recipe's checkpoint is refused
        train_main(common[:-1] + ["3", "--out", str(tmp_path / "x.pt"), "--checkpoint", str(ckpt)])


def test_embedded_teachers_match_their_manifest_and_the_transfer_teacher_is_another_recipe():
    """Every embedded teacher's file is the one its manifest entry hashes; each held-out teacher (issue #25 part 5:
    ResNet-20, MobileNetV2) was trained by another seed, batch, learning rate and weight decay than the one settings
    are chosen on."""
    from zsqbench.teacher.zoo import WEIGHTS_DIR, builtin_models, sha256_file
    manifest = read_manifest()
    embedded = [s for s in builtin_models() if s.embedded_weights]
    assert {s.key for s in embedded} >= {"resnet20@fmnist", "resnet20-b@fmnist", "mobilenetv1@fmnist",
                                         "mobilenetv2@fmnist", "mobilenetv2-b@fmnist"}
    for spec in embedded:
        entry = manifest[spec.embedded_weights]
        assert sha256_file(WEIGHTS_DIR / entry["file"]) == entry["sha256"], spec.key
        assert entry["trained_by"].startswith("python -m zsqbench.frontends.train_teacher ")
    def recipe(key):
        words = manifest[key]["trained_by"].split()
        return {w: words[i + 1] for i, w in enumerate(words) if w in ("--seed", "--batch-size", "--lr", "--wd")}
    for chosen, held in (("resnet20@fmnist", "resnet20-b@fmnist"), ("mobilenetv2@fmnist", "mobilenetv2-b@fmnist")):
        a, b = recipe(chosen), recipe(held)
        assert set(a) == set(b) == {"--seed", "--batch-size", "--lr", "--wd"}
        assert all(a[k] != b[k] for k in a), held
