"""Every entry of schemas.registry has its code, and the code agrees with the declaration.

TensorFlow is imported in a subprocess only (importing torchvision after it in one process crashes).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from fakecifar import write_cifar10, write_cifar100

from runner.execute import base, get
from runner.train import data, frameworks
from runner.train.declared import load
from schemas import DatasetSpec, JobSpec
from schemas.registry import ARCHS, DATASETS, EXECUTORS, FRAMEWORKS, Dataset


def test_each_framework_has_a_dockerfile_and_its_suffixes_are_its_own() -> None:
    for framework in FRAMEWORKS.values():
        assert (REPO / framework.dockerfile).is_file(), framework.dockerfile
        assert framework.image == f"gridrun-{framework.name}"  # runner.execute.images tags it so
    suffixes = [s for f in FRAMEWORKS.values() for s in f.weights_suffixes]
    assert len(suffixes) == len(set(suffixes)), "a weights suffix belongs to one framework"


def test_the_torch_trainer_and_models_cover_every_architecture() -> None:
    assert callable(frameworks.get("torch"))
    assert set(load(FRAMEWORKS["torch"].models).ARCHS) == set(ARCHS)


def test_every_other_framework_covers_every_architecture() -> None:
    """Each in a process of its own: a trainer may import a framework that cannot share one with torch."""
    for name, framework in FRAMEWORKS.items():
        if name == "torch":
            continue
        code = (
            "import json, sys\n"
            "from runner.train import frameworks\n"
            "from runner.train.declared import load\n"
            f"assert callable(frameworks.get({name!r}))\n"
            f"print(json.dumps(sorted(load({framework.models!r}).ARCHS)))\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == sorted(ARCHS), name


@pytest.mark.parametrize("name", [n for n, d in DATASETS.items() if d.classes is not None])
def test_each_loader_gives_the_declared_classes(name: str, tmp_path: Path) -> None:
    declared = DATASETS[name]
    spec = DatasetSpec(name=name, synthetic_size=200)
    if declared.download is not None:
        write = {"cifar10": write_cifar10, "cifar100": write_cifar100}[name]
        write(data.download_root(spec, tmp_path) / declared.download.folder)
        assert data.missing_files(spec, tmp_path) == []
    splits = data.load(spec, tmp_path)
    assert splits.num_classes == declared.classes == spec.classes
    for labels, classes in declared.label_sets.items():  # each set of labels it offers
        assert data.load(DatasetSpec(name=name, labels=labels), tmp_path).num_classes == classes


def test_a_dataset_of_the_users_folder_counts_its_class_folders(tmp_path: Path) -> None:
    from runner.plan import models

    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    (tmp_path / ".hidden").mkdir()
    spec = JobSpec.model_validate(
        {"name": "j", "framework": "torch", "model": {"arch": "resnet18"},
         "dataset": {"name": "imagefolder", "path": str(tmp_path)}}
    )  # fmt: skip
    assert models.classes(spec) == 2 == len(data.class_folders(tmp_path))


def test_each_executor_is_its_declared_class() -> None:
    for name in EXECUTORS:
        executor = get(name)
        assert isinstance(executor, base.Executor) and executor.name == name


def test_torchvision_weights_files_carry_their_checksum() -> None:
    for arch in ARCHS.values():
        for framework, source in arch.imagenet.items():
            assert framework in FRAMEWORKS
            assert source.sha256_prefix in source.filename and (source.sha256_prefix or source.md5)


def test_a_dataset_declared_later_is_known_to_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names are checked against the registry when a spec is validated, not when the schema is made."""
    spec = {"name": "j", "framework": "torch", "model": {"arch": "alexnet"}, "dataset": {"name": "faces"}}
    with pytest.raises(ValueError, match="unknown dataset 'faces'"):
        JobSpec.model_validate(spec)
    monkeypatch.setitem(DATASETS, "faces", Dataset("faces", "a test's", "runner.train.data:load_digits", classes=10))
    assert JobSpec.model_validate(spec).dataset.name == "faces"
