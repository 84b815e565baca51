"""Teacher architectures (pytorchcv 0.0.67) and where their weights come from.

A :class:`ModelSpec` says how to build a network for one dataset (a registered dataset's name: built-in or a
plugin's, see :meth:`zsqbench.spine.registry.Registry.add_dataset`), where its trained weights live (the embedded
manifest, a pytorchcv download, or a plugin's own ``weights_file``: a state_dict saved with ``torch.save``, read with
``weights_only=True``, its teacher card beside it as ``<file>.card.json``), and which modules carry the features that
distillers hook (block outputs for channel attention, the pooled feature).
Models are registered by the built-in plugin (:mod:`zsqbench.builtin`) through the same registry as
third-party ones.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from zsqbench.spine.errors import UserError

WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


@dataclass
class ModelSpec:
    name: str                       # architecture name, e.g. "resnet20"
    dataset: str                    # a registered dataset's name (Registry.add_dataset), built-in or a plugin's
    build: Callable[[], nn.Module]  # untrained network
    block_types: tuple[str, ...]    # class names whose outputs (or named submodule's) are "blocks" for feature KD
    block_submodule: str | None = None  # e.g. "body" for ResUnit: hook that child, not the unit itself
    pool_module: str = "features.final_pool"  # pooled feature (IntraQ's MDC, diagnostics)
    embedded_weights: str | None = None       # key in weights/manifest.json
    pytorchcv_name: str | None = None         # pretrained download name for paper teachers
    weights_file: str | Path | None = None    # a plugin's own trained state_dict (torch.save), e.g. package data
    notes: str = ""
    provider: str = field(default="zsqbench", compare=False)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.dataset}"

    def block_modules(self, net: nn.Module) -> list[tuple[str, nn.Module]]:
        """Modules whose outputs are the model's block features, in forward order."""
        found = []
        for name, mod in net.named_modules():
            if type(mod).__name__ in self.block_types:
                if self.block_submodule:
                    mod = mod.get_submodule(self.block_submodule)
                    name = f"{name}.{self.block_submodule}"
                found.append((name, mod))
        return found


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest() -> dict:
    if not MANIFEST.exists():
        return {}
    return json.loads(MANIFEST.read_text())


def _load_state_dict(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable, truncated, pickled code, ...
        first = (str(e).splitlines() or ["(no message)"])[0][:160]  # e.g. EOFError() for an empty file
        raise UserError(f"cannot read weights file {path}: {type(e).__name__}: {first}"
                        " — pass a state_dict saved with torch.save") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"weights file {path} holds a {type(obj).__name__}, not a state_dict")
    return obj


def load_teacher(spec: ModelSpec, weights: str | None = None, cache_dir: str | None = None
                 ) -> tuple[nn.Module, dict]:
    """Build ``spec`` and load trained weights. Returns (model in eval mode, provenance dict)."""
    net = spec.build()
    info: dict = {}
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(f"weights file not found: {path}")
        state = _load_state_dict(path)
        info = {"source": "user", "path": str(path), "sha256": sha256_file(path)}
    elif spec.embedded_weights:
        entry = read_manifest().get(spec.embedded_weights)
        if entry is None:
            raise UserError(f"no embedded weights for {spec.key} in {MANIFEST} — train them with "
                            f"`python -m zsqbench.frontends.train_teacher --model {spec.name}` or pass --weights PATH")
        path = WEIGHTS_DIR / entry["file"]
        if not path.is_file():
            raise UserError(f"embedded weights file missing: {path} — reinstall zsqbench or pass --weights PATH")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise UserError(f"sha256 mismatch for {path}: manifest says {entry['sha256'][:12]}…, file is "
                            f"{digest[:12]}… — the file is corrupt or was replaced; restore it from git")
        state = _load_state_dict(path)
        info = {"source": "embedded", "path": str(path), "sha256": digest,
                "manifest_fp_top1": entry.get("fp_top1")}
    elif spec.weights_file:
        path = Path(spec.weights_file)
        if not path.is_file():
            raise UserError(f"weights file of {spec.key} ({spec.provider}) not found: {path} — reinstall the plugin "
                            "or pass --weights PATH")
        state = _load_state_dict(path)
        info = {"source": "plugin", "path": str(path), "sha256": sha256_file(path)}
    elif spec.pytorchcv_name:
        net, info = _pytorchcv_pretrained(spec, cache_dir)
        state = None
    else:
        raise UserError(f"{spec.key} has no weights: pass --weights PATH")
    if state is not None:
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
            raise UserError(f"weights do not fit {spec.key}: {detail[:240]}") from None
    check_finite_weights(net, info.get("path") or spec.key)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, info


def check_finite_weights(net: nn.Module, where) -> None:
    """A teacher whose weights or BN statistics hold NaN/Inf computes nothing: refused before any work."""
    for name, t in [*net.named_parameters(), *net.named_buffers()]:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise UserError(f"teacher weights {where} hold {bad} non-finite value(s) (NaN/Inf) in {name}: the "
                            "teacher is broken; retrain it or pass other --weights")


def _pytorchcv_pretrained(spec: ModelSpec, cache_dir: str | None) -> tuple[nn.Module, dict]:
    from pytorchcv.model_provider import get_model

    root = Path(cache_dir or Path("~/.torch/models")).expanduser()
    try:
        net = get_model(spec.pytorchcv_name, pretrained=True, root=str(root))
    except Exception as e:
        raise UserError(f"could not get pretrained {spec.pytorchcv_name} from pytorchcv into {root} "
                        f"({type(e).__name__}) — go online once, or pass --weights PATH to a state_dict") from None
    files = sorted(root.glob(f"{spec.pytorchcv_name}-*.pth"))
    info = {"source": "pytorchcv", "name": spec.pytorchcv_name,
            "path": str(files[-1]) if files else None,
            "sha256": sha256_file(files[-1]) if files else None}
    return net, info


# --- architectures ----------------------------------------------------------------------------------------

def resnet20(num_classes: int, in_channels: int) -> nn.Module:
    from pytorchcv.models.resnet_cifar import CIFARResNet, get_resnet_cifar
    if num_classes in (10, 100):
        return get_resnet_cifar(num_classes=num_classes, blocks=20, bottleneck=False, in_channels=in_channels)
    # get_resnet_cifar asserts 10 or 100 classes; the same network for any other count (a user's teacher)
    return CIFARResNet(channels=[[16] * 3, [32] * 3, [64] * 3], init_block_channels=16, bottleneck=False,
                       in_channels=in_channels, num_classes=num_classes)


# MobileNetV1 for 32x32 inputs: pytorchcv's depthwise-separable stages unchanged, a stride-1 stem (the usual CIFAR
# adaptation: 32 -> 32 -> 16 -> 8 -> 4 -> 2) and an adaptive final pool in place of the 7x7 ImageNet pool, at
# width 0.75. Measured CPU training step, batch 128, 2 cores, relative to ResNet-20: width 0.5 0.73x, 0.75 1.25x,
# 1.0 1.97x; full width with the ImageNet stride-2 stem 0.96x. Teachers tried (see docs/findings.md): width 0.5
# reached 90.86 % and the stride-2 stem learned far slower, both short of the 92 % target.
MOBILENETV1_32_WIDTH = 0.75


def mobilenetv1_32(num_classes: int, in_channels: int, width: float = MOBILENETV1_32_WIDTH) -> nn.Module:
    from pytorchcv.models.mobilenet import get_mobilenet
    net = get_mobilenet(width_scale=width, in_channels=in_channels, num_classes=num_classes, in_size=(32, 32))
    net.features.init_block.conv.stride = (1, 1)
    net.features.final_pool = nn.AdaptiveAvgPool2d(1)
    return net


MOBILENETV2_32_WIDTH = 0.5  # 51 MFLOP per 32x32 image, MobileNetV1-0.75's cost (52); width 1.0 would be 177


def mobilenetv2_32(num_classes: int, in_channels: int, width: float = MOBILENETV2_32_WIDTH) -> nn.Module:
    """pytorchcv's MobileNetV2 (inverted residuals, ReLU6, linear bottlenecks) for 32x32 inputs, the usual CIFAR
    adaptation: stride-1 stem and stride-1 second stage (32 -> 32 -> 32 -> 16 -> 8 -> 4), adaptive final pool."""
    from pytorchcv.models.mobilenetv2 import get_mobilenetv2
    net = get_mobilenetv2(width_scale=width, in_channels=in_channels, num_classes=num_classes, in_size=(32, 32))
    net.features.init_block.conv.stride = (1, 1)
    net.features.stage2.unit1.conv2.conv.stride = (1, 1)
    net.features.final_pool = nn.AdaptiveAvgPool2d(1)
    return net


def _pcv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from pytorchcv.model_provider import get_model
        return get_model(name, pretrained=False)
    return build


RESNET_BLOCKS = dict(block_types=("ResUnit",), block_submodule="body")
MBV1_BLOCKS = dict(block_types=("DwsConvBlock",), block_submodule="pw_conv.bn")
MBV2_BLOCKS = dict(block_types=("LinearBottleneck",), block_submodule="conv3")


def builtin_models() -> list[ModelSpec]:
    return [
        ModelSpec("resnet20", "fmnist", lambda: resnet20(10, 1), embedded_weights="resnet20@fmnist",
                  notes="pytorchcv CIFAR ResNet-20, in_channels=1; embedded weights", **RESNET_BLOCKS),
        ModelSpec("resnet20-b", "fmnist", lambda: resnet20(10, 1), embedded_weights="resnet20-b@fmnist",
                  notes="a second Fashion-MNIST ResNet-20 (another seed, batch, lr and weight decay: the manifest's "
                        "recipe), held out from choosing settings: the transfer teacher (issue #25 part 5)",
                  **RESNET_BLOCKS),
        ModelSpec("mobilenetv1", "fmnist", lambda: mobilenetv1_32(10, 1), embedded_weights="mobilenetv1@fmnist",
                  notes=f"pytorchcv MobileNetV1 width {MOBILENETV1_32_WIDTH}, stride-1 stem, adaptive pool, 1 channel; embedded weights",
                  **MBV1_BLOCKS),
        ModelSpec("mobilenetv2", "fmnist", lambda: mobilenetv2_32(10, 1), embedded_weights="mobilenetv2@fmnist",
                  notes=f"pytorchcv MobileNetV2 width {MOBILENETV2_32_WIDTH}, ReLU6, stride-1 stem and second stage, "
                        "1 channel; trained the usual way, not equalised (issue #25 part 3); embedded weights",
                  **MBV2_BLOCKS),
        ModelSpec("mobilenetv2-b", "fmnist", lambda: mobilenetv2_32(10, 1), embedded_weights="mobilenetv2-b@fmnist",
                  notes="a second Fashion-MNIST MobileNetV2 (another seed, batch, lr, weight decay and epoch count: the "
                        "manifest's recipe), held out from choosing settings: the transfer teacher (issue #25 part 5)",
                  **MBV2_BLOCKS),
        ModelSpec("resnet20", "cifar10", _pcv("resnet20_cifar10"), pytorchcv_name="resnet20_cifar10",
                  notes="pytorchcv resnet20_cifar10 (paper teacher)", **RESNET_BLOCKS),
        ModelSpec("resnet20", "cifar100", _pcv("resnet20_cifar100"), pytorchcv_name="resnet20_cifar100",
                  notes="pytorchcv resnet20_cifar100 (paper teacher)", **RESNET_BLOCKS),
        ModelSpec("resnet18", "imagenet", _pcv("resnet18"), pytorchcv_name="resnet18",
                  block_types=("ResUnit",), block_submodule="body",
                  notes="pytorchcv resnet18 (paper teacher)"),
        ModelSpec("mobilenetv1", "imagenet", _pcv("mobilenet_w1"), pytorchcv_name="mobilenet_w1",
                  notes="pytorchcv mobilenet_w1 (paper teacher)", **MBV1_BLOCKS),
        ModelSpec("mobilenetv2", "imagenet", _pcv("mobilenetv2_w1"), pytorchcv_name="mobilenetv2_w1",
                  notes="pytorchcv mobilenetv2_w1 (paper teacher)", **MBV2_BLOCKS),
    ]


# zoo architectures a user's own teacher may have on any registered dataset of their input size (--weights)
USER_ARCHITECTURES = {"resnet20": (resnet20, RESNET_BLOCKS), "mobilenetv1": (mobilenetv1_32, MBV1_BLOCKS)}


def user_model(name: str, info) -> ModelSpec:
    """``name`` (a zoo architecture: resnet20, mobilenetv1) built for the dataset ``info`` — its channels and
    classes — with no weights of its own: a user's checkpoint (``--weights``) on a dataset no registered teacher is
    trained on, e.g. a plugin's. One line when the architecture or the image size does not fit."""
    if name not in USER_ARCHITECTURES:
        raise UserError(f"no registered teacher {name}@{info.name}, and {name!r} is not a zoo architecture a "
                        f"checkpoint can be loaded into (those are: {', '.join(USER_ARCHITECTURES)})")
    channels, h, w = info.image_shape
    if (h, w) != (32, 32):
        raise UserError(f"zoo architecture {name} takes 32x32 images, but {info.name} images are {h}x{w} (a "
                        "dataset plugin brings smaller images to 32x32 with stored_size and its default_fit)")
    build, blocks = USER_ARCHITECTURES[name]
    return ModelSpec(name, info.name, lambda: build(info.num_classes, channels),
                     notes=f"zsqbench's {name} for {info.name} ({channels} channels, {info.num_classes} classes); "
                           "the user's weights", provider="your --weights", **blocks)

