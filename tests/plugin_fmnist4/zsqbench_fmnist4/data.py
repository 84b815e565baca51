"""The ``fmnist4`` dataset: Fashion-MNIST restricted to four classes, read from the real idx files."""
import torch

from zsqbench.evaluation.data import find_files, read_idx
from zsqbench.spine.hookspecs import hookimpl
from zsqbench.teacher.datasets import DatasetInfo

CLASSES = (0, 1, 7, 8)  # T-shirt/top, trouser, sneaker, bag -> labels 0..3
INFO = DatasetInfo("fmnist4", len(CLASSES), (1, 28, 28), (0.2674,), (0.3479,),
                   "Fashion-MNIST T-shirt/trouser/sneaker/bag, 1x28x28 (no padding)")


class FourClasses:
    splits = ("test", "train")
    how_to_get = "apt-get install dataset-fashion-mnist, or put its four idx .gz files in --data-root"

    def load(self, split, data_root, card):
        prefix = "t10k" if split == "test" else "train"
        img, lab = find_files(data_root, [f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"],
                              subdirs=["fashion-mnist"], system=["/usr/share/datasets/fashion-mnist"])
        x = torch.from_numpy(read_idx(img).copy()).unsqueeze(1)  # uint8 pixels: the core scales and normalises
        y = torch.from_numpy(read_idx(lab).astype("int64"))
        keep = torch.isin(y, torch.tensor(CLASSES))
        return x[keep], torch.searchsorted(torch.tensor(CLASSES), y[keep])


@hookimpl
def zsqbench_register(registry):
    registry.add_dataset(INFO, FourClasses)
