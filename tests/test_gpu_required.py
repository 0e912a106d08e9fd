"""A reserved GPU that the framework cannot use is an error at the job's start, never a silent CPU run; the CPU
stands in only where a job declares resources.gpu_fallback: cpu, announced and recorded. On this machine Ray's
GPUs are logical (`--gpus`), so both cases are real: the frameworks see no GPU."""

import json
import re
from pathlib import Path

import pytest
from conftest import gridrun
from jobhelp import make_job, run_worker, worker_env

from runner.store.layout import SuitePaths
from schemas import JobState

pytestmark = pytest.mark.runs  # starts Ray or a worker that trains: not in `make test-fast`

SUITE = """\
suite: needs-gpu
defaults:
  dataset: {name: synthetic, image_size: 64, synthetic_size: 120}
  model: {arch: alexnet, classifier_width: 16}
  train: {epochs: 1, batch_size: 32}
  resources: {gpus: 1, cpus: 1, max_retries: 2}
jobs:
"""


def _one_job(paths, cause: str) -> None:
    """The job failed at its start, once, with the cause and the fix in status.json, and trained nothing."""
    status = paths.read_status()
    assert status.state == JobState.FAILED and status.attempts == 1, "a missing GPU is not retried"
    assert status.exit_code == 2
    assert "the job reserved 1 GPU(s) but" in status.reason and cause in status.reason, status.reason
    assert "Fix: " in status.reason and "resources.gpus: 0" in status.reason, status.reason
    assert "train on the CPU when no GPU is usable (log: " in status.reason, "the whole message, not cut"
    assert not paths.result.exists() and not paths.progress.exists()
    assert "Traceback" not in paths.log.read_text()


@pytest.fixture(scope="module")
def refused(tmp_path_factory: pytest.TempPathFactory) -> tuple[SuitePaths, str]:
    """One `gridrun run` on the embedded Ray with two logical GPUs: a torch and a TensorFlow job that reserve one."""
    root = tmp_path_factory.mktemp("needs-gpu")
    suite = root / "needs-gpu.yaml"
    suite.write_text(SUITE + "  - {name: torch-gpu, framework: torch}\n  - {name: tf-gpu, framework: tensorflow}\n")
    results = root / "results"
    proc = gridrun("run", str(suite), "--results", str(results), "--gpus", "2", "--executor", "process",
                   "--cache", str(root / "cache"), "--no-report")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    return SuitePaths.of(results, "needs-gpu"), proc.stdout + proc.stderr


@pytest.mark.slow  # with the TensorFlow one, among the long tests: the one Ray run of the fixture serves both
def test_a_torch_job_whose_gpu_torch_cannot_see_fails_at_start(refused: tuple[SuitePaths, str]) -> None:
    suite, output = refused
    # torch's own words for why: this venv's torch is a CUDA build, and the machine has no driver.
    _one_job(suite.job("torch-gpu"), "torch")
    reason = suite.job("torch-gpu").read_status().reason
    assert re.search(r"CUDA_VISIBLE_DEVICES=[01], no /dev/nvidia", reason), "the GPU Ray assigned is named"
    assert "nvidia-smi" in reason and "torch-gpu" in output


@pytest.mark.slow
@pytest.mark.tensorflow
def test_a_tensorflow_job_whose_gpu_tensorflow_cannot_see_fails_at_start(refused: tuple[SuitePaths, str]) -> None:
    _one_job(refused[0].job("tf-gpu"), "tf.config.list_physical_devices('GPU') is empty")


@pytest.mark.parametrize("framework", ["torch", pytest.param("tensorflow", marks=pytest.mark.tensorflow)])
def test_gpu_fallback_cpu_trains_on_the_cpu_and_records_it(tmp_path: Path, cache: Path, framework: str) -> None:
    paths = make_job(tmp_path, framework, name=f"fallback-{framework}", model={"classifier_width": 16},
                     dataset={"limit": 40}, resources={"gpus": 0.5, "gpu_fallback": "cpu"})  # fmt: skip
    # As an executor starts it: the GPU Ray assigned visible, a share of it.
    proc = run_worker(paths, cache, env={**worker_env(), "CUDA_VISIBLE_DEVICES": "1", "GRIDRUN_GPU_FRACTION": "0.5"})
    assert proc.returncode == 0, proc.stdout
    assert "SUBSTITUTE device: cpu stands in for 0.5 GPU(s)" in proc.stdout
    result = paths.read_result()
    assert result.environment.device == "cpu"
    (sub,) = result.substitutions
    assert (sub.kind, sub.wanted, sub.used) == ("device", "0.5 GPU(s)", "cpu")
    assert "CUDA_VISIBLE_DEVICES=1" in sub.reason and "resources.gpu_fallback: cpu" in sub.reason
    # The report's substitutions table reads result.json's list: the stand-in is in the file itself.
    assert json.loads(paths.result.read_text())["substitutions"][0]["kind"] == "device"


def test_the_message_names_the_fix_when_run_by_hand(tmp_path: Path, cache: Path) -> None:
    """The worker alone (as a container runs it): exit 2, one error line, no traceback."""
    paths = make_job(tmp_path, name="by-hand", model={"classifier_width": 16}, resources={"gpus": 1})
    env = {k: v for k, v in worker_env().items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = run_worker(paths, cache, env=env)
    assert proc.returncode == 2, proc.stdout
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "CUDA_VISIBLE_DEVICES=(unset)" in errors[0], proc.stdout
    assert "Traceback" not in proc.stdout and not paths.result.exists()
