"""The plan: fit against nodes, declared substitutes, skip by spec hash, checkpoint disk."""

import re
from pathlib import Path

import pytest
from conftest import REPO, gridrun

from runner.errors import UserError
from runner.plan import disk, fit_problem, make_plan
from runner.plan.nodes import Node
from runner.prepare import Preparer
from runner.store import ResultsStore
from runner.store.layout import write_json
from runner.suite import load_suite
from schemas import JobSpec, JobState, RunStatus

NODES = [Node("n1", "host1", cpus=8, gpus=2, memory_gb=32), Node("n2", "host2", cpus=2, gpus=0, memory_gb=8)]

SUITE = """\
suite: p
defaults:
  dataset: {name: cifar10, image_size: 64}
  resources: {gpus: 1, cpus: 1}
  executor: process
jobs:
  - {name: declared, framework: torch, model: {arch: alexnet, weights: imagenet, weights_fallback: none},
     dataset: {fallback: digits}}
  - {name: undeclared, framework: torch, model: {arch: alexnet}}
  - {name: digits, framework: torch, model: {arch: alexnet}, dataset: {name: digits}}
"""


def plan_of(loaded, specs: list[JobSpec], results: Path, cache: Path, say=lambda m: None):
    """The plan as `gridrun plan` makes it: inputs previewed (nothing downloaded), then planned."""
    preparer = Preparer(cache, download=False, say=say)
    store = ResultsStore.open(results, create=True, check=False)
    return make_plan(loaded, [preparer.prepare(s) for s in specs], NODES, store, say=say)


@pytest.fixture
def loaded(tmp_path: Path):
    path = tmp_path / "p.yaml"
    path.write_text(SUITE)
    return load_suite(path)


def test_fit_names_what_is_missing(loaded) -> None:
    job = loaded.jobs()[0].model_copy(deep=True)
    assert fit_problem(job, NODES) == ""
    job.resources.gpus = 3
    assert fit_problem(job, NODES) == (
        "needs 3 GPU(s) and 1 CPU(s) for its 3 replicas; the largest node has 2 GPU(s) and 8 CPU(s)"
    )


def test_unfit_job_refuses_the_whole_plan_before_anything_is_written(loaded, tmp_path: Path) -> None:
    specs = loaded.jobs()
    specs[1].resources.gpus = 3
    with pytest.raises(UserError, match=r"(?s)undeclared: needs 3 GPU\(s\).*Fix:"):
        plan_of(loaded, specs, tmp_path / "results", tmp_path / "cache")
    assert not (tmp_path / "results").exists()


def test_declared_substitutes_and_missing_inputs(loaded, tmp_path: Path) -> None:
    said: list[str] = []
    plan = plan_of(loaded, loaded.jobs(), tmp_path / "r", tmp_path / "cache", say=said.append)
    by = {p.spec.name: p for p in plan}
    declared = by["declared"]
    assert declared.action == "run"
    assert declared.spec.dataset.name == "digits" and declared.spec.model.weights == "none"
    assert [(s.kind, s.wanted, s.used) for s in declared.substitutions] == [
        ("dataset", "cifar10", "digits"),
        ("weights", "imagenet", "none"),
    ]
    assert any("SUBSTITUTE job declared: dataset digits stands in for cifar10" in m for m in said)
    undeclared = by["undeclared"]
    assert undeclared.action == "fail"
    assert "cifar-10-batches-py" in undeclared.why and "could not be downloaded" in undeclared.why
    assert "fix: extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz into" in undeclared.why
    assert by["digits"].action == "run" and by["digits"].substitutions == []


def test_skip_only_with_same_hash_and_a_result(loaded, tmp_path: Path) -> None:
    args = (loaded, loaded.jobs(), tmp_path / "r", tmp_path / "cache")
    first = {p.spec.name: p for p in plan_of(*args)}["digits"]
    write_json(first.store.local.status, RunStatus(state=JobState.SUCCEEDED, spec_hash=first.spec_hash))
    again = {p.spec.name: p for p in plan_of(*args)}["digits"]
    assert again.action == "run", "no result.json: it cannot be skipped"
    first.store.local.result.write_text("{}")  # present but invalid: still not done
    again = {p.spec.name: p for p in plan_of(*args)}["digits"]
    assert again.action == "run"
    write_json(first.store.local.status, RunStatus(state=JobState.FAILED, spec_hash=first.spec_hash))
    again = {p.spec.name: p for p in plan_of(*args)}["digits"]
    assert again.action == "run" and again.why.startswith("re-run: result.json is not what gridrun writes")
    first.store.local.result.unlink()
    again = {p.spec.name: p for p in plan_of(*args)}["digits"]
    assert (again.action, again.why) == ("run", "resume after failed")
    write_json(first.store.local.status, RunStatus(state=JobState.FAILED, spec_hash="other"))
    again = {p.spec.name: p for p in plan_of(*args)}["digits"]
    assert again.why == "spec changed"


def test_cifar10_from_a_pickle_folder_is_used_without_substitute(loaded, tmp_path: Path) -> None:
    import pickle

    import numpy as np

    from runner.train import data

    folder = tmp_path / "cache" / "datasets" / "cifar10" / data.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in data.CIFAR10_FILES[:-1]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, 20))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    plan = plan_of(loaded, loaded.jobs(), tmp_path / "r", tmp_path / "cache")
    by = {p.spec.name: p for p in plan}
    assert by["undeclared"].action == "run" and by["declared"].spec.dataset.name == "cifar10"
    splits = data.load(by["undeclared"].spec.dataset, tmp_path / "cache")
    assert splits.sizes() == {"train": 90, "val": 10, "test": 20} and splits.class_names[3] == "c3"
    assert splits.train_x.shape[1:] == (32, 32, 3) and splits.train_x.dtype == np.uint8


# --- checkpoint disk -------------------------------------------------------------------------------

ALEXNET_10 = 57_044_810  # torchvision AlexNet with a 10-class head, every parameter trainable


def _spec(**overrides) -> JobSpec:
    base = {"name": "j", "framework": "torch", "model": {"arch": "alexnet"}, "dataset": {"name": "digits"}}
    return JobSpec.model_validate(base | overrides)


def test_checkpoint_size_follows_the_model_and_the_optimizer() -> None:
    adam = disk.need(_spec(train={"optimizer": {"name": "adam"}}))
    assert (adam.last, adam.best) == (4 * 3 * ALEXNET_10, 4 * ALEXNET_10)  # weights + two Adam slots
    sgd = disk.need(_spec(train={"optimizer": {"name": "sgd", "momentum": 0.9}}))
    assert sgd.last == 4 * 2 * ALEXNET_10
    plain = disk.need(_spec(train={"optimizer": {"name": "sgd", "momentum": 0}}))
    assert plain.last == plain.best == 4 * ALEXNET_10
    frozen = disk.need(_spec(model={"arch": "alexnet", "freeze_backbone": True}, train={"optimizer": {"name": "adam"}}))
    head = 256 * 6 * 6 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10
    assert frozen.last == 4 * (ALEXNET_10 + 2 * head)


@pytest.mark.runs
def test_plan_says_when_the_checkpoints_do_not_fit(small_disk: Path, tmp_path: Path) -> None:
    """16 MiB cannot hold a smoke job's AlexNet checkpoints: the plan says so, with the fix; it still exits 0."""
    args = ["plan", str(REPO / "jobs/smoke.yaml"), "--cache", str(tmp_path / "cache"), "--executor", "process"]
    proc = gridrun(*args, "--results", str(small_disk / "results"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())
    assert re.search(r"checkpoints: the \d job\(s\) to run write up to [\d.]+ [MG]B \(largest: smoke-\w+", text), text
    assert "free under" in text and "Not enough" in text and "Fix: free space there, or give --results" in text
    roomy = gridrun(*args, "--results", str(tmp_path / "results"))
    assert roomy.returncode == 0 and "checkpoints: the" in roomy.stdout and "Not enough" not in roomy.stdout
