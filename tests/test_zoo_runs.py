"""Zoo models through `gridrun run`: one epoch each, in a process and in the framework's container, with
the parameter counts the libraries themselves report for the same model and head."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import gridrun

from runner.store.layout import SuitePaths
from schemas import JobState, RunResult

CLASSES = 10
SUITE = {
    "suite": "zoo",
    "defaults": {
        "dataset": {"name": "synthetic", "image_size": 32, "synthetic_size": 160},
        "model": {"weights": "none"},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 80},
        "resources": {"gpus": 0, "cpus": 1},
    },
    "jobs": [
        {"name": "mnv3-torch", "framework": "torch", "model": {"arch": "torchvision.mobilenet_v3_small"}},
        {
            "name": "r50-frozen",
            "framework": "torch",
            "model": {"arch": "torchvision.resnet50", "freeze_backbone": True},
        },
        {"name": "timm-r18", "framework": "torch", "model": {"arch": "timm.resnet18"}},
        {"name": "mnv3-keras", "framework": "tensorflow", "model": {"arch": "keras.MobileNetV3Small"}},
    ],
}


def _library_counts(arch: str, frozen: bool) -> tuple[int, int]:
    """(trainable, total) as the library counts its own model with a head of CLASSES, without gridrun."""
    prefix, name = arch.split(".", 1)
    if prefix == "keras":
        import keras

        model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=CLASSES)
        # Keras counts BatchNorm's moving statistics as weights; PyTorch (and gridrun) call them buffers.
        stats = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
        total = model.count_params() - stats
        return total, total
    import timm
    import torch
    import torchvision

    with torch.device("meta"):
        model = (
            torchvision.models.get_model(name, num_classes=CLASSES)
            if prefix == "torchvision"
            else timm.create_model(name, num_classes=CLASSES)
        )
    total = sum(p.numel() for p in model.parameters())
    if not frozen:
        return total, total
    head = model.get_classifier() if prefix == "timm" else model.fc
    return sum(p.numel() for p in head.parameters()), total


def _run(tmp_path: Path, executor: str, jobs: list[dict]) -> SuitePaths:
    suite = {**SUITE, "jobs": jobs}
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    results = tmp_path / "results"
    proc = gridrun("run", str(tmp_path / "zoo.yaml"), "--results", str(results), "--cache", str(tmp_path / "cache"),
                   "--executor", executor)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return SuitePaths.of(results, "zoo")


def _check(suite: SuitePaths, jobs: list[dict], executor: str) -> None:
    for job in jobs:
        paths = suite.job(job["name"])
        assert paths.read_status().state == JobState.SUCCEEDED, paths.log.read_text()
        result = RunResult.model_validate_json(paths.result.read_text())
        assert result.environment.executor == executor
        assert [e.epoch for e in result.epochs] == [1] and len(result.per_class_accuracy) == CLASSES
        model = job["model"]
        trainable, total = _library_counts(model["arch"], model.get("freeze_backbone", False))
        assert (result.trainable_parameters, result.total_parameters) == (trainable, total), job["name"]


@pytest.mark.slow
def test_zoo_models_train_one_epoch_as_processes(tmp_path: Path) -> None:
    suite = _run(tmp_path, "process", SUITE["jobs"])
    _check(suite, SUITE["jobs"], "process")


@pytest.mark.docker
@pytest.mark.slow  # a minute and a half: three zoo models, each in its framework's container
def test_zoo_models_train_one_epoch_in_containers(tmp_path: Path) -> None:
    from test_docker import daemon_or_skip

    daemon_or_skip()
    jobs = [j for j in SUITE["jobs"] if j["name"] in ("timm-r18", "mnv3-keras")]
    suite = _run(tmp_path, "docker", jobs)
    _check(suite, jobs, "docker")
