"""End to end: `gridrun run jobs/smoke.yaml` on the CPU, read back as a user would, then re-run."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO, gridrun
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.store.layout import SuitePaths
from runner.train.common import TAGS
from schemas import JobState, RunResult, SpecFile

pytestmark = pytest.mark.runs  # starts Ray or a worker that trains: not in `make test-fast`

JOBS = ("smoke-torch", "smoke-tf")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("e2e")
    results, cache = root / "results", root / "cache"
    proc = gridrun(
        "run", str(REPO / "jobs/smoke.yaml"), "--results", str(results), "--cache", str(cache), "--executor", "process"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return results, cache, proc.stdout


def test_every_result_file_is_there_and_valid(smoke) -> None:
    results, _, _ = smoke
    suite = SuitePaths.of(results, "smoke")
    assert suite.suite_file.read_text() == (REPO / "jobs/smoke.yaml").read_text()
    summary = json.loads(suite.summary.read_text())
    assert {j["job"]: j["state"] for j in summary["jobs"]} == dict.fromkeys(JOBS, "succeeded")
    for name in JOBS:
        paths = suite.job(name)
        spec = SpecFile.model_validate_json(paths.spec.read_text())
        status = paths.read_status()
        assert status.state == JobState.SUCCEEDED and status.exit_code == 0 and status.attempts == 1
        assert status.spec_hash == spec.spec_hash and status.started_at < status.finished_at
        result = RunResult.model_validate_json(paths.result.read_text())
        assert result.spec == spec.spec and result.spec_hash == spec.spec_hash
        assert [e.epoch for e in result.epochs] == [1, 2]
        for e in result.epochs:
            assert e.train_loss > 0 and 0 <= e.val_accuracy <= 1 and e.images_per_second > 0 and e.lr > 0
        assert len(result.class_names) == 10 and len(result.per_class_accuracy) == 10
        cm = result.confusion_matrix
        assert len(cm) == 10 and sum(map(sum, cm)) == result.dataset_sizes["test"]
        assert abs(sum(cm[i][i] for i in range(10)) / sum(map(sum, cm)) - result.final_test_accuracy) < 1e-6
        assert 1 <= result.best_epoch <= 2
        assert result.best_test_accuracy == result.epochs[result.best_epoch - 1].test_accuracy
        assert 0 < result.trainable_parameters <= result.total_parameters
        t = result.timing
        assert t.total_seconds >= t.train_seconds + t.eval_seconds > 0 and t.data_seconds > 0
        assert result.environment.framework == spec.spec.framework and result.environment.device == "cpu"
        assert result.environment.executor == "process"
        assert (paths.checkpoints / "best.pt").exists() or any(paths.checkpoints.glob("best*"))
        assert "epoch 2/2" in paths.log.read_text()


def test_tensorboard_reads_the_same_tags_from_both_frameworks(smoke) -> None:
    results, _, _ = smoke
    tags = {}
    for name in JOBS:
        acc = EventAccumulator(str(SuitePaths.of(results, "smoke").job(name).tb))
        acc.Reload()
        scalars = set(acc.Tags()["scalars"])
        assert set(TAGS.values()) <= scalars, f"{name}: {scalars}"
        assert [ev.step for ev in acc.Scalars("accuracy/val")] == [1, 2]
        assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
        tags[name] = scalars
    assert tags["smoke-torch"] == tags["smoke-tf"]


def test_second_run_skips_and_a_changed_spec_reruns(smoke, tmp_path: Path) -> None:
    results, cache, _ = smoke
    again = gridrun(
        "run",
        str(REPO / "jobs/smoke.yaml"),
        "--results",
        str(results),
        "--cache",
        str(cache),
        "--executor",
        "process",
        "--no-report",
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("done with the same spec") >= 2
    for name in JOBS:
        assert SuitePaths.of(results, "smoke").job(name).read_status().state == JobState.SKIPPED
    changed = tmp_path / "smoke.yaml"
    changed.write_text(
        (REPO / "jobs/smoke.yaml")
        .read_text()
        .replace(
            "  - name: smoke-tf\n    framework: tensorflow",
            "  - name: smoke-tf\n    framework: tensorflow\n    train: {epochs: 1}",
        )
    )
    plan = gridrun("plan", str(changed), "--results", str(results), "--cache", str(cache), "--executor", "process")
    assert plan.returncode == 0, plan.stderr
    lines = {ln.split("│")[1].strip(): ln for ln in plan.stdout.splitlines() if ln.count("│") > 5}
    assert "skip" in lines["smoke-torch"] and "run" in lines["smoke-tf"]
    assert "spec changed" in plan.stdout


def test_status_command_reads_the_results_folder(smoke) -> None:
    results, _, _ = smoke
    proc = gridrun("status", str(results))
    assert proc.returncode == 0
    assert "smoke/smoke-torch" in proc.stdout and "smoke/smoke-tf" in proc.stdout
    missing = gridrun("status", str(results.parent / "nothing"))
    assert missing.returncode == 2 and "does not exist. Fix:" in missing.stderr
    (results.parent / "empty").mkdir()
    empty = gridrun("status", str(results.parent / "empty"))
    assert empty.returncode == 2 and "holds no runs" in empty.stderr and "Traceback" not in empty.stderr


def test_failed_job_is_recorded_and_the_others_go_on(tmp_path: Path) -> None:
    suite = tmp_path / "mixed.yaml"
    weights = tmp_path / "missing.pth"
    suite.write_text(f"""\
suite: mixed
defaults:
  dataset: {{name: synthetic, image_size: 64, synthetic_size: 100}}
  model: {{arch: alexnet, classifier_width: 16}}
  train: {{epochs: 1, batch_size: 50}}
jobs:
  - {{name: good, framework: torch}}
  - {{name: bad, framework: torch, model: {{arch: alexnet, weights: {weights}}}}}
""")
    results = tmp_path / "results"
    proc = gridrun(
        "run",
        str(suite),
        "--results",
        str(results),
        "--cache",
        str(tmp_path / "c"),
        "--executor",
        "process",
        "--no-report",
    )
    assert proc.returncode == 1
    assert "1 of 2 job(s) did not succeed" in proc.stderr and "bad" in proc.stderr
    jobs = SuitePaths.of(results, "mixed")
    assert jobs.job("good").read_status().state == JobState.SUCCEEDED
    bad = jobs.job("bad").read_status()
    assert bad.state == JobState.FAILED and str(weights) in bad.reason and "does not exist" in bad.reason
    shutil.rmtree(results)
