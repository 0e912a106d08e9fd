"""Framework-neutral datasets: uint8 images (N, H, W, 3), int64 labels, class names, a seeded split.

A PyTorch run and a TensorFlow run of the same spec see exactly the same images in each split. Each
dataset is declared in schemas.registry (its loader, classes, what it downloads); the loaders are here.
"""

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import UserError
from runner.train.declared import load as load_declared
from schemas import DatasetSpec
from schemas.registry import DATASETS, Download, dataset_of

# CIFAR-10's download, by name, for tests that write its files.
_CIFAR10: Download = DATASETS["cifar10"].download  # type: ignore[assignment]
CIFAR10_URL, CIFAR10_MD5, CIFAR10_FOLDER, CIFAR10_FILES = _CIFAR10.url, _CIFAR10.md5, _CIFAR10.folder, _CIFAR10.files
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class Splits:
    """Train, validation and test arrays of one dataset."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def download_root(spec: DatasetSpec, cache: Path) -> Path:
    """The folder that holds (or will hold) the folder a downloaded dataset extracts to: dataset.path
    (that folder itself, or the one holding it), else the dataset's folder in the cache."""
    download = dataset_of(spec.name).download
    if spec.path:
        root = Path(spec.path).expanduser()
        return root.parent if download is not None and root.name == download.folder else root
    return Path(cache) / "datasets" / spec.name


def input_files(spec: DatasetSpec, cache: Path) -> list[Path]:
    """The files a downloaded dataset is read from (none for one made in memory; a folder of the user's
    is a tree under its own path)."""
    download = dataset_of(spec.name).download
    if download is None:
        return []
    folder = download_root(spec, cache) / download.folder
    return [folder / f for f in download.files]


def missing_files(spec: DatasetSpec, cache: Path) -> list[Path]:
    """Files the dataset needs that are not there (empty when it can be loaded offline)."""
    declared = dataset_of(spec.name)
    if declared.download is not None:
        return [p for p in input_files(spec, cache) if not p.is_file()]
    if declared.needs_path:
        root = Path(spec.path or "").expanduser()
        return [] if root.is_dir() else [root]
    if declared.user and spec.path:  # what the user's function is given: a file or a folder
        given = Path(spec.path).expanduser()
        return [] if given.exists() else [given]
    return []


def class_folders(root: Path) -> list[str]:
    """The class sub-folders of an image folder, sorted: the labels, in order."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def load(spec: DatasetSpec, cache: Path) -> Splits:
    """Load and split the dataset the spec names, reading only local files."""
    return load_declared(dataset_of(spec.name).loader)(spec, Path(cache))


def _pickles(spec: DatasetSpec, cache: Path) -> Callable[[str], dict[bytes, Any]]:
    """A reader of the downloaded dataset's pickle files (CIFAR's layout), once they are all there."""
    declared = dataset_of(spec.name)
    assert declared.download is not None
    folder = download_root(spec, cache) / declared.download.folder
    missing = missing_files(spec, cache)
    if missing:
        raise UserError(
            f"{declared.shown} is not at {folder} (missing {', '.join(p.name for p in missing)}). "
            f"Fix: extract {declared.download.url} there, or let `gridrun run` download it on a machine with network."
        )

    def read(name: str) -> dict[bytes, Any]:
        with open(folder / name, "rb") as f:
            return pickle.load(f, encoding="bytes")

    return read


def _images(d: dict[bytes, Any]) -> np.ndarray:
    """CIFAR's rows of 3072 bytes (R, G, B planes of 32 x 32) as uint8 (N, 32, 32, 3)."""
    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x)


def load_cifar10(spec: DatasetSpec, cache: Path) -> Splits:
    """CIFAR-10's pickle batches: the official test split is kept."""
    read = _pickles(spec, cache)

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        d = read(name)
        return _images(d), np.asarray(d[b"labels"], dtype=np.int64)

    parts = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    test_x, test_y = batch("test_batch")
    names = [n.decode() for n in read("batches.meta")[b"label_names"]]
    return split(spec, x, y, names, test=(test_x, test_y))


def load_cifar100(spec: DatasetSpec, cache: Path) -> Splits:
    """CIFAR-100's train and test pickles, with its fine (100) or coarse (20) labels: the official test split is
    kept."""
    read = _pickles(spec, cache)
    which = spec.labels or next(iter(spec.declared.label_sets))  # fine unless the spec says coarse
    train, test = read("train"), read("test")
    names = [n.decode() for n in read("meta")[f"{which}_label_names".encode()]]
    key = f"{which}_labels".encode()
    y, test_y = (np.asarray(d[key], dtype=np.int64) for d in (train, test))
    return split(spec, _images(train), y, names, test=(_images(test), test_y))


def load_digits(spec: DatasetSpec, cache: Path) -> Splits:
    """scikit-learn's digits, made in memory."""
    import sklearn.datasets

    d = sklearn.datasets.load_digits()
    # 8x8 grey levels 0..16 -> uint8 RGB; the trainer's resize upscales on the device.
    x = np.repeat((d.images * (255 / 16)).round().astype(np.uint8)[..., None], 3, axis=3)
    return split(spec, x, d.target.astype(np.int64), [str(n) for n in d.target_names])


def load_synthetic(spec: DatasetSpec, cache: Path) -> Splits:
    """Seeded CIFAR-shaped images: a fixed colour template per class plus noise, so it can be learnt."""
    rng = np.random.default_rng(spec.seed)
    classes = 10  # as declared (tests/test_registry.py checks each loader against its declaration)
    templates = rng.integers(0, 256, size=(classes, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, classes, size=spec.synthetic_size).astype(np.int64)
    noise = rng.normal(0, 64, size=(spec.synthetic_size, 32, 32, 3)).astype(np.float32)
    x = np.clip(templates[y] * 0.5 + 64 + noise, 0, 255).astype(np.uint8)
    return split(spec, x, y, [f"class_{i}" for i in range(classes)])


def load_imagefolder(spec: DatasetSpec, cache: Path) -> Splits:
    """The user's folder: one sub-folder of images per class, resized to image_size as they are read."""
    from PIL import Image

    root = Path(spec.path or "").expanduser()
    if not root.is_dir():
        raise UserError(
            f"imagefolder path {root} is not a folder. Fix: point dataset.path at a folder "
            "with one sub-folder of images per class."
        )
    classes = class_folders(root)
    images, labels = [], []
    size = (spec.image_size, spec.image_size)
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(file) as im:
                    images.append(np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype=np.uint8))
                labels.append(label)
    if len(classes) < 2 or len(images) < 10:
        raise UserError(
            f"imagefolder {root} has {len(classes)} class folders and {len(images)} images. "
            "Fix: give at least 2 class sub-folders and 10 images."
        )
    return split(spec, np.stack(images), np.asarray(labels, dtype=np.int64), classes)


def split(
    spec: DatasetSpec,
    x: np.ndarray,
    y: np.ndarray,
    names: list[str],
    test: tuple[np.ndarray, np.ndarray] | None = None,
) -> Splits:
    """Seeded split: an official test set is kept; otherwise test_fraction is held out first."""
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(y))
    if test is None:
        n_test = max(1, round(len(y) * spec.test_fraction))
        test = (x[order[:n_test]], y[order[:n_test]])
        order = order[n_test:]
    n_val = max(1, round(len(order) * spec.val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    parts = [(x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), test]
    if spec.limit is not None and spec.limit < len(train_idx):
        share = spec.limit / len(train_idx)
        sizes = [spec.limit] + [max(1, round(len(py) * share)) for _, py in parts[1:]]
        parts = [_take(px, py, n, rng) for (px, py), n in zip(parts, sizes, strict=True)]
    (tx, ty), (vx, vy), (sx, sy) = parts
    return Splits(tx, ty, vx, vy, sx, sy, names)


def _take(x: np.ndarray, y: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(rng.permutation(len(y))[:n])
    return x[idx], y[idx]
