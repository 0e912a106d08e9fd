"""The user's own dataset: `dataset.name: <module>:<function>` of the suite's code: folder.

The function is called as `function(path_or_None)` (dataset.path, absolute, or None) and returns a dict:

    images       uint8 array (N, H, W, 3): RGB, any size (the trainers resize to dataset.image_size)
    labels       integer array (N,): class indices, 0 .. len(classes) - 1
    classes      list of N_classes distinct names (str), in label order
    test_images  optional, uint8 (M, H, W, 3): its own test split, of the training images' size
    test_labels  optional, integer (M,): with test_images, both or neither

Each is checked strictly, each problem one message; then the data takes the same seeded split as
gridrun's datasets (runner.train.data.split), so a PyTorch and a TensorFlow run see the same images.
"""

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import UserError
from runner.train import usercode
from runner.train.data import Splits, split
from schemas import DatasetSpec

FIELD = "dataset.name"
REQUIRED = ("images", "labels", "classes")
OPTIONAL = ("test_images", "test_labels")
MIN_IMAGES = 10  # a training, a validation and a test image at the least, as for an image folder
SHAPE = "uint8 array (N, H, W, 3)"
Wrong = Callable[[str, str], UserError]  # (what it returned, the fix) -> the message
RETURNS = (
    "return {'images': uint8 array (N, H, W, 3), 'labels': int array (N,), 'classes': [names]} (and optionally "
    "'test_images', 'test_labels')"
)


def load(spec: DatasetSpec, cache: Path) -> Splits:
    """Call the user's function, check what it returned, and split it as any dataset."""
    got = usercode.call(FIELD, spec.name, (spec.path,), f"{spec.name.partition(':')[2]}({spec.path!r})")
    images, labels, names, test = arrays(spec.name, got)
    return split(spec, images, labels, names, test=test)


def arrays(ref: str, got: Any) -> tuple[np.ndarray, np.ndarray, list[str], tuple[np.ndarray, np.ndarray] | None]:
    """(images, labels as int64, class names, the test split or None) of what the function returned, checked."""

    def wrong(problem: str, fix: str) -> UserError:
        return UserError(f"{FIELD} {ref} returned {problem}. Fix: {fix}")

    if not isinstance(got, Mapping):
        raise usercode.returned_wrong(FIELD, ref, got, "a dict of images, labels and classes", RETURNS)
    unknown = [k for k in got if k not in (*REQUIRED, *OPTIONAL)]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), [*REQUIRED, *OPTIONAL], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise wrong(f"a dict with the key {key!r}{hint}", f"use only the keys {', '.join((*REQUIRED, *OPTIONAL))}")
    missing = [k for k in REQUIRED if k not in got]
    if missing:
        raise wrong(f"a dict without {', '.join(repr(k) for k in missing)}", RETURNS)
    names = _classes(got["classes"], wrong)
    images = _images("images", got["images"], wrong)
    labels = _labels("labels", got["labels"], len(images), "images", names, wrong)
    if ("test_images" in got) != ("test_labels" in got):
        given, lacking = ("test_images", "test_labels") if "test_images" in got else ("test_labels", "test_images")
        raise wrong(f"{given!r} without {lacking!r}", "give both, for a test split of your own, or neither")
    test = None
    if "test_images" in got:
        test_x = _images("test_images", got["test_images"], wrong, minimum=1)
        if test_x.shape[1:3] != images.shape[1:3]:
            raise wrong(
                f"'test_images' of {test_x.shape[1]}x{test_x.shape[2]} px and 'images' of "
                f"{images.shape[1]}x{images.shape[2]} px",
                "give both splits one size (the trainers resize it to dataset.image_size)",
            )
        test = (test_x, _labels("test_labels", got["test_labels"], len(test_x), "test_images", names, wrong))
    return images, labels, names, test


def _classes(value: Any, wrong: Wrong) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(n, str) for n in value):
        raise wrong(f"'classes' as {usercode.kind(value)}", "give a list of class names (str), in label order")
    if len(value) < 2:
        raise wrong(f"{len(value)} class name(s) in 'classes'", "give at least 2 classes")
    repeated = sorted({n for n in value if list(value).count(n) > 1})
    if repeated:
        raise wrong(f"'classes' naming {repeated[0]!r} more than once", "give each class one distinct name")
    return list(value)


def _images(key: str, value: Any, wrong: Wrong, minimum: int = MIN_IMAGES) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise wrong(
            f"{key!r} as {usercode.kind(value)}", f"give a numpy {SHAPE}, e.g. np.asarray(images, dtype=np.uint8)"
        )
    if value.dtype != np.uint8:
        raise wrong(
            f"{key!r} of dtype {value.dtype}",
            "give 0-255 pixel values as uint8, e.g. (x * 255).round().astype(np.uint8)",
        )
    if value.ndim != 4 or value.shape[3] != 3:
        fix = f"give a {SHAPE}"
        if value.ndim == 4 and value.shape[1] == 3:
            fix += ": for channels-first images, images.transpose(0, 2, 3, 1)"
        elif value.ndim == 3:
            fix += ": for grey levels, np.repeat(images[..., None], 3, axis=3)"
        raise wrong(f"{key!r} of shape {value.shape}", fix)
    if len(value) < minimum or min(value.shape[1:3]) < 1:
        raise wrong(
            f"{len(value)} image(s) of {value.shape[1]}x{value.shape[2]} px in {key!r}", f"give at least {minimum}"
        )
    return value


def _labels(key: str, value: Any, n: int, of: str, names: list[str], wrong: Wrong) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        what = f"of dtype {value.dtype}" if isinstance(value, np.ndarray) else f"as {usercode.kind(value)}"
        raise wrong(
            f"{key!r} {what}", "give a numpy array of integer class indices, e.g. np.asarray(labels, dtype=np.int64)"
        )
    if value.ndim != 1:
        raise wrong(f"{key!r} of shape {value.shape}", "give one label per image, shape (N,), e.g. labels.reshape(-1)")
    if len(value) != n:
        raise wrong(f"{n} {of} and {len(value)} {key}", f"give one label per image: as many {key} as {of}")
    low, high = int(value.min()), int(value.max())
    if low < 0 or high >= len(names):
        bad = low if low < 0 else high
        raise wrong(
            f"{key!r} holding {bad}, and 'classes' names {len(names)} classes (labels 0 to {len(names) - 1})",
            "number the classes from 0, one name in 'classes' for each",
        )
    return value.astype(np.int64)
