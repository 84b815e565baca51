"""Train an embedded Fashion-MNIST teacher — the committed, seeded script behind teacher/weights/.

    python -m zsqbench.frontends.train_teacher --model resnet20 --epochs 15 --seed 0
    python -m zsqbench.frontends.train_teacher --model resnet20 --name resnet20-b --seed 1 --batch-size 64 --lr 0.05 \
        --wd 1e-4 --epochs 12 --checkpoint /tmp/r20b.ckpt        # another teacher of the same architecture

Plain supervised training on the Fashion-MNIST *train* split (random 32x32 crop of the 4-pixel-padded image,
horizontal flip), SGD + Nesterov, cosine learning rate. The *final* epoch's network is saved — no model
selection on the test set — and its test top-1 is measured once and written to weights/manifest.json with
the file's sha256.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zsqbench.evaluation.data import load_fmnist
from zsqbench.teacher.card import default_card
from zsqbench.teacher.zoo import (MANIFEST, WEIGHTS_DIR, builtin_models, mobilenetv1_32, mobilenetv2_32,
                                  read_manifest, resnet20, sha256_file)

EMBEDDED_DATASET = "fmnist"  # the embedded teachers this script trains are Fashion-MNIST ones (its data reader too)
# the architectures this script trains for Fashion-MNIST (10 classes, 1 channel)
ARCHITECTURES = {"resnet20": lambda: resnet20(10, 1), "mobilenetv1": lambda: mobilenetv1_32(10, 1),
                 "mobilenetv2": lambda: mobilenetv2_32(10, 1)}
EQUALIZE_IMAGES = 20000  # training images whose ReLU peaks set the cross-layer equalisation


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batched random crop (after padding with the background value) + horizontal flip."""
    n, c, h, w = x.shape
    background = x[0, 0, 0, 0].item()  # the zero-padding border, already normalised
    xp = F.pad(x, (pad, pad, pad, pad), value=background)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))            # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))            # (n, w)
    flip = torch.rand(n, generator=gen) < 0.5
    cols = torch.where(flip.view(n, 1), cols.flip(1), cols)
    idx_n = torch.arange(n).view(n, 1, 1)
    out = xp[idx_n, :, rows.view(n, h, 1), cols.view(n, 1, w)]     # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def neutralize_dead_bn_channels(net: torch.nn.Module, var_threshold: float = 1e-6) -> int:
    """Zero the BN scale of channels whose running variance is ~0 (their input never varied in training).

    On real data such a channel's input sits at its running mean, so its output is beta whatever gamma is: the
    network's function on the training distribution does not change. On anything else (synthetic images, noise)
    the channel would amplify the deviation by gamma/sqrt(eps) ~ 300x per layer — the trained MobileNetV1 had 14
    such channels (running var 5.6e-45) and turned N(0, 9) noise into logits of 5e10. Returns how many."""
    n = 0
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.affine:
            dead = m.running_var < var_threshold
            m.weight[dead] = 0.0
            n += int(dead.sum())
    return n


def relu_chain(net: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
    """(Conv-BN-ReLU block, the layer its output feeds) for a plain chain network — pytorchcv's MobileNetV1: every
    ConvBlock feeds the next one's conv, the last feeds `output` through the (linear) average pool. Networks with
    skip connections (ResNets) are refused: scaling a channel there would also scale the residual path."""
    if type(net).__name__ != "MobileNet":
        raise ValueError(f"cross-layer equalisation needs a plain conv chain (pytorchcv MobileNetV1), "
                         f"not {type(net).__name__}")
    blocks = [m for m in net.modules() if hasattr(m, "conv") and hasattr(m, "bn")
              and isinstance(getattr(m, "activ", None), torch.nn.ReLU)]
    return [(b, blocks[i + 1].conv if i + 1 < len(blocks) else net.output) for i, b in enumerate(blocks)]


@torch.no_grad()
def relu_peaks(net: torch.nn.Module, chain, x: torch.Tensor, batch_size: int = 1000) -> list[torch.Tensor]:
    """Per block of `chain`, each channel's largest ReLU output over the images `x`."""
    net.eval()
    peaks = [torch.zeros(b.bn.num_features) for b, _ in chain]

    def keep_peak(peak):
        def hook(module, inputs, out):  # returns None: a forward hook's return value would replace the output
            torch.maximum(peak, out.amax((0, 2, 3)), out=peak)
        return hook
    hooks = [b.activ.register_forward_hook(keep_peak(p)) for (b, _), p in zip(chain, peaks)]
    try:
        for i in range(0, len(x), batch_size):
            net(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return peaks


def peak_spread(peaks: list[torch.Tensor]) -> float:
    """Mean over blocks of (largest / smallest) channel peak among the channels that fire at all."""
    ratios = [float(p[p > 0].max() / p[p > 0].min()) for p in peaks if (p > 0).any()]
    return sum(ratios) / max(len(ratios), 1)


@torch.no_grad()
def equalize_cross_layer(net: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Cross-layer equalisation (after Nagel et al., "Data-Free Quantization", 2019), with activation ranges.

    ReLU is positively homogeneous, so scaling channel c of a block's BN output by t_c > 0 and dividing the next
    layer's input channel c by t_c leaves the network's function unchanged (zero padding and average pooling
    commute with the scaling too). With r1 = the channel's largest ReLU output on `x` and r2 = the largest
    |weight| reading it in the next layer, t = sqrt(r2 / r1) gives both the range sqrt(r1 * r2), so one
    per-tensor 4-bit grid no longer has to cover channels whose peaks differ by orders of magnitude. Channels
    silent on `x` keep t = 1. One pass is exact: block i's scaling is undone in block i+1's conv, so no other
    block's r1 or r2 moves. Returns :func:`peak_spread` before and after."""
    chain = relu_chain(net)
    peaks = relu_peaks(net, chain, x)
    for (block, nxt), r1 in zip(chain, peaks):
        w = nxt.weight
        depthwise = isinstance(nxt, torch.nn.Conv2d) and nxt.groups > 1
        # input channel c of the next layer: a depthwise conv's output channel c, else weight column c
        r2 = w.abs().flatten(1).amax(1) if depthwise else w.abs().transpose(0, 1).flatten(1).amax(1)
        live = (r1 > 0) & (r2 > 0)
        t = torch.ones_like(r1)
        t[live] = torch.sqrt(r2[live] / r1[live])
        block.bn.weight.mul_(t)
        block.bn.bias.mul_(t)
        shape = [1] * w.ndim
        shape[0 if depthwise else 1] = -1
        w.div_(t.view(shape))
    return peak_spread(peaks), peak_spread(relu_peaks(net, chain, x))


@torch.no_grad()
def evaluate(net, x, y, batch_size=500) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return 100.0 * correct / len(x)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, choices=sorted(ARCHITECTURES))
    ap.add_argument("--name", default=None, help="the teacher's zoo name (default: the architecture's): its weights "
                    "file NAME_fmnist.pt and manifest key NAME@fmnist, e.g. resnet20-b for a second ResNet-20")
    ap.add_argument("--checkpoint", default=None, help="save the training state here after every epoch and resume "
                    "from it when it exists (same result as an uninterrupted run)")
    ap.add_argument("--stop-after-epoch", type=int, default=None, help="with --checkpoint: stop after this epoch "
                    "(to split a training across sessions; run the same command again to go on)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--wd", type=float, default=5e-4)
    ap.add_argument("--decay-all", action="store_true", help="weight decay on every parameter, depthwise kernels and "
                    "BN affine included (default: not on those, as usual for MobileNets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-images", type=int, default=None, help="train on the first N training images only "
                    "(for tests; the manifest records it)")
    ap.add_argument("--test-images", type=int, default=None, help="measure the final top-1 on the first N test "
                    "images only (for tests; the manifest records it)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=None, help="write the weights here instead of teacher/weights/ (implies "
                    "--no-manifest)")
    ap.add_argument("--no-manifest", action="store_true", help="write the weights but leave the manifest alone")
    ap.add_argument("--equalize", action="store_true",
                    help="after training, equalise channel ranges across layers on the first "
                         f"{EQUALIZE_IMAGES} training images (function-preserving; MobileNetV1 only)")
    ap.add_argument("--post-process-only", action="store_true",
                    help="do not train: apply the post-processing steps (dead BN channels; --equalize) to the "
                         "embedded weights, re-measure, rewrite the weights and the manifest")
    args = ap.parse_args(argv)
    if args.stop_after_epoch and not args.checkpoint:
        ap.error("--stop-after-epoch needs --checkpoint (where the training state waits)")
    if args.equalize and args.model != "mobilenetv1":
        ap.error(f"--equalize needs a plain conv chain: mobilenetv1, not {args.model} (skip connections)")
    if args.post_process_only:
        return post_process_embedded(args)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    name = args.name or args.model
    key = f"{name}@{EMBEDDED_DATASET}"
    net = ARCHITECTURES[args.model]()
    xtr, ytr = load_fmnist("train", args.data_root)
    if args.train_images:
        xtr, ytr = xtr[:args.train_images], ytr[:args.train_images]
    xte, yte = load_fmnist("test", args.data_root)
    if args.test_images:
        xte, yte = xte[:args.test_images], yte[:args.test_images]

    decay, no_decay = [], []
    for m in net.modules():  # no weight decay on BN affine, biases and depthwise kernels (usual for MobileNets)
        for n_, p in m.named_parameters(recurse=False):
            depthwise = isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
            (no_decay if (p.ndim <= 1 or depthwise) and not args.decay_all else decay).append(p)
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0}],
                          lr=args.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = len(xtr) // args.batch_size
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    t0, first_epoch, done_s = time.time(), 0, 0.0
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    if ckpt and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        if state["argv"] != _recipe(args):
            ap.error(f"{ckpt} is another recipe's checkpoint ({state['argv']}); delete it or pass another path")
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        first_epoch, done_s = state["epoch"], state["wall_s"]
        print(f"resumed from {ckpt} after epoch {first_epoch}", flush=True)
    for epoch in range(first_epoch, args.epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            loss = F.cross_entropy(net(augment(xtr[idx], gen)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item()
        print(f"epoch {epoch + 1}/{args.epochs} train loss {loss_sum / steps_per_epoch:.4f} "
              f"elapsed {done_s + time.time() - t0:.0f}s", flush=True)
        if ckpt:
            tmp = ckpt.with_suffix(ckpt.suffix + ".tmp")
            torch.save({"argv": _recipe(args), "net": net.state_dict(), "opt": opt.state_dict(),
                        "sched": sched.state_dict(), "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                        "epoch": epoch + 1, "wall_s": done_s + time.time() - t0}, tmp)
            tmp.replace(ckpt)
            if args.stop_after_epoch and epoch + 1 >= args.stop_after_epoch and epoch + 1 < args.epochs:
                print(f"stopped after epoch {epoch + 1}; the same command resumes from {ckpt}", flush=True)
                return
    wall = done_s + time.time() - t0
    dead = neutralize_dead_bn_channels(net)
    equalized = equalize(net, xtr) if args.equalize else None
    top1 = evaluate(net, xte, yte)
    print(f"final test top-1 {top1:.2f}% ({wall:.0f}s)", flush=True)

    fname = f"{name}_fmnist.pt"
    path = Path(args.out) if args.out else WEIGHTS_DIR / fname
    torch.save(net.state_dict(), path)
    if not (args.no_manifest or args.out):
        manifest = read_manifest()
        manifest[key] = {
            "file": fname, "sha256": sha256_file(path), "fp_top1": round(top1, 2),
            "trained_by": f"python -m zsqbench.frontends.train_teacher {_recipe(args)}",
            "selection": "final epoch (no selection on the test set)",
            "train_wall_s": round(wall), "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
            "torch": torch.__version__, "dead_bn_channels_neutralized": dead,
            "card": {k: v for k, v in default_card("fmnist").items()},  # how it was trained to see its input
        }
        if equalized:
            manifest[key]["cross_layer_equalized"] = equalized
        MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


def _recipe(args) -> str:
    """The command-line options that decide the weights (what the manifest and a checkpoint record)."""
    return (f"--model {args.model}" + (f" --name {args.name}" if args.name else "")
            + f" --epochs {args.epochs} --batch-size {args.batch_size} --lr {args.lr} --wd {args.wd} --seed {args.seed}"
            + (f" --train-images {args.train_images}" if args.train_images else "")
            + (f" --test-images {args.test_images}" if args.test_images else "")
            + (" --decay-all" if args.decay_all else "") + (" --equalize" if args.equalize else ""))


def equalize(net, xtr) -> dict:
    """:func:`equalize_cross_layer` on the first EQUALIZE_IMAGES training images; what the manifest records."""
    before, after = equalize_cross_layer(net, xtr[:EQUALIZE_IMAGES])
    print(f"cross-layer equalisation: channel peak spread {before:.1f}x -> {after:.1f}x", flush=True)
    return {"images": f"fmnist train[:{EQUALIZE_IMAGES}]", "peak_spread_before": round(before, 2),
            "peak_spread_after": round(after, 2)}


def post_process_embedded(args) -> None:
    """Apply the post-processing steps to already committed weights (trained before a step was part of this
    script) and record them, with the re-measured top-1, in the manifest."""
    from zsqbench.teacher.zoo import load_teacher
    spec = {s.key: s for s in builtin_models()}[f"{args.model}@{EMBEDDED_DATASET}"]
    net, _ = load_teacher(spec)
    xte, yte = load_fmnist("test", args.data_root)
    before = evaluate(net, xte, yte)
    dead = neutralize_dead_bn_channels(net)
    equalized = equalize(net, load_fmnist("train", args.data_root)[0]) if args.equalize else None
    top1 = evaluate(net, xte, yte)
    path = WEIGHTS_DIR / f"{spec.name}_fmnist.pt"
    torch.save(net.state_dict(), path)
    manifest = read_manifest()
    entry = manifest[spec.key]
    entry.update({"sha256": sha256_file(path), "fp_top1": round(top1, 2), "dead_bn_channels_neutralized": dead,
                  "post_processed_by": f"python -m zsqbench.frontends.train_teacher --model {args.model} "
                                       "--post-process-only" + (" --equalize" if args.equalize else ""),
                  "fp_top1_before_post_processing": round(before, 2)})
    if equalized:
        entry["cross_layer_equalized"] = equalized
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"{spec.key}: {dead} dead BN channels neutralized; test top-1 {before:.2f}% -> {top1:.2f}%; wrote {path}")


if __name__ == "__main__":
    main()
