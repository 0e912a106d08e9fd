"""Tiny CIFAR-10 and CIFAR-100 pickle sets, in the layout of the real archives, for the real loaders."""

import pickle
from pathlib import Path

import numpy as np

from runner.train import data

FINE_PER_COARSE = 5  # CIFAR-100: 100 fine classes in 20 superclasses


def write_cifar10(folder: Path, per_batch: int = 20) -> None:
    """cifar-10-batches-py: five training batches, a test batch and batches.meta, with random images."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in data.CIFAR10_FILES[:-1]:
        labels = list(rng.integers(0, 10, per_batch))
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8), b"labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))


def cifar100_split(n: int, seed: int) -> dict[bytes, object]:
    """One CIFAR-100 pickle (train or test): rows of 3072 bytes (R, G, B planes), fine and coarse labels."""
    rng = np.random.default_rng(seed)
    fine = rng.integers(0, 100, n)
    return {
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        b"batch_label": b"fake",
        b"fine_labels": [int(f) for f in fine],
        b"coarse_labels": [int(f) // FINE_PER_COARSE for f in fine],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }


def write_cifar100(folder: Path, train: int = 60, test: int = 20) -> dict[str, dict[bytes, object]]:
    """cifar-100-python: train, test and meta (fine_label_names, coarse_label_names); what was written."""
    folder.mkdir(parents=True)
    written = {"train": cifar100_split(train, 1), "test": cifar100_split(test, 2)}
    written["meta"] = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(100 // FINE_PER_COARSE)],
    }
    for name, content in written.items():
        (folder / name).write_bytes(pickle.dumps(content))
    return written
