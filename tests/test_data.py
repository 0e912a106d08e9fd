"""Framework-neutral datasets: seeded splits, limits, and each loader on real files."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runner.errors import UserError
from runner.train import data
from schemas import DatasetSpec


def test_split_is_seeded_disjoint_and_complete() -> None:
    spec = DatasetSpec(name="digits", image_size=64)
    a, b = data.load(spec, Path("/nonexistent")), data.load(spec, Path("/nonexistent"))
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    sizes = a.sizes()
    assert sum(sizes.values()) == 1797 and sizes["test"] == round(1797 * 0.2)
    assert a.train_x.dtype == np.uint8 and a.train_x.shape[1:] == (8, 8, 3) and a.class_names[0] == "0"
    rows = {x.tobytes() for x in a.train_x}, {x.tobytes() for x in a.test_x}
    assert len(rows[0] & rows[1]) < 20, "train and test hold different images (digits repeats a few exactly)"
    other = data.load(spec.model_copy(update={"seed": 1}), Path("/nonexistent"))
    assert not np.array_equal(other.test_y, a.test_y)


def test_limit_shrinks_every_split_alike() -> None:
    full = data.load(DatasetSpec(name="synthetic", synthetic_size=1000), Path("/x")).sizes()
    small = data.load(DatasetSpec(name="synthetic", synthetic_size=1000, limit=100), Path("/x")).sizes()
    assert small["train"] == 100
    share = 100 / full["train"]
    assert small["val"] == round(full["val"] * share) and small["test"] == round(full["test"] * share)


def test_synthetic_is_cifar_shaped_and_seeded() -> None:
    s = data.load(DatasetSpec(name="synthetic", synthetic_size=200, seed=3), Path("/x"))
    assert s.train_x.shape[1:] == (32, 32, 3) and s.num_classes == 10
    assert np.array_equal(
        s.train_x, data.load(DatasetSpec(name="synthetic", synthetic_size=200, seed=3), Path("/x")).train_x
    )


def test_imagefolder_reads_class_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog", "emu"):
        (tmp_path / name).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    s = data.load(DatasetSpec(name="imagefolder", path=str(tmp_path), image_size=40), Path("/x"))
    assert s.class_names == ["cat", "dog", "emu"]
    assert sum(s.sizes().values()) == 24 and s.train_x.shape[1:] == (40, 40, 3)
    assert sorted(set(np.concatenate([s.train_y, s.val_y, s.test_y]).tolist())) == [0, 1, 2]


def test_imagefolder_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a folder"):
        data.load(DatasetSpec(name="imagefolder", path=str(tmp_path / "missing")), Path("/x"))
    (tmp_path / "only").mkdir()
    with pytest.raises(UserError, match="at least 2 class sub-folders"):
        data.load(DatasetSpec(name="imagefolder", path=str(tmp_path)), Path("/x"))


def test_cifar10_missing_names_the_folder_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        data.load(DatasetSpec(name="cifar10"), tmp_path)
    message = str(info.value)
    assert str(tmp_path / "datasets" / "cifar10" / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "Fix:" in message
