"""Real evaluation data. Only the evaluation step (and the teacher-training script) imports this module:
methods never see real images.

Every loader returns ``(images, labels)`` as tensors already normalised like the teacher's training data,
except ImageNet, which is decoded lazily batch by batch (see :class:`ImageFolderVal`).
"""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zsqbench.errors import UserError
from zsqbench.teacher.datasets import DATASETS

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DATA_ROOT = "ZSQBENCH_DATA_ROOT"

HOW_TO_GET = {
    "fmnist": "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
              "*-idx?-ubyte.gz files in --data-root / $ZSQBENCH_DATA_ROOT",
    "cifar10": "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and "
               "pass --data-root pointing at cifar-10-batches-py (or its parent)",
    "cifar100": "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and "
                "pass --data-root pointing at cifar-100-python (or its parent)",
    "imagenet": "pass --data-root pointing at the ImageNet val/ folder laid out as one sub-folder per class "
                "(sorted wnids), or its parent",
}


def explicit_root(data_root: str | None) -> str | None:
    """The data root the user named: ``--data-root``, else ``$ZSQBENCH_DATA_ROOT``, else None."""
    return str(data_root) if data_root else (os.environ.get(ENV_DATA_ROOT) or None)


def _candidates(dataset: str, data_root: str | None) -> list[Path]:
    """Where to look. A named root means what it says: only it (and its usual sub-folders) is searched, never the
    system location, so a run cannot silently score on other data than the folder the user gave."""
    root = explicit_root(data_root)
    sub = {"fmnist": ["fashion-mnist", "fmnist", "FashionMNIST/raw"],
           "cifar10": ["cifar-10-batches-py"], "cifar100": ["cifar-100-python"], "imagenet": ["val"]}[dataset]
    if root:
        r = Path(root).expanduser()
        return [r, *(r / s for s in sub)]
    return [FMNIST_SYSTEM_DIR] if dataset == "fmnist" else []


def _missing(dataset: str, tried: list[Path], wanted: str, data_root: str | None = None) -> UserError:
    root = explicit_root(data_root)
    named = ("--data-root" if data_root else f"${ENV_DATA_ROOT}") + f" {root}" if root else None
    where = ", ".join(str(p) for p in tried) or "(no --data-root given)"
    lead = f"{dataset} data not found under {named}" if named else f"{dataset} data not found"
    return UserError(f"{lead}: no {wanted} in {where}; {HOW_TO_GET[dataset]}")


def normalize(x: torch.Tensor, dataset: str, card: dict | None = None) -> torch.Tensor:
    """Normalise [0, 1] pixels with the teacher card's mean/std (default: the dataset's standard ones)."""
    info = DATASETS[dataset]
    mean = torch.tensor(card["mean"] if card else info.mean).view(1, -1, 1, 1)
    std = torch.tensor(card["std"] if card else info.std).view(1, -1, 1, 1)
    return (x - mean) / std


def fit_to_network(x: torch.Tensor, size: tuple[int, int], how: str | None) -> torch.Tensor:
    """Small images (Fashion-MNIST 28x28) to the network's size: zero-pad in pixel space (the embedded teachers'
    way) or resize bilinearly."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if how == "resize":
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    dh, dw = size[0] - h, size[1] - w
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


# --- Fashion-MNIST ------------------------------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # truncated or corrupt .gz (BadGzipFile is an OSError)
        raise UserError(f"{path} is truncated or corrupt: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[3] == 0:
        raise UserError(f"{path} is not an idx file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path} is truncated: its idx header is incomplete")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def load_fmnist(split: str = "test", data_root: str | None = None, card: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (N,1,32,32) normalised float tensors (28x28 zero-padded by 2 pixels, or as the teacher
    ``card`` says) and labels."""
    prefix = "t10k" if split == "test" else "train"
    tried = _candidates("fmnist", data_root)
    for d in tried:
        img = next((d / f"{prefix}-images-idx3-ubyte{s}" for s in (".gz", "")
                    if (d / f"{prefix}-images-idx3-ubyte{s}").is_file()), None)
        lab = next((d / f"{prefix}-labels-idx1-ubyte{s}" for s in (".gz", "")
                    if (d / f"{prefix}-labels-idx1-ubyte{s}").is_file()), None)
        if img and lab:
            x = torch.from_numpy(_read_idx(img).copy()).float().div_(255).unsqueeze(1)
            y = torch.from_numpy(_read_idx(lab).astype(np.int64))
            if len(x) != len(y):
                raise UserError(f"{img} and {lab} disagree on the number of samples")
            x = fit_to_network(x, DATASETS["fmnist"].image_shape[1:], (card or {}).get("fit"))
            return normalize(x, "fmnist", card), y
    raise _missing("fmnist", tried, f"{prefix}-images-idx3-ubyte.gz + {prefix}-labels-idx1-ubyte.gz", data_root)


# --- CIFAR (python pickle batches) -------------------------------------------------------------------------

def load_cifar(dataset: str, split: str = "test", data_root: str | None = None, card: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    tried = _candidates(dataset, data_root)
    names = {"cifar10": {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]},
             "cifar100": {"test": ["test"], "train": ["train"]}}[dataset][split]
    label_key = b"labels" if dataset == "cifar10" else b"fine_labels"
    for d in tried:
        if all((d / n).is_file() for n in names):
            xs, ys = [], []
            for n in names:
                try:
                    with open(d / n, "rb") as f:
                        batch = pickle.load(f, encoding="bytes")  # the official CIFAR format is a pickle
                    xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                    ys.append(np.asarray(batch[label_key], dtype=np.int64))
                except Exception as e:
                    raise UserError(f"{d / n} is not a CIFAR python batch ({type(e).__name__})") from None
            x = torch.from_numpy(np.concatenate(xs)).float().div_(255)
            return normalize(x, dataset, card), torch.from_numpy(np.concatenate(ys))
    raise _missing(dataset, tried, " + ".join(names), data_root)


# --- ImageNet val (class folders) --------------------------------------------------------------------------

IMG_EXT = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


class ImageFolderVal:
    """ImageNet val as class folders (sorted names = class indices); resize 256 (shorter side), centre crop
    224, normalise. Decoded lazily in batches so 50k images never sit in memory at once."""

    def __init__(self, root: Path, card: dict | None = None):
        self.card = card
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [(f, i) for i, c in enumerate(classes)
                        for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMG_EXT]
        if not self.samples:
            raise UserError(f"no images under {root}: {HOW_TO_GET['imagenet']}")
        self.classes = classes

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def load(path: Path) -> torch.Tensor:
        try:
            from PIL import Image
        except ImportError:
            raise UserError("reading ImageNet needs Pillow: pip install 'zsqbench[vision]'") from None
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = 256 / min(w, h)
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - 224) // 2, (h - 224) // 2
                im = im.crop((left, top, left + 224, top + 224))
                arr = np.asarray(im, dtype=np.uint8).copy()
        except (OSError, ValueError) as e:
            raise UserError(f"cannot decode image {path}: {e} — remove or replace the file") from None
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255)

    def batches(self, batch_size: int, limit: int | None = None):
        samples = self.samples[:limit] if limit else self.samples
        for i in range(0, len(samples), batch_size):
            chunk = samples[i:i + batch_size]
            x = torch.stack([self.load(p) for p, _ in chunk])
            yield normalize(x, "imagenet", self.card), torch.tensor([c for _, c in chunk])


def load_imagenet_val(data_root: str | None = None, card: dict | None = None) -> ImageFolderVal:
    tried = _candidates("imagenet", data_root)
    first_error = None
    for d in tried:
        if d.is_dir() and any(p.is_dir() for p in d.iterdir()):
            try:
                return ImageFolderVal(d, card)
            except UserError as e:  # e.g. the parent of val/: its sub-folders hold class folders, not images
                first_error = first_error or e
    raise first_error or _missing("imagenet", tried, "class folders of images", data_root)


def load_test_set(dataset: str, data_root: str | None = None, card: dict | None = None):
    """The real test split: a (images, labels) pair, or an :class:`ImageFolderVal` for ImageNet."""
    if dataset == "fmnist":
        return load_fmnist("test", data_root, card)
    if dataset in ("cifar10", "cifar100"):
        return load_cifar(dataset, "test", data_root, card)
    if dataset == "imagenet":
        return load_imagenet_val(data_root, card)
    raise UserError(f"no evaluation data loader for dataset {dataset!r}")


DEV_SIZE = 10_000
EVAL_SPLITS = ("test", "dev")


def load_dev_set(dataset: str, data_root: str | None = None, card: dict | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The last 10 000 images of the *train* split: where to choose settings, so that the test split is only
    ever used to report. The embedded teachers saw these images in training, so top-1 on them runs higher
    than on test; compare settings with it, never report it."""
    if dataset == "fmnist":
        x, y = load_fmnist("train", data_root, card)
    elif dataset in ("cifar10", "cifar100"):
        x, y = load_cifar(dataset, "train", data_root, card)
    else:
        raise UserError(f"eval.split=dev needs the train split of {dataset}, which zsqbench does not read; "
                        "use eval.split=test")
    return x[-DEV_SIZE:], y[-DEV_SIZE:]


def load_eval_set(dataset: str, split: str = "test", data_root: str | None = None, card: dict | None = None):
    """The split a run is scored on: ``test`` (what records report) or ``dev`` (:func:`load_dev_set`), preprocessed
    as the teacher ``card`` says (default: the dataset's standard preprocessing)."""
    if split == "test":
        return load_test_set(dataset, data_root, card)
    if split == "dev":
        return load_dev_set(dataset, data_root, card)
    raise UserError(f"eval.split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
