"""The user's own code: a suite's `code:` folder, `<module>:<function>` models and datasets, and CIFAR-100.

The code folder's name has quotes and spaces in it, to catch quoting bugs on every way it takes (the
process's PYTHONPATH, a container's mount, a cluster's working_dir). Real things only: real `gridrun`
runs, real workers, the frameworks' own parameter counts, real pickles read by the real loaders.
"""

import importlib
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, gridrun
from fakecifar import FINE_PER_COARSE, write_cifar100
from jobhelp import make_job
from test_identity import NODES, finish

from runner.errors import UserError
from runner.execute.base import Launch
from runner.plan import make_plan
from runner.prepare import Preparer
from runner.schedule.remote import stage_dir
from runner.store import ResultsStore
from runner.store.layout import SuitePaths
from runner.suite import code as code_folder
from runner.suite import load_suite
from runner.train import data, usercode
from schemas import DatasetSpec, JobSpec, JobState, RunResult

CODE_DIR = "code with 'quotes' and \"spaces\""

TORCHNETS = '''\
import torch
from torch import nn


class Tiny(nn.Module):
    """A 3x3 convolution of 8 channels, a global average and a linear head."""

    def __init__(self, classes):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def build(num_classes, weights_path):
    model = Tiny(num_classes)
    if weights_path is not None:
        model.load_state_dict(torch.load(weights_path, weights_only=True))
        print(f"torchnets: loaded {weights_path}", flush=True)
    return model
'''
KERASNETS = """\
import keras


def build(num_classes, weights_path):
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))
"""
OWN_DATA = '''\
import numpy as np

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])


def _images(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = COLOURS[y][:, None, None, :] + rng.integers(-40, 40, (n, 12, 12, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y


def load(path):
    """150 images of 12 px in 3 colours; the seeded split makes train, validation and test of them."""
    x, y = _images(150, 0)
    return {"images": x, "labels": y, "classes": ["red", "green", "blue"]}


def load_with_test(path):
    """The same, with a test split of its own."""
    x, y = _images(150, 0)
    tx, ty = _images(30, 1)
    return {"images": x, "labels": y, "classes": ["red", "green", "blue"], "test_images": tx, "test_labels": ty}
'''
# Each bad module, and the words its job's reason must hold (the file and line among them).
BAD = {
    "bad_syntax.py": "def build(num_classes, weights_path)\n    return None\n",
    "needs_missing.py": "import numpy\nimport no_such_package_for_gridrun\n\n\ndef build(num_classes, weights_path):\n"
    "    return None\n",
    "wrong.py": "def build(num_classes, weights_path):\n    return {'model': num_classes}\n",
    "raises.py": "def build(num_classes, weights_path):\n"
    "    raise ValueError(f'no network for {num_classes} classes')\n",
    "baddata.py": "import numpy as np\n\n\ndef load(path):\n    x = np.zeros((20, 8, 8, 3), np.float32)\n"
    "    return {'images': x, 'labels': np.zeros(20, int), 'classes': ['a', 'b']}\n",
}


def write_code(root: Path, extra: dict[str, str] | None = None) -> Path:
    """The code folder, beside the suite files under `root`."""
    folder = root / CODE_DIR
    for rel, text in {"torchnets.py": TORCHNETS, "kerasnets.py": KERASNETS, "own/__init__.py": "",
                      "own/data.py": OWN_DATA, **(extra or {})}.items():  # fmt: skip
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def suite_text(name: str, jobs: str, code: str | None = CODE_DIR, resources: str = "", extra: str = "") -> str:
    """A suite of `jobs` (YAML lines) on the user's dataset, with `code:` (JSON strings are YAML's too)."""
    return (
        f"suite: {name}\n" + (f"code: {json.dumps(code)}\n" if code is not None else "") + "defaults:\n"
        "  dataset: {name: 'own.data:load', image_size: 16}\n"
        "  train: {epochs: 1, batch_size: 16, eval_batch_size: 64}\n"
        f"  resources: {{gpus: 0, cpus: 1{resources}}}\n{extra}"
        f"jobs:\n{jobs}"
    )


@pytest.fixture(autouse=True)
def own_import_path():
    """What a test puts on this process's import path (a code folder) is taken off after it."""
    path, folder = list(sys.path), usercode._folder
    yield
    sys.path[:], usercode._folder = path, folder


def flat(text: str) -> str:
    return " ".join(text.split())


# --- the code folder at validate ------------------------------------------------------------------


def test_a_code_folder_that_is_a_file_missing_or_without_the_module_is_refused_at_validate(tmp_path: Path) -> None:
    folder = write_code(tmp_path)
    job = "  - {name: a, framework: torch, model: {arch: 'torchnets:build'}}\n"
    suite = tmp_path / "s.yaml"
    suite.write_text(suite_text("s", job))
    loaded = load_suite(suite)
    assert loaded.code == folder.resolve()
    assert [rel for rel, _ in loaded.code_files()] == ["kerasnets.py", "own/__init__.py", "own/data.py", "torchnets.py"]

    suite.write_text(suite_text("s", job, code=f"{CODE_DIR}/torchnets.py"))
    proc = gridrun("validate", str(suite))
    message = flat(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "torchnets.py is a file, not a folder" in message and "model.arch: torchnets:build" in message, message
    assert f"Fix: code: {CODE_DIR}, with" in message

    (folder / "schemas.py").write_text("x = 1\n")
    suite.write_text(suite_text("s", job))
    with pytest.raises(UserError, match=r"holds a module or package named schemas, which would hide gridrun's own"):
        load_suite(suite)
    (folder / "schemas.py").unlink()

    suite.write_text(suite_text("s", job, code="no such folder"))
    with pytest.raises(UserError, match=r"code: no such folder does not exist \(looked for .*\)\. Fix: name the"):
        load_suite(suite)

    suite.write_text(suite_text("s", "  - {name: a, framework: torch, model: {arch: 'mynets:build'}}\n"))
    with pytest.raises(UserError) as missing:
        load_suite(suite)
    assert re.search(r"jobs\[0\] 'a': model\.arch mynets:build: module mynets is not in the code folder .*"
                     r"\(no mynets\.py, no mynets/__init__\.py\)\. Fix: put it there", str(missing.value))  # fmt: skip

    suite.write_text(suite_text("s", job, code=None))
    with pytest.raises(UserError, match=r"model\.arch torchnets:build names a module of your own, but the suite has "
                                        r"no code: folder\. Fix: add `code: <folder>`"):  # fmt: skip
        load_suite(suite)
    twin = "  - {name: a, framework: torch, model: {arch: resnet18}, dataset: {image_size: 32}}\n"
    suite.write_text(suite_text("s", twin, code=None))
    with pytest.raises(UserError, match=r"dataset\.name own\.data:load names a module of your own"):
        load_suite(suite)


def test_a_link_out_of_the_code_folder_a_special_file_or_a_huge_folder_is_one_message(tmp_path: Path) -> None:
    folder = write_code(tmp_path)
    (tmp_path / "secret.py").write_text("x = 1\n")
    (folder / "inside.py").symlink_to(folder / "torchnets.py")  # a link within the folder is fine
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "torchnets.cpython-311.pyc").write_bytes(b"\0" * 10)
    assert "inside.py" in [rel for rel, _ in code_folder.files(folder)]
    assert not any("pyc" in rel for rel, _ in code_folder.files(folder))

    (folder / "leak.py").symlink_to(tmp_path / "secret.py")
    with pytest.raises(UserError, match=r"the symbolic link leak\.py leads out of it, to .*secret\.py.*Fix: copy"):
        code_folder.files(folder)
    (folder / "leak.py").unlink()

    os.mkfifo(folder / "pipe")
    with pytest.raises(UserError, match=r"pipe is not a regular file .* Fix: remove it"):
        code_folder.files(folder)
    (folder / "pipe").unlink()

    with open(folder / "big.npz", "wb") as f:  # sparse: its size counts, no disk is used
        f.truncate(code_folder.MAX_BYTES + 1)
    with pytest.raises(UserError, match=r"its files hold more than 100 MiB, .* give data through dataset\.path"):
        code_folder.files(folder)
    (folder / "big.npz").unlink()

    many = folder / "many"
    many.mkdir()
    for i in range(code_folder.MAX_FILES):
        (many / f"{i}.txt").touch()
    with pytest.raises(UserError, match=r"more than 5,000 files and folders"):
        code_folder.files(folder)


# --- errors in the user's code, one message each ----------------------------------------------------


def _module(tmp_path: Path, source: str, package: str = "") -> tuple[str, Path]:
    """A module of that source in a fresh code folder this process imports from: (its name, its file)."""
    folder = tmp_path / CODE_DIR
    name = f"m_{uuid.uuid4().hex[:8]}"
    file = folder / package / f"{name}.py"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(source)
    importlib.invalidate_caches()
    usercode.use(folder)
    return (f"{package}.{name}" if package else name), file


def test_each_way_user_code_fails_is_one_line_with_the_file_and_line(tmp_path: Path) -> None:
    import torch

    # Each module's source, and the start of its message ({m}: the module, {f}: its file).
    cases = {
        BAD["bad_syntax.py"]: "model.arch {m}:build: module {m} does not compile: SyntaxError at {f}:1: expected ':'. "
        "Fix: correct that line",
        BAD["needs_missing.py"]: "model.arch {m}:build: module {m} ({f}:2) imports no_such_package_for_gridrun, which "
        "is not installed where the job runs. Fix: install it",
        "import numpy\nx = 1 / 0\n": "model.arch {m}:build: importing module {m} raised ZeroDivisionError: division "
        "by zero at {f}:2. Fix: correct the code there",
        "def biuld(num_classes, weights_path):\n    pass\n": "model.arch {m}:build: module {m} ({f}) has no function "
        "'build' (did you mean 'biuld'?). Fix: define build there, or correct the name after ':'",
        "build = 3\n": "model.arch {m}:build: {m}.build ({f}) is an int, not a function. Fix: make build a function",
        "def build(num_classes):\n    pass\n": "model.arch {m}:build ({f}:1) takes build(num_classes), but gridrun "
        "calls it as build(10, None). Fix: give it those parameters",
        BAD["raises.py"]: "model.arch {m}:build raised ValueError: no network for 10 classes at {f}:2, called as "
        "build(10, None). Fix: correct your function",
        BAD["wrong.py"]: "model.arch {m}:build ({f}:1) returned a dict, not a torch.nn.Module. Fix: return the "
        "network, e.g. `return MyNet()`",
    }
    for source, start in cases.items():
        name, file = _module(tmp_path, source)
        with pytest.raises(UserError) as raised:
            usercode.model(f"{name}:build", 10, None, torch.nn.Module, "a torch.nn.Module", "return MyNet()")
        message = str(raised.value)
        assert message.startswith(start.format(m=name, f=file)), message
        assert "\n" not in message, "one line: the worker's error line is the job's reason"

    name, file = _module(tmp_path, "def build(n, w):\n    return 1\n")
    missing = f"{name}_nope"
    with pytest.raises(UserError, match=rf"module {missing} is not in the code folder .*\(no {missing}\.py, no "):
        usercode.function("model.arch", f"{missing}:build")
    (file.parent / "json.py").write_text("def build(n, w):\n    pass\n")
    with pytest.raises(UserError, match=r"module json is Python's or an installed library's .* Fix: rename your"):
        usercode.function("model.arch", "json:build")


def test_a_user_model_with_the_wrong_output_or_a_failing_forward_pass_is_one_message(tmp_path: Path) -> None:
    from runner.train import torch_zoo
    from schemas import ModelSpec

    name, _ = _module(tmp_path, TORCHNETS)
    built = torch_zoo.user(ModelSpec(arch=f"{name}:build"), 4, 16, None)
    assert built.head == [] and built.model.training is False  # checked in eval mode; the trainer sets train mode
    assert sum(p.numel() for p in built.model.parameters()) == 3 * 8 * 9 + 8 + 8 * 4 + 4
    shapes, file = _module(tmp_path, TORCHNETS + "\n\ndef pooled(num_classes, w):\n    return Tiny(num_classes).conv\n")
    with pytest.raises(UserError, match=r"returns \(2, 8, 16, 16\) for a batch of 2 images, not logits of shape "
                                        r"\(2, 4\)\. Fix: make the model end in a layer of num_classes"):  # fmt: skip
        torch_zoo.user(ModelSpec(arch=f"{shapes}:pooled"), 4, 16, None)
    broken = TORCHNETS.replace("return self.fc(", "return self.nope(")
    name, file = _module(tmp_path, broken)
    line = broken.splitlines().index("        return self.nope(torch.relu(self.conv(x)).mean((2, 3)))") + 1
    with pytest.raises(UserError, match=rf"its forward pass on 2 images of 16 px raised AttributeError: .*nope.* at "
                                        rf"{re.escape(str(file))}:{line}\. Fix: correct your code there"):  # fmt: skip
        torch_zoo.user(ModelSpec(arch=f"{name}:build"), 4, 16, None)


# --- the user's dataset ------------------------------------------------------------------------------


def _returning(tmp_path: Path, value) -> DatasetSpec:
    """A dataset function that returns `value`."""
    name, _ = _module(tmp_path, "RESULT = None\n\n\ndef load(path):\n    return RESULT\n")
    importlib.import_module(name).RESULT = value
    return DatasetSpec(name=f"{name}:load", image_size=16)


def _good(n: int = 20) -> dict:
    rng = np.random.default_rng(0)
    return {"images": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), "labels": rng.integers(0, 3, n),
            "classes": ["a", "b", "c"]}  # fmt: skip


BAD_DATA = {
    "a list": ([1, 2], r"returned a list, not a dict of images, labels and classes\. Fix: return \{'images'"),
    "unknown key": ({**_good(), "imgs": 1}, r"a dict with the key 'imgs' \(did you mean 'images'\?\)\. Fix: use only"),
    "no labels": ({"images": _good()["images"], "classes": ["a", "b"]}, r"a dict without 'labels'"),
    "float images": (
        {**_good(), "images": _good()["images"].astype(np.float32)},
        r"'images' of dtype float32\. Fix: give 0-255 pixel values as uint8",
    ),
    "channels first": (
        {**_good(), "images": _good()["images"].transpose(0, 3, 1, 2).copy()},
        r"'images' of shape \(20, 3, 8, 8\)\. Fix: give a uint8 array \(N, H, W, 3\): for channels-first images, "
        r"images\.transpose\(0, 2, 3, 1\)",
    ),
    "grey": ({**_good(), "images": _good()["images"][..., 0]}, r"for grey levels, np\.repeat"),
    "a list of images": ({**_good(), "images": [[0]]}, r"'images' as a list\. Fix: give a numpy uint8 array"),
    "float labels": ({**_good(), "labels": np.zeros(20)}, r"'labels' of dtype float64\. Fix: give a numpy array of"),
    "column labels": ({**_good(), "labels": np.zeros((20, 1), int)}, r"'labels' of shape \(20, 1\)\. Fix: give one"),
    "short labels": ({**_good(), "labels": np.zeros(19, int)}, r"20 images and 19 labels\. Fix: give one label per"),
    "label out of range": (
        {**_good(), "labels": np.full(20, 3)},
        r"'labels' holding 3, and 'classes' names 3 classes \(labels 0 to 2\)",
    ),
    "negative label": ({**_good(), "labels": np.full(20, -1)}, r"'labels' holding -1"),
    "class names": ({**_good(), "classes": "abc"}, r"'classes' as a str\. Fix: give a list of class names"),
    "one class": ({**_good(), "labels": np.zeros(20, int), "classes": ["a"]}, r"1 class name\(s\) in 'classes'"),
    "repeated class": ({**_good(), "classes": ["a", "b", "a"]}, r"'classes' naming 'a' more than once"),
    "too few": (_good(5), r"5 image\(s\) of 8x8 px in 'images'\. Fix: give at least 10"),
    "test without labels": ({**_good(), "test_images": _good()["images"]}, r"'test_images' without 'test_labels'"),
    "test of another size": (
        {**_good(), "test_images": np.zeros((4, 9, 9, 3), np.uint8), "test_labels": np.zeros(4, int)},
        r"'test_images' of 9x9 px and 'images' of 8x8 px\. Fix: give both splits one size",
    ),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_a_user_dataset_with_bad_shapes_or_dtypes_is_one_message(tmp_path: Path, case: str) -> None:
    value, pattern = BAD_DATA[case]
    spec = _returning(tmp_path, value)
    with pytest.raises(UserError) as raised:
        data.load(spec, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"dataset.name {spec.name} ") and re.search(pattern, message), message
    assert "\n" not in message


def test_a_user_dataset_takes_the_seeded_split_or_keeps_its_own_test_split(tmp_path: Path) -> None:
    folder = write_code(tmp_path)
    usercode.use(folder)
    spec = DatasetSpec(name="own.data:load", val_fraction=0.1, test_fraction=0.2, seed=3)
    once, again = data.load(spec, tmp_path), data.load(spec, tmp_path)
    assert once.sizes() == {"train": 108, "val": 12, "test": 30} and once.class_names == ["red", "green", "blue"]
    assert np.array_equal(once.train_x, again.train_x) and np.array_equal(once.test_y, again.test_y)
    assert once.train_y.dtype == np.int64 and once.train_x.dtype == np.uint8
    reseeded = data.load(spec.model_copy(update={"seed": 4}), tmp_path)
    assert not np.array_equal(once.test_y, reseeded.test_y)
    own = data.load(DatasetSpec(name="own.data:load_with_test", limit=50), tmp_path)
    assert own.sizes()["test"] == round(30 * 50 / 135) and own.sizes()["train"] == 50


# --- CIFAR-100 ----------------------------------------------------------------------------------------


def test_cifar100_fine_and_coarse_labels_from_its_pickles(tmp_path: Path) -> None:
    folder = data.download_root(DatasetSpec(name="cifar100"), tmp_path) / "cifar-100-python"
    written = write_cifar100(folder, train=60, test=20)
    fine = data.load(DatasetSpec(name="cifar100"), tmp_path)
    coarse = data.load(DatasetSpec(name="cifar100", labels="coarse"), tmp_path)
    assert fine.num_classes == 100 and fine.class_names[42] == "fine42"
    assert coarse.num_classes == 20 and coarse.class_names[7] == "coarse7"
    assert fine.sizes() == coarse.sizes() == {"train": 54, "val": 6, "test": 20}  # the official test split, kept
    assert fine.test_y.tolist() == written["test"][b"fine_labels"]
    assert coarse.test_y.tolist() == written["test"][b"coarse_labels"]
    assert np.array_equal(fine.train_x, coarse.train_x) and np.array_equal(coarse.train_y, fine.train_y // 5)
    # Each row is the R, G and B planes of 32 x 32: the first test image's pixel (0, 1) is bytes 1, 1025, 2049.
    row = written["test"][b"data"][0]
    assert fine.test_x[0, 0, 1].tolist() == [row[1], row[1025], row[2049]] and fine.test_x.shape[1:] == (32, 32, 3)
    assert FINE_PER_COARSE == 5


def test_cifar100_labels_are_checked_and_a_substitute_drops_them(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"cifar100 has no labels 'fin' \(did you mean 'fine'\?\)"):
        DatasetSpec(name="cifar100", labels="fin")
    with pytest.raises(
        ValidationError, match=r"labels applies to datasets with several sets of labels .*cifar10 has one"
    ):
        DatasetSpec(name="cifar10", labels="fine")
    spec = JobSpec.model_validate(
        {"name": "j", "framework": "torch", "model": {"arch": "resnet18"},
         "dataset": {"name": "cifar100", "labels": "coarse", "fallback": "digits"}}
    )  # fmt: skip
    offline = Preparer(tmp_path / "cache", download=False, say=lambda m: None).prepare(spec)
    (sub,) = offline.substitutions
    assert sub.wanted == "cifar100" and "CIFAR-100 is not in" in sub.reason and "cifar-100-python.tar.gz" in sub.reason
    assert offline.spec.dataset.name == "digits" and offline.spec.dataset.labels is None
    JobSpec.model_validate_json(offline.spec.model_dump_json())  # the spec as run reads back (spec.json)
    spec.dataset.fallback = None
    missing = Preparer(tmp_path / "cache", download=False, say=lambda m: None).prepare(spec).missing
    assert "fix: extract https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into" in missing


def test_the_cifar100_suite_validates() -> None:
    proc = gridrun("validate", str(REPO / "jobs" / "cifar100.yaml"))
    assert proc.returncode == 0 and "suite 'cifar100', 5 job(s), profiles: cpu" in flat(proc.stdout), proc.stderr


def test_checkpoint_sizing_leaves_user_code_jobs_out_and_says_so(tmp_path: Path) -> None:
    """A user dataset's classes (the twin's head) and a user model's parameters are known only in the worker."""
    from runner.plan import disk

    def spec(name: str, arch: str, dataset: str) -> JobSpec:
        return JobSpec.model_validate(
            {
                "name": name,
                "framework": "torch",
                "model": {"arch": arch},
                "dataset": {"name": dataset, "image_size": 64},
            }
        )

    twin, own_data, own_model = (
        spec("t", "alexnet", "synthetic"),
        spec("d", "alexnet", "own.data:load"),
        spec("m", "torchnets:build", "cifar100"),
    )
    assert own_data.dataset.classes is None and own_model.dataset.classes == 100
    assert disk.need(own_data) is None and disk.need(own_model) is None and disk.need(twin) is not None
    line, short = disk.check([twin, own_data, own_model], tmp_path)
    assert line.startswith("checkpoints: the 1 job(s) to run write up to") and not short
    assert "besides 2 job(s) not counted here (user code, or a library not installed here)" in line


# --- identity: a code file changes, the jobs that use the folder run again ------------------------------


def test_a_changed_code_file_reruns_the_jobs_that_use_the_folder_and_only_those(tmp_path: Path) -> None:
    folder = write_code(tmp_path)
    suite = tmp_path / "ident.yaml"
    suite.write_text(suite_text("ident", (
        "  - {name: own-model, framework: torch, model: {arch: 'torchnets:build'}, dataset: {name: synthetic}}\n"
        "  - {name: own-data, framework: torch, model: {arch: alexnet}, dataset: {image_size: 64}}\n"
        "  - {name: builtin, framework: torch, model: {arch: alexnet}, dataset: {name: synthetic, image_size: 64}}\n"
    ), extra="  executor: process\n"))  # fmt: skip

    def plan() -> dict:
        loaded = load_suite(suite)
        preparer = Preparer(tmp_path / "cache", download=False, say=lambda m: None)
        store = ResultsStore.open(tmp_path / "results", create=True, check=False)
        jobs = make_plan(loaded, [preparer.prepare(s) for s in loaded.jobs()], NODES, store, say=lambda m: None)
        return {j.spec.name: j for j in jobs}

    first = plan()
    assert {n: j.action for n, j in first.items()} == dict.fromkeys(first, "run")
    assert first["own-model"].identity.user_code == first["own-data"].identity.user_code != ""
    assert first["builtin"].identity.user_code == "" and first["builtin"].code == ""
    for job in first.values():
        finish(job)
    assert first["own-data"].store.read_spec().code == str(folder.resolve())

    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "torchnets.cpython-311.pyc").write_bytes(b"bytecode")
    (folder / "own" / "stale.pyc").write_bytes(b"bytecode")
    assert {n: j.action for n, j in plan().items()} == dict.fromkeys(first, "skip"), "caches are not the code"

    (folder / "own" / "data.py").write_text(OWN_DATA + "\n# a comment is a change\n")
    changed = plan()
    assert {n: j.action for n, j in changed.items()} == {"own-model": "run", "own-data": "run", "builtin": "skip"}
    for name in ("own-model", "own-data"):
        assert changed[name].why.startswith("a file of your code: folder changed since this result"), changed[name].why
        changed[name].store.remove()  # as a re-run starts: the earlier result set aside
        finish(changed[name])
    (folder / "own" / "colours.json").write_text("[1, 2, 3]\n")  # a data file the code may read
    assert {n: j.action for n, j in plan().items()} == {"own-model": "run", "own-data": "run", "builtin": "skip"}


# --- every way to the worker: the process's path, a container's mount, a cluster's working_dir -----------


def test_the_code_folder_is_mounted_read_only_on_the_containers_path(tmp_path: Path, cache: Path) -> None:
    from runner.execute.docker import CODE_IN, container_config

    folder = write_code(tmp_path)
    paths = make_job(tmp_path, name="mounted", model={"arch": "torchnets:build"})
    spec_file = paths.read_spec().model_copy(update={"code": str(folder)})
    cfg = container_config(Launch(paths, cache, spec_file, "run-1"), "img:1", "sha256:x", "python", "1000:1000", 2**32)
    mounts = {m["Target"]: m for m in cfg["mounts"]}
    assert mounts[str(CODE_IN)]["Source"] == str(folder) and mounts[str(CODE_IN)]["ReadOnly"] is True
    assert cfg["environment"]["PYTHONPATH"] == cfg["environment"]["GRIDRUN_CODE"] == "/gridrun/code"
    without = container_config(Launch(paths, cache, paths.read_spec(), "r"), "img:1", "x", "python", "1000:1000", 2**32)
    assert str(CODE_IN) not in {m["Target"] for m in without["mounts"]} and "PYTHONPATH" not in without["environment"]


def test_a_code_folder_missing_on_the_node_fails_the_job_before_it_starts(tmp_path: Path, cache: Path) -> None:
    from runner.execute import get

    paths = make_job(tmp_path, name="elsewhere", model={"arch": "torchnets:build"})
    spec_file = paths.read_spec().model_copy(update={"code": str(tmp_path / "not here")})
    outcome = get("process").run(Launch(paths, cache, spec_file, "run-1"))
    assert (
        outcome.exit_code == 2
        and "the suite's code: folder" in outcome.reason
        and "is not on this node" in outcome.reason
    )
    assert "gridrun submit" in outcome.reason and not paths.log.exists()


def test_submit_stages_the_code_folder_where_the_suite_finds_it(tmp_path: Path) -> None:
    from runner.plan import identity

    study = tmp_path / "study"
    folder = write_code(study)
    (study / "jobs").mkdir()
    suite = study / "jobs" / "s.yaml"
    job = "  - {name: a, framework: torch, model: {arch: 'torchnets:build'}}\n"
    suite.write_text(suite_text("s", job, code=f"../{CODE_DIR}"))
    loaded = load_suite(suite)
    assert loaded.code == folder.resolve()
    stage = tmp_path / "stage"
    stage.mkdir()
    staged = stage_dir(stage, loaded)
    assert staged == "suite/jobs/s.yaml" and (stage / "runner" / "train" / "usercode.py").is_file()
    again = load_suite(stage / staged)
    assert again.code == (stage / "suite" / CODE_DIR).resolve()
    assert identity.folder_hash(again.code_files()) == identity.folder_hash(loaded.code_files())
    suite.write_text(suite_text("s", job, code=str(folder)))
    with pytest.raises(UserError, match=r"is an absolute path; `gridrun submit` sends the code folder .* Fix: write "
                                        r"code: relative to the suite file \(e\.g\. code: \.\./code with"):  # fmt: skip
        stage_dir(tmp_path / "stage2", load_suite(suite))


def _keras_count(folder: Path, classes: int) -> int:
    """What Keras itself counts for the user's model (in a process of its own: no torch beside TensorFlow)."""
    code = (
        f"import sys; sys.path.insert(0, {str(folder)!r}); import kerasnets; "
        f"print(kerasnets.build({classes}, None).count_params())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return int(proc.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.tensorflow
def test_user_models_and_data_train_in_both_frameworks_as_processes(tmp_path: Path) -> None:
    """`gridrun run` of a real suite: a torch and a Keras model of the user's on the user's data, one epoch."""
    import torch

    folder = write_code(tmp_path)
    sys.path.insert(0, str(folder))
    try:
        torchnets = importlib.import_module("torchnets")
        start = torchnets.Tiny(3)
        torch.save(start.state_dict(), tmp_path / "start.bin")  # any kind of file: the function reads it
        torch_count = sum(p.numel() for p in torchnets.Tiny(3).parameters())
    finally:
        sys.path.remove(str(folder))
    suite = tmp_path / "own.yaml"
    suite.write_text(suite_text("own", (
        "  - {name: own-torch, framework: torch, model: {arch: 'torchnets:build'}}\n"
        "  - {name: own-torch-weights, framework: torch, model: {arch: 'torchnets:build', weights: start.bin}}\n"
        "  - {name: own-tf, framework: tensorflow, model: {arch: 'kerasnets:build'}}\n"
    )))  # fmt: skip
    results = tmp_path / "results with 'quotes'"
    proc = gridrun("run", str(suite), "--results", str(results), "--cache", str(tmp_path / "cache"),
                   "--executor", "process", "--no-report")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    suite_paths = SuitePaths.of(results, "own")
    got = {name: RunResult.model_validate_json(suite_paths.job(name).result.read_text())
           for name in ("own-torch", "own-torch-weights", "own-tf")}  # fmt: skip
    assert got["own-torch"].total_parameters == got["own-torch"].trainable_parameters == torch_count
    assert got["own-tf"].total_parameters == got["own-tf"].trainable_parameters == _keras_count(folder, 3)
    for result in got.values():
        assert result.class_names == ["red", "green", "blue"] and len(result.epochs) == 1
        assert result.dataset_sizes == {"train": 108, "val": 12, "test": 30}
        assert len(result.confusion_matrix) == 3 and result.environment.executor == "process"
    # The same seeded split in both frameworks: the same test images, so the same support per class.
    supports = {n: [c.support for c in r.per_class_accuracy] for n, r in got.items()}
    assert supports["own-torch"] == supports["own-tf"] == supports["own-torch-weights"]
    log = suite_paths.job("own-torch-weights").log.read_text()
    assert f"torchnets: loaded {tmp_path / 'start.bin'}" in log and "model: torchnets:build, your own" in log
    spec = suite_paths.job("own-tf").read_spec()
    assert spec.code == str(folder.resolve()) and spec.identity is not None and spec.identity.user_code
    assert (suite_paths.job("own-torch").checkpoints / "last.pt").is_file()


@pytest.mark.slow
def test_each_user_code_error_fails_its_job_once_with_the_reason_and_the_others_go_on(tmp_path: Path) -> None:
    folder = write_code(tmp_path, BAD)
    suite = tmp_path / "bad.yaml"
    suite.write_text(suite_text("bad", (
        "  - {name: good, framework: torch, model: {arch: 'torchnets:build'}}\n"
        "  - {name: syntax, framework: torch, model: {arch: 'bad_syntax:build'}}\n"
        "  - {name: dependency, framework: torch, model: {arch: 'needs_missing:build'}}\n"
        "  - {name: missing-function, framework: torch, model: {arch: 'torchnets:biuld'}}\n"
        "  - {name: wrong-type, framework: tensorflow, model: {arch: 'wrong:build'}}\n"
        "  - {name: raises, framework: torch, model: {arch: 'raises:build'}}\n"
        "  - {name: bad-data, framework: torch, model: {arch: 'torchnets:build'}, dataset: {name: 'baddata:load'}}\n"
    ), resources=", max_retries: 2"))  # fmt: skip
    results = tmp_path / "results"
    proc = gridrun("run", str(suite), "--results", str(results), "--cache", str(tmp_path / "cache"),
                   "--executor", "process", "--no-report")  # fmt: skip
    assert proc.returncode == 1 and "6 of 7 job(s) did not succeed" in flat(proc.stderr), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    file = lambda name: re.escape(str(folder.resolve() / name))  # noqa: E731
    expected = {
        "syntax": rf"model\.arch bad_syntax:build: module bad_syntax does not compile: SyntaxError at "
        rf"{file('bad_syntax.py')}:1: expected ':'\. Fix: correct that line",
        "dependency": rf"module needs_missing \({file('needs_missing.py')}:2\) imports no_such_package_for_gridrun, "
        "which is not installed where the job runs",
        "missing-function": rf"module torchnets \({file('torchnets.py')}\) has no function 'biuld' \(did you mean "
        r"'build'\?\)\. Fix: define biuld there, or correct the name after ':'",
        "wrong-type": rf"model\.arch wrong:build \({file('wrong.py')}:1\) returned a dict, not a keras\.Model\. Fix: "
        "return the network",
        "raises": rf"model\.arch raises:build raised ValueError: no network for 3 classes at {file('raises.py')}:2, "
        r"called as build\(3, None\)\. Fix: correct your function",
        "bad-data": r"dataset\.name baddata:load returned 'images' of dtype float32\. Fix: give 0-255 pixel values",
    }
    suite_paths = SuitePaths.of(results, "bad")
    assert suite_paths.job("good").read_status().state == JobState.SUCCEEDED
    for name, pattern in expected.items():
        status = suite_paths.job(name).read_status()
        assert status.state == JobState.FAILED and status.exit_code == 2, (name, status)
        assert status.attempts == 1, f"{name}: a user-code error is not retried ({status.attempts} attempts)"
        assert status.reason.startswith("worker exited with code 2: error: "), status.reason
        assert re.search(pattern, status.reason), (name, status.reason)


@pytest.mark.docker
def test_a_user_model_and_dataset_train_in_a_container(tmp_path: Path) -> None:
    """The code folder, with quotes and spaces in its name, mounted read-only into the torch image."""
    from test_docker import _image, images

    client, why = images.try_connect(timeout=10)
    if client is None:
        pytest.skip(why)
    image = _image(client, "torch")
    folder = write_code(tmp_path)
    suite = tmp_path / "boxed.yaml"
    suite.write_text(suite_text("boxed", "  - {name: own, framework: torch, model: {arch: 'torchnets:build'}}\n"))
    results = tmp_path / "results with 'quotes'"
    proc = gridrun("run", str(suite), "--results", str(results), "--cache", str(tmp_path / "cache"),
                   "--executor", "docker", "--no-report")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = SuitePaths.of(results, "boxed").job("own")
    result = paths.read_result()
    assert result.environment.executor == "docker" and result.environment.image == image
    assert result.class_names == ["red", "green", "blue"] and result.total_parameters == 3 * 8 * 9 + 8 + 8 * 3 + 3
    assert paths.read_spec().code == str(folder.resolve())
    assert not any(folder.rglob("__pycache__")), "the folder is read-only in the container: nothing is written there"


@pytest.mark.slow
@pytest.mark.cluster
def test_submit_sends_the_code_folder_and_the_cluster_imports_from_its_copy(tmp_path: Path) -> None:
    """`gridrun submit` to a real Ray head (token on): the job's driver finds the code folder in the working_dir
    Ray unpacked, and the worker imports the user's model and data from there, not from this machine's folder."""
    from raycluster import RayCluster

    token = "gridrun-usercode-token-" + "7" * 24
    head = RayCluster(tmp_path / "cluster", token=token)
    try:
        head.start_head(cpus=2, gpus=0)
        env = {"HOME": str(head.home), "RAY_AUTH_TOKEN": token, "RAY_AUTH_TOKEN_PATH": "", "RAY_AUTH_MODE": ""}
        study = tmp_path / "study"
        folder = write_code(study)
        (study / "jobs").mkdir()
        suite = study / "jobs" / "sent.yaml"
        suite.write_text(suite_text("sent", "  - {name: own, framework: torch, model: {arch: 'torchnets:build'}}\n",
                                    code=f"../{CODE_DIR}"))  # fmt: skip
        sub = gridrun("submit", str(suite), "--address", head.jobs_api, "--executor", "process", env=env)
        assert sub.returncode == 0, sub.stdout + sub.stderr
        sid = sub.stdout.splitlines()[0].strip()
        follow = gridrun("logs", sid, "--follow", "--address", head.jobs_api, env=env, timeout=600)
        assert follow.returncode == 0 and "all 1 job(s) done" in follow.stdout, follow.stdout + follow.stderr
        paths = SuitePaths.of(head.home / "gridrun-results" / sid, "sent").job("own")
        result, spec = paths.read_result(), paths.read_spec()
        assert result.class_names == ["red", "green", "blue"] and result.total_parameters == 3 * 8 * 9 + 8 + 8 * 3 + 3
        staged = Path(spec.code)
        assert staged != folder.resolve() and staged.name == CODE_DIR and staged.parent.name == "suite"
        assert not any(folder.rglob("__pycache__")), "the worker imported the cluster's copy, not this folder"
    finally:
        head.stop()
