"""Real evaluation data. Only the evaluation step (and the teacher-training script) imports this module:
methods never see real images.

Datasets are plugins. A plugin registers one with ``registry.add_dataset(info, loader)``
(:meth:`zsqbench.spine.registry.Registry.add_dataset`): ``info`` is a :class:`~zsqbench.teacher.datasets.DatasetInfo`,
``loader`` follows :class:`DatasetLoader`. :func:`load_eval_set` (what a run scores on), :func:`load_test_set`,
:func:`load_dev_set` and :func:`load_split` find the dataset in the registry by name, call its loader and finish
what it returns: pixels are brought to the network's size (a teacher card's ``fit``, for datasets with a
``stored_size``) and normalised with the teacher card's mean/std (default: the dataset's own), so that every
dataset honours teacher cards the same way. The built-in Fashion-MNIST, CIFAR-10/100 and ImageNet loaders at the
bottom of this module are registered exactly so, by :mod:`zsqbench.builtin`.

A loader in about twenty lines (Fashion-MNIST's shoes only, at 28x28)::

    import torch
    from zsqbench.api import DatasetInfo, find_files, hookimpl, read_idx

    SHOES = [5, 7, 9]  # sandal, sneaker, ankle boot

    class Shoes:
        splits = ("test", "train")
        how_to_get = "apt-get install dataset-fashion-mnist, or put its four idx .gz files in --data-root"

        def load(self, split, data_root, card):
            prefix = "t10k" if split == "test" else "train"
            img, lab = find_files(data_root, [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"],
                                  system=["/usr/share/datasets/fashion-mnist"])
            x, y = torch.from_numpy(read_idx(img).copy()), torch.from_numpy(read_idx(lab).astype("int64"))
            keep = torch.isin(y, torch.tensor(SHOES))
            return x[keep].unsqueeze(1), torch.searchsorted(torch.tensor(SHOES), y[keep])  # uint8 pixels, 0..2

    @hookimpl
    def zsqbench_register(registry):
        registry.add_dataset(DatasetInfo("fmnist-shoes", 3, (1, 28, 28), (0.25,), (0.35,), "FMNIST shoes"), Shoes)

A model on it is ``ModelSpec("mynet", "fmnist-shoes", ...)`` (key ``mynet@fmnist-shoes``).
"""
from __future__ import annotations

import abc
import gzip
import os
import pickle
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zsqbench.spine.errors import UserError

FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_DATA_ROOT = "ZSQBENCH_DATA_ROOT"
DEV_SIZE = 10_000
EVAL_SPLITS = ("test", "dev")
SPLITS = ("test", "train")  # what a loader reads; "dev" is the tail of "train"


# --- the loader interface -----------------------------------------------------------------------------------

class BatchSource(Protocol):
    """A dataset too large to hold in memory (ImageNet val: :class:`ImageFolderVal`), decoded batch by batch."""

    def __len__(self) -> int:
        """The number of images."""

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images, labels)`` batches of the first ``limit`` images (all when None), in a fixed order, images
        already at the network's size and normalised with the ``card`` the loader was given (:func:`normalize`)."""


class DatasetLoader(abc.ABC):
    """How the evaluation step reads a registered dataset's real images. Subclassing is optional: any object (or
    class built with no arguments) with these three attributes can be passed to ``registry.add_dataset``.

    ``splits``
        Which of ``"test"`` and ``"train"`` :meth:`load` can read. Runs report on ``test``; ``eval.split=dev`` (for
        choosing settings) scores on the last :data:`DEV_SIZE` images of ``train``, so leave ``train`` out and dev
        runs are refused with one line.
    ``how_to_get``
        One line, the end of the "data not found" error: how a user gets the data and where to put it.
    ``load(split, data_root, card)``
        ``split`` is one of :attr:`splits`. ``data_root`` is the root the user named (``--data-root``, else
        ``$ZSQBENCH_DATA_ROOT``; :func:`explicit_root`), or None. Find files with :func:`find_files` or
        :func:`candidate_dirs`: a named root is searched alone (with its usual sub-folders), never a system copy,
        and a file that is not there raises :class:`DataNotFound`, which the core turns into the one-line
        "<dataset> data not found under --data-root ...; <how_to_get>" error. ``card`` is the teacher card the run
        feeds its teacher (``{"mean": [...], "std": [...], "fit": "pad" | "resize" | None}``, always complete).

        Return either ``(images, labels)``: images an ``(N, C, H, W)`` tensor of *raw pixels* — uint8 0..255 or
        float in [0, 1], at the stored size — and labels an ``(N,)`` integer tensor in ``0..num_classes-1``; the
        core brings the images to ``DatasetInfo.image_shape`` (``card["fit"]``: zero-pad or resize; only datasets
        with a ``stored_size`` may differ in size) and normalises them with the card. Or, for data too large for
        memory, a :class:`BatchSource` whose batches are already sized and normalised with ``card``. Raise
        :class:`~zsqbench.spine.errors.UserError` (one line) for unreadable files.
    """
    splits: tuple[str, ...] = ("test",)
    how_to_get: str = ""

    @abc.abstractmethod
    def load(self, split: str, data_root: str | None, card: dict):
        """See the class docstring: ``(images, labels)`` or a :class:`BatchSource`."""


class DataNotFound(UserError):
    """Raised by a loader when its files are not where it looked; the core adds the dataset, the data root and the
    loader's ``how_to_get`` to the message."""

    def __init__(self, tried: Sequence[Path], wanted: str):
        self.tried, self.wanted = list(tried), wanted
        super().__init__(f"no {wanted} in {', '.join(map(str, self.tried)) or '(no --data-root given)'}")


# --- helpers for loaders ------------------------------------------------------------------------------------

def explicit_root(data_root: str | None) -> str | None:
    """The data root the user named: ``--data-root``, else ``$ZSQBENCH_DATA_ROOT``, else None."""
    return str(data_root) if data_root else (os.environ.get(ENV_DATA_ROOT) or None)


def candidate_dirs(data_root: str | None, subdirs: Sequence[str] = (), system: Sequence[str | Path] = ()
                   ) -> list[Path]:
    """Where to look, in order. A named root means what it says: only it and its ``subdirs`` are searched, never the
    ``system`` folders, so a run cannot silently score on other data than the folder the user gave; without a named
    root, the ``system`` folders (e.g. where a distribution package installs the data)."""
    root = explicit_root(data_root)
    if root:
        r = Path(root).expanduser()
        return [r, *(r / s for s in subdirs)]
    return [Path(p) for p in system]


def find_files(data_root: str | None, names: Sequence[str], subdirs: Sequence[str] = (),
               system: Sequence[str | Path] = ()) -> list[Path]:
    """The paths of ``names`` in the first of :func:`candidate_dirs` that holds all of them; :class:`DataNotFound`
    when none does."""
    tried = candidate_dirs(data_root, subdirs, system)
    for d in tried:
        if all((d / n).is_file() for n in names):
            return [d / n for n in names]
    raise DataNotFound(tried, " + ".join(names))


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST / Fashion-MNIST format, optionally .gz) as a uint8 array; one line for a bad file."""
    opener = gzip.open if Path(path).suffix == ".gz" else open
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


_read_idx = read_idx


def normalize(x: torch.Tensor, dataset: str, card: dict | None = None) -> torch.Tensor:
    """Normalise [0, 1] pixels with the teacher card's mean/std (default: the dataset's standard ones)."""
    if card is None:
        from zsqbench.spine.registry import dataset_info
        info = dataset_info(dataset)
        mean, std = info.mean, info.std
    else:
        mean, std = card["mean"], card["std"]
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


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


# --- the core: any registered dataset -----------------------------------------------------------------------

def _missing(dataset: str, e: DataNotFound, data_root: str | None, how_to_get: str) -> UserError:
    root = explicit_root(data_root)
    named = ("--data-root" if data_root else f"${ENV_DATA_ROOT}") + f" {root}" if root else None
    where = ", ".join(str(p) for p in e.tried) or "(no --data-root given)"
    lead = f"{dataset} data not found under {named}" if named else f"{dataset} data not found"
    return UserError(f"{lead}: no {e.wanted} in {where}; {how_to_get}")


def _finish(dataset: str, info, provider: str, out, card: dict):
    """A loader's ``(pixels, labels)`` checked, sized and normalised; a :class:`BatchSource` as it is."""
    if hasattr(out, "batches"):
        return out
    def bad(what: str) -> UserError:
        return UserError(f"the {dataset} loader ({provider}) returned {what}; it must return (images, labels): "
                         f"(N, {info.image_shape[0]}, H, W) pixels, uint8 or float in [0, 1], and (N,) labels in "
                         f"0..{info.num_classes - 1}")
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        raise bad(type(out).__name__)
    x, y = out
    if x.ndim != 4 or x.shape[1] != info.image_shape[0] or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise bad(f"images of shape {tuple(x.shape)} and labels of shape {tuple(y.shape)}")
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    elif not x.is_floating_point():
        raise bad(f"{x.dtype} images")
    if y.is_floating_point() or y.dtype == torch.bool:
        raise bad(f"{y.dtype} labels")
    y = y.long()
    if int(y.min()) < 0 or int(y.max()) >= info.num_classes:
        raise bad(f"labels in {int(y.min())}..{int(y.max())}")
    if tuple(x.shape[-2:]) != tuple(info.image_shape[1:]) and info.stored_size is None:
        raise bad(f"{tuple(x.shape[-2:])} images for a {tuple(info.image_shape[1:])} network (declare "
                  "DatasetInfo.stored_size to have them padded or resized)")
    x = fit_to_network(x, info.image_shape[1:], card.get("fit"))
    return normalize(x, dataset, card), y


def load_split(dataset: str, split: str = "test", data_root: str | None = None, card: dict | None = None):
    """The ``test`` or ``train`` split of the registered ``dataset``, read by its loader and preprocessed as the
    teacher ``card`` says (default: the dataset's standard preprocessing): ``(images, labels)`` or a
    :class:`BatchSource`. One line for an unknown dataset, a split its loader does not read, or missing data."""
    from zsqbench.spine.registry import get_registry
    from zsqbench.teacher.card import default_card
    registry = get_registry()
    ds = registry.dataset(dataset)
    provider = registry.datasets[dataset].provider if dataset in registry.datasets else "?"
    if split not in ds.loader.splits:
        raise UserError(f"the {dataset} loader ({provider}) reads only the {', '.join(ds.loader.splits)} split(s), "
                        f"not {split}")
    card = card or default_card(dataset)
    try:
        out = ds.loader.load(split, data_root, card)
    except DataNotFound as e:
        raise _missing(dataset, e, data_root, ds.loader.how_to_get) from None
    return _finish(dataset, ds.info, provider, out, card)


def load_test_set(dataset: str, data_root: str | None = None, card: dict | None = None):
    """The real test split: a (images, labels) pair, or a :class:`BatchSource` (ImageNet)."""
    return load_split(dataset, "test", data_root, card)


def load_dev_set(dataset: str, data_root: str | None = None, card: dict | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The last 10 000 images of the *train* split: where to choose settings, so that the test split is only
    ever used to report. The embedded teachers saw these images in training, so top-1 on them runs higher
    than on test; compare settings with it, never report it."""
    from zsqbench.spine.registry import get_registry
    if "train" not in get_registry().dataset(dataset).loader.splits:
        raise UserError(f"eval.split=dev needs the train split of {dataset}, which zsqbench does not read; "
                        "use eval.split=test")
    data = load_split(dataset, "train", data_root, card)
    if hasattr(data, "batches"):
        raise UserError(f"eval.split=dev needs the train split of {dataset} in memory, but its loader returns "
                        "batches; use eval.split=test")
    x, y = data
    return x[-DEV_SIZE:], y[-DEV_SIZE:]


def load_eval_set(dataset: str, split: str = "test", data_root: str | None = None, card: dict | None = None):
    """The split a run is scored on: ``test`` (what records report) or ``dev`` (:func:`load_dev_set`), preprocessed
    as the teacher ``card`` says (default: the dataset's standard preprocessing)."""
    if split == "test":
        return load_test_set(dataset, data_root, card)
    if split == "dev":
        return load_dev_set(dataset, data_root, card)
    raise UserError(f"eval.split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")


# --- the built-in datasets' loaders (registered by zsqbench.builtin) ----------------------------------------

class FashionMNISTLoader(DatasetLoader):
    """Fashion-MNIST idx files (.gz or not): 1x28x28 uint8 pixels, padded to 32x32 by the core (DatasetInfo
    ``stored_size``). Without a named root, the Debian package's copy in :data:`FMNIST_SYSTEM_DIR`."""
    splits = ("test", "train")
    how_to_get = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
                  "*-idx?-ubyte.gz files in --data-root / $ZSQBENCH_DATA_ROOT")

    def load(self, split, data_root, card):
        prefix = "t10k" if split == "test" else "train"
        tried = candidate_dirs(data_root, ["fashion-mnist", "fmnist", "FashionMNIST/raw"], [FMNIST_SYSTEM_DIR])
        for d in tried:
            img = next((d / f"{prefix}-images-idx3-ubyte{s}" for s in (".gz", "")
                        if (d / f"{prefix}-images-idx3-ubyte{s}").is_file()), None)
            lab = next((d / f"{prefix}-labels-idx1-ubyte{s}" for s in (".gz", "")
                        if (d / f"{prefix}-labels-idx1-ubyte{s}").is_file()), None)
            if img and lab:
                x = torch.from_numpy(read_idx(img).copy()).unsqueeze(1)
                y = torch.from_numpy(read_idx(lab).astype(np.int64))
                if len(x) != len(y):
                    raise UserError(f"{img} and {lab} disagree on the number of samples")
                return x, y
        raise DataNotFound(tried, f"{prefix}-images-idx3-ubyte.gz + {prefix}-labels-idx1-ubyte.gz")


class CIFARLoader(DatasetLoader):
    """CIFAR-10 / CIFAR-100 python pickle batches."""
    splits = ("test", "train")

    def __init__(self, classes: int):
        self.classes = classes
        if classes == 10:
            tarball, self.folder, self.label_key = "cifar-10-python.tar.gz", "cifar-10-batches-py", b"labels"
            self.names = {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]}
        else:
            tarball, self.folder, self.label_key = "cifar-100-python.tar.gz", "cifar-100-python", b"fine_labels"
            self.names = {"test": ["test"], "train": ["train"]}
        self.how_to_get = (f"download {tarball} from https://www.cs.toronto.edu/~kriz/cifar.html, unpack it and "
                           f"pass --data-root pointing at {self.folder} (or its parent)")

    def load(self, split, data_root, card):
        paths = find_files(data_root, self.names[split], [self.folder])
        xs, ys = [], []
        for path in paths:
            try:
                with open(path, "rb") as f:
                    batch = pickle.load(f, encoding="bytes")  # the official CIFAR format is a pickle
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[self.label_key], dtype=np.int64))
            except Exception as e:
                raise UserError(f"{path} is not a CIFAR python batch ({type(e).__name__})") from None
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


IMG_EXT = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


class ImageNetValLoader(DatasetLoader):
    """ImageNet val as class folders, decoded lazily (:class:`ImageFolderVal`); no train split."""
    splits = ("test",)
    how_to_get = ("pass --data-root pointing at the ImageNet val/ folder laid out as one sub-folder per class "
                  "(sorted wnids), or its parent")

    def load(self, split, data_root, card):
        tried = candidate_dirs(data_root, ["val"])
        first_error = None
        for d in tried:
            if d.is_dir() and any(p.is_dir() for p in d.iterdir()):
                try:
                    return ImageFolderVal(d, card)
                except UserError as e:  # e.g. the parent of val/: its sub-folders hold class folders, not images
                    first_error = first_error or e
        raise first_error or DataNotFound(tried, "class folders of images")


class ImageFolderVal:
    """ImageNet val as class folders (sorted names = class indices); resize 256 (shorter side), centre crop
    224, normalise. Decoded lazily in batches so 50k images never sit in memory at once (a :class:`BatchSource`)."""

    def __init__(self, root: Path, card: dict | None = None):
        self.card = card
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        self.samples = [(f, i) for i, c in enumerate(classes)
                        for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMG_EXT]
        if not self.samples:
            raise UserError(f"no images under {root}: {ImageNetValLoader.how_to_get}")
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


# The built-in loaders by their old names (the teacher-training script and tests use them).

def load_fmnist(split: str = "test", data_root: str | None = None, card: dict | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as (N,1,32,32) normalised float tensors (28x28 zero-padded by 2 pixels, or as the teacher
    ``card`` says) and labels."""
    return load_split("fmnist", split, data_root, card)


def load_cifar(dataset: str, split: str = "test", data_root: str | None = None, card: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    return load_split(dataset, split, data_root, card)


def load_imagenet_val(data_root: str | None = None, card: dict | None = None) -> ImageFolderVal:
    return load_split("imagenet", "test", data_root, card)
