"""Real-evaluation data loaders (zsqbench.evaluation.data) on tiny fabricated files, plus the installed
Fashion-MNIST test set when it is there."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import zsqbench.evaluation.data as data
from zsqbench.spine.errors import UserError
from zsqbench.evaluation.data import (ENV_DATA_ROOT, load_cifar, load_fmnist, load_imagenet_val,
                                      load_test_set, normalize)
from zsqbench.spine.registry import dataset_info

FMNIST_MEAN, FMNIST_STD = dataset_info("fmnist").mean[0], dataset_info("fmnist").std[0]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """The tests decide where data is: no inherited $ZSQBENCH_DATA_ROOT."""
    monkeypatch.delenv(ENV_DATA_ROOT, raising=False)


# --- Fashion-MNIST idx ----------------------------------------------------------------------------------------

def idx_images(images: np.ndarray) -> bytes:
    n, h, w = images.shape
    return struct.pack(">IIII", 0x00000803, n, h, w) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, images: np.ndarray, labels: np.ndarray, prefix="t10k", gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for name, raw in ((f"{prefix}-images-idx3-ubyte", idx_images(images)),
                      (f"{prefix}-labels-idx1-ubyte", idx_labels(labels))):
        if gz:
            with gzip.open(folder / (name + suffix), "wb") as f:
                f.write(raw)
        else:
            (folder / name).write_bytes(raw)


def fake_fmnist(n=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0] = 255  # an all-white image: its inside is (1 - mean)/std
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    return images, labels


def check_fmnist(x, y, images, labels):
    n = len(images)
    assert x.shape == (n, 1, 32, 32) and x.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert y.dtype == torch.int64
    border = (0 - FMNIST_MEAN) / FMNIST_STD
    mask = torch.ones(32, 32, dtype=torch.bool)
    mask[2:30, 2:30] = False
    assert torch.allclose(x[:, 0][:, mask], torch.full((n, int(mask.sum())), border), atol=1e-6)
    inside = (torch.from_numpy(images).float() / 255 - FMNIST_MEAN) / FMNIST_STD
    assert torch.allclose(x[:, 0, 2:30, 2:30], inside, atol=1e-5)
    assert torch.allclose(x[0, 0, 2:30, 2:30], torch.full((28, 28), (1 - FMNIST_MEAN) / FMNIST_STD), atol=1e-6)


def test_fmnist_from_data_root(tmp_path):
    images, labels = fake_fmnist()
    write_fmnist(tmp_path, images, labels)
    x, y = load_fmnist("test", data_root=tmp_path)
    check_fmnist(x, y, images, labels)
    # same through the dispatcher, and with a str path
    x2, y2 = load_test_set("fmnist", data_root=str(tmp_path))
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_fmnist_in_subfolder_uncompressed_and_train_split(tmp_path):
    images, labels = fake_fmnist(3, seed=1)
    write_fmnist(tmp_path / "fashion-mnist", images, labels, gz=False)
    x, y = load_fmnist("test", data_root=tmp_path)
    check_fmnist(x, y, images, labels)
    tr_images, tr_labels = fake_fmnist(4, seed=2)
    write_fmnist(tmp_path / "fashion-mnist", tr_images, tr_labels, prefix="train")
    x, y = load_fmnist("train", data_root=tmp_path)
    check_fmnist(x, y, tr_images, tr_labels)


def test_fmnist_from_env_var(tmp_path, monkeypatch):
    images, labels = fake_fmnist(4, seed=3)
    write_fmnist(tmp_path, images, labels)
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path))
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "nowhere")
    x, y = load_fmnist("test")
    check_fmnist(x, y, images, labels)


def test_fmnist_data_root_wins_over_env_var(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    images_a, labels_a = fake_fmnist(2, seed=4)
    write_fmnist(a, images_a, labels_a)
    write_fmnist(b, *fake_fmnist(3, seed=5))
    monkeypatch.setenv(ENV_DATA_ROOT, str(b))
    x, y = load_fmnist("test", data_root=a)
    check_fmnist(x, y, images_a, labels_a)


def _expect_user_error(folder, match=None):
    with pytest.raises(UserError, match=match):
        load_fmnist("test", data_root=folder)


def test_fmnist_truncated_images(tmp_path):
    images, labels = fake_fmnist(3)
    write_fmnist(tmp_path, images, labels, gz=False)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    _expect_user_error(tmp_path, "truncated")


def test_fmnist_truncated_inside_gzip_payload(tmp_path):
    images, labels = fake_fmnist(3)
    write_fmnist(tmp_path, images, labels)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(idx_images(images)[:-500])
    _expect_user_error(tmp_path, "truncated")


def test_fmnist_truncated_gzip_file(tmp_path):
    """A partial download: the .gz stream itself is cut short."""
    images, labels = fake_fmnist(3)
    write_fmnist(tmp_path, images, labels)
    f = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    _expect_user_error(tmp_path)


def test_fmnist_truncated_header(tmp_path):
    images, labels = fake_fmnist(3)
    write_fmnist(tmp_path, images, labels, gz=False)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:10])
    _expect_user_error(tmp_path)


def test_fmnist_not_gzip_or_not_idx(tmp_path):
    images, labels = fake_fmnist(3)
    write_fmnist(tmp_path, images, labels)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip at all")
    _expect_user_error(tmp_path)
    write_fmnist(tmp_path, images, labels, gz=False)
    for p in tmp_path.glob("*.gz"):
        p.unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"<html>404 not found</html>")
    _expect_user_error(tmp_path, "not an idx file")


def test_fmnist_image_label_count_mismatch(tmp_path):
    images, labels = fake_fmnist(4)
    write_fmnist(tmp_path, images, labels[:3])
    _expect_user_error(tmp_path, "disagree")


def test_fmnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "no-such-dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as e:
        load_test_set("fmnist", data_root=empty)
    msg = str(e.value)
    assert "fmnist data not found" in msg and str(empty) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "ZSQBENCH_DATA_ROOT" in msg
    # no data root at all: still a clear error
    with pytest.raises(UserError, match="apt-get"):
        load_fmnist("test")


def test_fmnist_only_images_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "no-such-dir")
    images, labels = fake_fmnist(2)
    write_fmnist(tmp_path, images, labels)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="not found"):
        load_fmnist("test", data_root=tmp_path)


REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (REAL_FMNIST / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST is not installed at /usr/share/datasets/fashion-mnist")
def test_real_fmnist_test_set(tmp_path):
    x, y = load_test_set("fmnist")  # no data root named: the system copy
    assert x.shape == (10000, 1, 32, 32)
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert sorted(y.unique().tolist()) == list(range(10))
    assert torch.bincount(y).tolist() == [1000] * 10
    border = (0 - FMNIST_MEAN) / FMNIST_STD
    assert torch.allclose(x[:, :, :2, :], torch.full_like(x[:, :, :2, :], border))
    # the stated normalisation constants roughly whiten the real 28x28 pixels
    inner = x[:, :, 2:30, 2:30]
    assert abs(float(inner.mean())) < 0.05 and abs(float(inner.std()) - 1) < 0.05


# --- CIFAR pickle batches -----------------------------------------------------------------------------------

def write_cifar(path: Path, n: int, label_key: bytes, num_classes: int, seed=0):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, num_classes, size=n).tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", label_key: labels, b"data": raw,
                     b"filenames": [b"x.png"] * n}, f)
    return raw, labels


@pytest.mark.parametrize("dataset,folder,fname,key,classes", [
    ("cifar10", "cifar-10-batches-py", "test_batch", b"labels", 10),
    ("cifar100", "cifar-100-python", "test", b"fine_labels", 100),
])
@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_test_batch(tmp_path, dataset, folder, fname, key, classes, point_at):
    raw, labels = write_cifar(tmp_path / folder / fname, 6, key, classes)
    root = tmp_path if point_at == "parent" else tmp_path / folder
    x, y = load_test_set(dataset, data_root=root)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == labels and y.dtype == torch.int64
    info = dataset_info(dataset)
    # the CIFAR row layout is 1024 R, then 1024 G, then 1024 B, row-major 32x32
    for c in range(3):
        chan = torch.from_numpy(raw[:, c * 1024:(c + 1) * 1024].reshape(6, 32, 32)).float() / 255
        assert torch.allclose(x[:, c], (chan - info.mean[c]) / info.std[c], atol=1e-5)
    # one pixel by hand: sample 2, channel 1 (G), row 5, column 7
    v = raw[2, 1024 + 5 * 32 + 7] / 255
    assert float(x[2, 1, 5, 7]) == pytest.approx((v - info.mean[1]) / info.std[1], abs=1e-5)


def test_cifar_env_var(tmp_path, monkeypatch):
    raw, labels = write_cifar(tmp_path / "cifar-10-batches-py" / "test_batch", 3, b"labels", 10)
    monkeypatch.setenv(ENV_DATA_ROOT, str(tmp_path))
    x, y = load_cifar("cifar10")
    assert x.shape == (3, 3, 32, 32) and y.tolist() == labels


def test_cifar10_train_split_concatenates_batches(tmp_path):
    all_labels = []
    for i in range(1, 6):
        _, labels = write_cifar(tmp_path / f"data_batch_{i}", 2, b"labels", 10, seed=i)
        all_labels += labels
    x, y = load_cifar("cifar10", "train", data_root=tmp_path)
    assert x.shape == (10, 3, 32, 32) and y.tolist() == all_labels


def test_cifar_wrong_label_key_or_garbage(tmp_path):
    # a CIFAR-10 batch where CIFAR-100 is asked for: no fine_labels
    write_cifar(tmp_path / "cifar-100-python" / "test", 2, b"labels", 10)
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        load_test_set("cifar100", data_root=tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        load_test_set("cifar10", data_root=tmp_path)


@pytest.mark.parametrize("dataset,hint", [
    ("cifar10", "cifar-10-python.tar.gz"),
    ("cifar100", "cifar-100-python.tar.gz"),
    ("imagenet", "one sub-folder per class"),
])
def test_missing_data_says_how_to_get_it(tmp_path, dataset, hint):
    with pytest.raises(UserError) as e:
        load_test_set(dataset, data_root=tmp_path)
    msg = str(e.value)
    assert f"{dataset} data not found" in msg and hint in msg and str(tmp_path) in msg
    assert "--data-root" in msg


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet"])
def test_missing_data_without_any_root(dataset):
    with pytest.raises(UserError, match="no --data-root given"):
        load_test_set(dataset)


def test_unknown_dataset():
    with pytest.raises(UserError, match="no evaluation data loader"):
        load_test_set("svhn")


def test_normalize_per_channel():
    x = torch.ones(1, 3, 2, 2) * 0.5
    out = normalize(x, "cifar10")
    info = dataset_info("cifar10")
    for c in range(3):
        assert torch.allclose(out[0, c], torch.full((2, 2), (0.5 - info.mean[c]) / info.std[c]))


# --- ImageNet val folders -----------------------------------------------------------------------------------

GREEN, RED, BLUE, YELLOW = (0, 255, 0), (255, 0, 0), (0, 0, 255), (255, 255, 0)


def unnormalize(x):
    info = dataset_info("imagenet")
    return x * torch.tensor(info.std).view(-1, 1, 1) + torch.tensor(info.mean).view(-1, 1, 1)


def striped(width, height, horizontal=True):
    """Four bands along the long side: green 1/6, red 1/3, blue 1/3, yellow 1/6."""
    from PIL import Image
    im = Image.new("RGB", (width, height))
    long = width if horizontal else height
    cuts = [0, long // 6, long // 2, long - long // 6, long]
    for (a, b), colour in zip(zip(cuts, cuts[1:]), (GREEN, RED, BLUE, YELLOW)):
        box = (a, 0, b, height) if horizontal else (0, a, width, b)
        im.paste(colour, box)
    return im


def assert_colour(pixels, colour, tol=2 / 255):
    target = torch.tensor(colour, dtype=torch.float32).view(3, *([1] * (pixels.ndim - 1))) / 255
    assert torch.allclose(pixels, target.expand_as(pixels), atol=tol), pixels.mean(dim=tuple(range(1, pixels.ndim)))


@pytest.fixture
def imagenet_root(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    root = tmp_path / "val"
    # class folders deliberately created out of order; a stray file at the top level is ignored
    for wnid in ("n02", "n01", "n03"):
        (root / wnid).mkdir(parents=True)
    striped(300, 200).save(root / "n01" / "landscape.png")
    striped(200, 300, horizontal=False).save(root / "n01" / "portrait.PNG")
    Image.new("RGB", (64, 48), (10, 200, 30)).save(root / "n02" / "small.jpg", quality=95)
    Image.new("L", (230, 240), 128).save(root / "n03" / "gray.jpeg")
    Image.new("RGBA", (256, 256), (255, 255, 255, 0)).save(root / "n03" / "rgba.png")
    (root / "n03" / "notes.txt").write_text("not an image")
    (root / "README").write_text("not a class")
    return tmp_path


def test_imagenet_classes_and_batches(imagenet_root):
    ds = load_imagenet_val(imagenet_root)  # the parent of val/ works
    assert ds.classes == ["n01", "n02", "n03"]
    assert len(ds) == 5
    assert [(p.name, c) for p, c in ds.samples] == [
        ("landscape.png", 0), ("portrait.PNG", 0), ("small.jpg", 1), ("gray.jpeg", 2), ("rgba.png", 2)]
    batches = list(ds.batches(2))
    assert [tuple(x.shape) for x, _ in batches] == [(2, 3, 224, 224), (2, 3, 224, 224), (1, 3, 224, 224)]
    assert torch.cat([y for _, y in batches]).tolist() == [0, 0, 1, 2, 2]
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32
    # decoded pixels come back to [0, 1] after un-normalising
    raw = unnormalize(x)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5
    assert_colour(raw[2], (10, 200, 30), tol=6 / 255)     # JPEG, upscaled 48 -> 256 then cropped
    assert_colour(raw[3], (128, 128, 128), tol=2 / 255)   # grayscale converted to RGB
    assert_colour(raw[4], (255, 255, 255), tol=1e-5)       # RGBA: alpha dropped
    # limit
    assert sum(len(y) for _, y in ds.batches(4, limit=3)) == 3
    # the val folder itself works too, and so does the dispatcher
    assert load_test_set("imagenet", data_root=imagenet_root / "val").classes == ds.classes


def test_imagenet_resize_shorter_side_then_centre_crop(imagenet_root):
    """300x200 -> 384x256 -> crop x in [80, 304): original x in [62.5, 237.5). The outer green/yellow bands
    (x < 50, x >= 250) must be cut away; red/blue meet at crop column 192 - 80 = 112."""
    ds = load_imagenet_val(imagenet_root / "val")
    img = unnormalize(next(ds.batches(1))[0][0])
    assert img.shape == (3, 224, 224)
    assert_colour(img[:, :, :108], RED)
    assert_colour(img[:, :, 117:], BLUE)
    # full height kept: the top and bottom rows carry the same colours
    assert_colour(img[:, :1, :108], RED)
    assert_colour(img[:, -1:, 117:], BLUE)


def test_imagenet_portrait_crop(imagenet_root):
    ds = load_imagenet_val(imagenet_root)
    x, _ = list(ds.batches(2))[0]
    img = unnormalize(x[1])  # 200x300 portrait, bands top to bottom
    assert_colour(img[:, :108, :], RED)
    assert_colour(img[:, 117:, :], BLUE)


def test_imagenet_load_exact_size(tmp_path):
    """A 224-wide image is resized to 256 first (it is not merely cropped)."""
    Image = pytest.importorskip("PIL.Image")
    im = Image.new("RGB", (224, 224), BLUE)
    im.paste(RED, (0, 0, 16, 224))  # a 16 px red band on the left: scaled to ~18 px, then 16 px cropped
    (tmp_path / "c").mkdir()
    im.save(tmp_path / "c" / "a.png")
    ds = load_imagenet_val(tmp_path)
    t = data.ImageFolderVal.load(ds.samples[0][0])
    assert t.shape == (3, 224, 224)
    assert_colour(t[:, :, 4:], BLUE)


def test_imagenet_empty_class_folders(tmp_path):
    (tmp_path / "val" / "n01").mkdir(parents=True)
    (tmp_path / "val" / "n01" / "x.txt").write_text("")
    with pytest.raises(UserError, match="no images"):
        load_imagenet_val(tmp_path)


# --- the dev split (eval.split=dev) ---------------------------------------------------------------------------

def test_dev_split_is_the_tail_of_the_train_split(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEV_SIZE", 3)
    tr_images, tr_labels = fake_fmnist(5, seed=3)
    write_fmnist(tmp_path, tr_images, tr_labels, prefix="train")
    write_fmnist(tmp_path, *fake_fmnist(2, seed=4))
    x, y = data.load_eval_set("fmnist", "dev", tmp_path)
    full_x, full_y = load_fmnist("train", tmp_path)
    assert len(x) == 3 and torch.equal(x, full_x[-3:]) and torch.equal(y, full_y[-3:])
    xt, _ = data.load_eval_set("fmnist", "test", tmp_path)
    assert len(xt) == 2  # "test" is the test split, unchanged
    with pytest.raises(UserError, match="eval.split must be one of test, dev, got 'val'"):
        data.load_eval_set("fmnist", "val", tmp_path)
    with pytest.raises(UserError, match="use eval.split=test"):
        data.load_eval_set("imagenet", "dev", tmp_path)


def test_dev_split_on_the_real_train_split():
    try:
        x, y = data.load_eval_set("fmnist", "dev")
    except UserError:
        pytest.skip("Fashion-MNIST is not installed")
    full_x, full_y = load_fmnist("train")
    assert len(x) == data.DEV_SIZE == 10_000
    assert torch.equal(x, full_x[-10_000:]) and torch.equal(y, full_y[-10_000:])
    assert sorted(y.unique().tolist()) == list(range(10))


def test_named_data_root_without_data_never_falls_back_to_the_system_copy(tmp_path, monkeypatch):
    """A --data-root / $ZSQBENCH_DATA_ROOT that lacks the data is an error naming what is missing, even where the
    system copy exists; only without a named root does the system location apply."""
    monkeypatch.setattr(data, "FMNIST_SYSTEM_DIR", tmp_path / "system")
    images, labels = fake_fmnist(3)
    write_fmnist(tmp_path / "system", images, labels)
    assert len(load_test_set("fmnist")[0]) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as e:
        load_test_set("fmnist", data_root=empty)
    msg = str(e.value)
    assert f"under --data-root {empty}" in msg and "t10k-images-idx3-ubyte.gz" in msg and "system" not in msg
    monkeypatch.setenv(ENV_DATA_ROOT, str(empty))
    with pytest.raises(UserError, match=r"under \$ZSQBENCH_DATA_ROOT"):
        load_test_set("fmnist")
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_test_set("cifar10")
