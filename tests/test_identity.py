"""A run's identity: the plan re-runs a finished job when its spec, the worker's code, a framework version
or the image changed, and says which; with everything the same it skips it.

Each finished job is written the way a run leaves it: spec.json by the driver's own writer, a succeeded
status.json and a valid result.json. No training: these tests plan only.
"""

import importlib.metadata
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from jobhelp import spec_file
from rich.console import Console

from runner.execute import Choice, images
from runner.plan import PlannedJob, identity, make_plan, plan_table
from runner.plan.nodes import Node
from runner.prepare import Preparer
from runner.schedule.driver import Driver
from runner.store import ResultsStore
from runner.store.layout import write_json
from runner.suite import load_suite
from schemas import (
    ClassAccuracy,
    Environment,
    EpochRecord,
    JobSpec,
    JobState,
    RunResult,
    RunStatus,
    SpecFile,
    Timing,
)

NODES = [Node("n1", "host1", cpus=8, gpus=0, memory_gb=32)]
SUITE = """\
suite: ident
jobs:
  - name: j
    framework: torch
    model: {{arch: alexnet}}
    dataset: {{name: synthetic, image_size: 64}}
    train: {{optimizer: {{lr: {lr}}}}}
    executor: process
"""


@pytest.fixture(autouse=True)
def fresh_code_hash() -> Iterator[None]:
    """The code hash is kept per process; these tests change files under one root and must see it."""
    identity._code_hash.cache_clear()
    yield
    identity._code_hash.cache_clear()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the runner and schemas packages, for tests that edit the code."""
    root = tmp_path / "tree"
    for package in ("runner", "schemas"):
        shutil.copytree(identity.ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def plan(tmp_path: Path, lr: float = 0.01, force: bool = False) -> PlannedJob:
    """`gridrun plan` of the one-job suite into tmp_path/results."""
    path = tmp_path / "ident.yaml"
    path.write_text(SUITE.format(lr=lr))
    loaded = load_suite(path)
    preparer = Preparer(tmp_path / "cache", download=False, say=lambda m: None)
    store = ResultsStore.open(tmp_path / "results", create=True, check=False)
    (job,) = make_plan(
        loaded, [preparer.prepare(s) for s in loaded.jobs()], NODES, store, force=force, say=lambda m: None
    )
    return job


def result_of(spec: JobSpec, spec_hash: str) -> RunResult:
    names = [str(i) for i in range(10)]
    epoch = EpochRecord(
        epoch=1, train_loss=1.0, train_accuracy=0.5, val_accuracy=0.5, test_accuracy=0.5, lr=0.01,
        epoch_seconds=1.0, images_per_second=100.0,
    )  # fmt: skip
    return RunResult(
        suite="ident", job=spec.name, spec_hash=spec_hash, spec=spec,
        dataset_sizes={"train": 10, "val": 10, "test": 10}, class_names=names, epochs=[epoch],
        final_test_accuracy=0.5, final_val_accuracy=0.5, best_epoch=1, best_val_accuracy=0.5, best_test_accuracy=0.5,
        per_class_accuracy=[ClassAccuracy(name=n, accuracy=0.5, support=1) for n in names],
        confusion_matrix=[[1 if i == j else 0 for j in range(10)] for i in range(10)],
        trainable_parameters=1, total_parameters=1,
        timing=Timing(data_seconds=0, train_seconds=1, eval_seconds=0, total_seconds=1), images_per_second=100.0,
        environment=Environment(framework="torch", framework_version="2", python_version="3.11", device="cpu",
                                device_name="cpu", mixed_precision="off", hostname="h"),
    )  # fmt: skip


def finish(job: PlannedJob) -> None:
    """Leave the job as a succeeded run does: spec.json from the driver's writer, status, result."""
    driver = Driver.__new__(Driver)  # its writer only: no Ray cluster needed
    driver.suite, driver.profile, driver._specs = SimpleNamespace(name="ident"), None, {}
    driver._write_spec(job)
    write_json(job.store.local.status, RunStatus(state=JobState.SUCCEEDED, spec_hash=job.spec_hash))
    write_json(job.store.local.result, result_of(job.spec, job.spec_hash))


def fake_versions(monkeypatch: pytest.MonkeyPatch, torch: str) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda p: torch if p == "torch" else real(p))


def test_same_identity_is_skipped_and_recorded_in_spec_json(tmp_path: Path, monkeypatch) -> None:
    fake_versions(monkeypatch, "2.14.1")
    first = plan(tmp_path)
    assert (first.action, first.why) == ("run", "new")
    finish(first)
    recorded = first.store.read_spec().identity
    assert recorded == first.identity and first.spec_hash == recorded.digest()
    assert recorded.image == "" and recorded.versions["torch"] == "2.14.1"
    assert set(recorded.versions) >= {"torchvision", "numpy", "python"}
    again = plan(tmp_path)
    assert (again.action, again.why) == ("skip", f"done with the same spec ({first.spec_hash})")
    forced = plan(tmp_path, force=True).why
    assert forced.startswith("forced (--force); the earlier result is kept in _previous/j-"), forced


def test_changed_trainer_code_reruns(tmp_path: Path, tree: Path, monkeypatch) -> None:
    monkeypatch.setattr(identity, "ROOT", tree)
    finish(plan(tmp_path))
    trainer = tree / "runner" / "train" / "torch_trainer.py"
    trainer.write_bytes(trainer.read_bytes() + b"\n# changed\n")
    identity._code_hash.cache_clear()  # as a new gridrun process would
    again = plan(tmp_path)
    assert (again.action, _why(again)) == ("run", "trainer code changed since this result")


def test_changed_framework_version_reruns(tmp_path: Path, monkeypatch) -> None:
    fake_versions(monkeypatch, "2.13.0")
    finish(plan(tmp_path))
    fake_versions(monkeypatch, "2.14.1")
    again = plan(tmp_path)
    assert (again.action, _why(again)) == ("run", "torch 2.13.0 → 2.14.1")


def test_changed_lr_names_the_field_in_the_plan_table(tmp_path: Path) -> None:
    finish(plan(tmp_path, lr=0.01))
    again = plan(tmp_path, lr=0.02)
    assert (again.action, _why(again)) == ("run", "spec changed: train.optimizer.lr 0.01 → 0.02")
    console = Console(record=True, width=400)
    console.print(plan_table([again], "plan"))
    assert "spec changed: train.optimizer.lr 0.01 → 0.02" in console.export_text()


def test_spec_changes_show_three_fields_cut_short() -> None:
    old = JobSpec.model_validate({"name": "j", "framework": "torch", "model": {"arch": "alexnet"}})
    new = old.model_copy(deep=True)
    new.description, new.image, new.executor = "x" * 100, "mine:1", "docker"
    new.train.epochs, new.resources.custom = 20, {"A100": 1.0}
    assert identity.spec_changes(old, new) == (
        f'description "" → {"x" * 23}…, executor auto → docker, image null → mine:1 (+2 more)'
    )
    placed = old.model_copy(deep=True)
    placed.resources.custom = {"A100": 1.0}
    assert identity.spec_changes(old, placed) == "resources.custom.A100 unset → 1.0"


def test_spec_json_without_identity_still_reads_and_reruns_once(tmp_path: Path) -> None:
    first = plan(tmp_path)
    old = spec_file(first.spec, "ident", "old-hash")  # written before identities were kept
    write_json(first.store.local.spec, old)
    assert SpecFile.model_validate_json(first.store.local.spec.read_text()).identity is None
    write_json(first.store.local.status, RunStatus(state=JobState.SUCCEEDED, spec_hash="old-hash"))
    write_json(first.store.local.result, result_of(first.spec, "old-hash"))
    again = plan(tmp_path)
    assert (again.action, _why(again)) == ("run", "no identity recorded with this result (an older gridrun's)")


def _why(job) -> str:
    """The plan's reason without the note on where the earlier result is kept."""
    why, _, kept = job.why.partition("; the earlier result is kept in _previous/")
    assert kept, job.why
    return why


def test_code_hash_covers_the_worker_modules_only(tree: Path) -> None:
    files = identity.worker_files(tree)
    train = sorted(p.relative_to(tree).as_posix() for p in (tree / "runner" / "train").glob("*.py"))
    schemas = sorted(p.relative_to(tree).as_posix() for p in (tree / "schemas").glob("*.py"))
    store = [f"runner/store/{m}.py" for m in ("__init__", "layout", "lock", "storage", "sync")]
    assert files == sorted(["runner/__init__.py", "runner/errors.py", *store, *train, *schemas])
    before = identity.code_hash(tree)
    for unrelated in ("runner/report/tables.py", "runner/cli/app.py", "runner/plan/__init__.py"):
        (tree / unrelated).write_text((tree / unrelated).read_text() + "\n# unrelated\n")
    identity._code_hash.cache_clear()
    assert identity.code_hash(tree) == before
    for worker in ("runner/train/data.py", "runner/store/layout.py", "schemas/job.py"):
        original = (tree / worker).read_bytes()
        (tree / worker).write_bytes(original + b"\n# changed\n")
        identity._code_hash.cache_clear()
        assert identity.code_hash(tree) != before, worker
        (tree / worker).write_bytes(original)
    identity._code_hash.cache_clear()
    assert identity.code_hash(tree) == before


def test_docker_identity_is_the_image_and_its_labels(monkeypatch) -> None:
    image = SimpleNamespace(id="sha256:abc", attrs={}, labels={"gridrun.version.torch": "2.14.1", "other": "x"})
    client = SimpleNamespace(images=SimpleNamespace(get=lambda name: image if name == "gridrun-torch:t" else None))
    monkeypatch.setattr(images, "try_connect", lambda timeout: (client, ""))
    assert identity.runtime("torch", Choice("docker", "built", "gridrun-torch:t")) == (
        {"torch": "2.14.1"},
        "sha256:abc",
    )
    monkeypatch.setattr(images, "try_connect", lambda timeout: (None, "no daemon"))
    assert identity.runtime("torch", Choice("docker", "to build", "gridrun-torch:t")) == ({}, "")
