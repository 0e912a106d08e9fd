"""The smoke suite with its results on a real S3 API (moto's server on 127.0.0.1), on the embedded Ray:
every verb against the URL, a second run that skips, a killed run that resumes from the bucket, and the
mistakes a user makes with storage URLs."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import REPO, gridrun
from raycluster import kill_trees
from s3server import KEY_ID, SECRET, S3Server
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.store import ResultsStore
from runner.train.common import TAGS
from schemas import JobState

pytestmark = pytest.mark.runs  # starts Ray or a worker that trains: not in `make test-fast`

JOBS = ("smoke-torch", "smoke-tf")
URL = "s3://smoke-bucket/study runs"


def s3_env(server: S3Server, tmp: Path) -> dict[str, str]:
    return {**server.env, "GRIDRUN_NODE_DIR": str(tmp / "node"), "GRIDRUN_SYNC_SECONDS": "1"}


@pytest.fixture(scope="module")
def smoke(s3server: S3Server, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("s3")
    s3server.make_bucket("smoke-bucket")
    env = s3_env(s3server, root)
    proc = gridrun(
        "run", str(REPO / "jobs/smoke.yaml"), "--results", URL, "--cache", str(root / "cache"),
        "--executor", "process", cwd=root, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, env, proc


def store(env: dict[str, str], url: str = URL) -> ResultsStore:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return ResultsStore.open(url, create=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_every_job_folder_is_complete_in_the_bucket(smoke) -> None:
    root, env, proc = smoke
    assert {p.name for p in root.iterdir()} <= {"cache", "node"}, "nothing written beside: no folder 's3:'"
    assert not list((root / "node").rglob("*.pt")), "the working folders were removed"
    suite = store(env).suite("smoke")
    assert suite.storage.read_text("suite.yaml") == (REPO / "jobs/smoke.yaml").read_text()
    assert {j["job"]: j["state"] for j in suite.read_summary()["jobs"]} == dict.fromkeys(JOBS, "succeeded")
    for name in JOBS:
        job = suite.job(name)
        spec, status, result = job.read_spec(), job.read_status(), job.read_result()
        assert status.state == JobState.SUCCEEDED and status.attempts == 1 and status.spec_hash == spec.spec_hash
        assert result.spec_hash == spec.spec_hash and [e.epoch for e in result.epochs] == [1, 2]
        files = job.storage.files()
        assert {"spec.json", "status.json", "progress.json", "result.json", "log.txt"} <= set(files)
        assert any(f.startswith("checkpoints/last") for f in files) and any(
            f.startswith("checkpoints/best") for f in files
        )
        assert any(f.startswith("tb/events.out.tfevents") for f in files)
        assert "epoch 2/2" in job.log_text()
    local = root / "copy"
    suite.job("smoke-torch").storage.download_tree("", local)
    assert torch.load(local / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["epoch"] == 2
    events = EventAccumulator(str(local / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars(TAGS["val_accuracy"])] == [1, 2]
    assert SECRET not in proc.stdout + proc.stderr and KEY_ID not in proc.stdout + proc.stderr


def test_status_report_and_tensorboard_read_the_url(smoke) -> None:
    root, env, _ = smoke
    for where in (URL, f"{URL}/smoke", f"{URL}/smoke/smoke-tf"):
        status = gridrun("status", where, cwd=root, env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = re.findall(r"smoke/(smoke-\w+) +│ (\w+)", status.stdout)
        assert rows and all(state == "succeeded" for _, state in rows), status.stdout
    report = gridrun("report", f"{URL}/smoke", cwd=root, env=env)
    assert report.returncode == 0, report.stdout + report.stderr
    suite = store(env).suite("smoke")
    page = suite.storage.read_text("report.html")
    assert page and "smoke-torch" in page and "smoke-tf" in page
    assert any(f.endswith(".png") for f in suite.storage.files("plots"))
    compare = gridrun("compare", URL, cwd=root, env=env)
    assert compare.returncode == 0 and "smoke-torch" in compare.stdout, compare.stdout + compare.stderr

    tb = subprocess.Popen(
        [sys.executable, "-m", "runner", "tensorboard", URL, "--port", "0"],
        cwd=REPO, env={**os.environ, **env, "TMPDIR": str(root)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "TensorBoard at" not in line and time.monotonic() < deadline:
            line = tb.stdout.readline()
        url = line.split(" at ", 1)[1].split()[0]
        runs: set[str] = set()
        while time.monotonic() < deadline and runs != {"smoke/smoke-torch", "smoke/smoke-tf"}:
            with urllib.request.urlopen(url + "data/runs", timeout=10) as r:
                runs = set(__import__("json").loads(r.read()))
            time.sleep(0.5)
        assert runs == {"smoke/smoke-torch", "smoke/smoke-tf"}
        query = urllib.parse.urlencode({"run": "smoke/smoke-tf", "tag": TAGS["test_accuracy"]})
        with urllib.request.urlopen(url + "data/plugin/scalars/scalars?" + query, timeout=10) as r:
            series = __import__("json").loads(r.read())
        assert [step for _, step, _ in series] == [1, 2]
    finally:
        tb.send_signal(signal.SIGINT)
        tb.wait(timeout=30)
    assert not list(root.glob("gridrun-tensorboard-*")), "the view was removed"


def test_a_second_run_skips(smoke) -> None:
    root, env, _ = smoke
    again = gridrun(
        "run", str(REPO / "jobs/smoke.yaml"), "--results", URL, "--cache", str(root / "cache"),
        "--executor", "process", "--no-report", cwd=root, env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(re.findall(r"smoke/smoke-\w+ +│ skipped", again.stdout)) == 2, again.stdout


@pytest.mark.slow  # a run killed mid-way and run again: about 45 s
def test_a_killed_run_resumes_from_the_checkpoint_in_the_bucket(s3server: S3Server, tmp_path: Path) -> None:
    s3server.make_bucket("resume-bucket")
    suite = tmp_path / "long.yaml"
    suite.write_text(
        "suite: long\n"
        "defaults: {dataset: {name: synthetic, image_size: 64, synthetic_size: 200}, resources: {gpus: 0, cpus: 1},\n"
        "           model: {arch: alexnet, classifier_width: 16}, train: {epochs: 6, batch_size: 50}}\n"
        "jobs: [{name: one, framework: torch}]\n"
    )
    ray_tmp = Path(tempfile.mkdtemp(prefix="grr-", dir="/tmp"))  # short: Ray's socket paths must fit
    env = {**s3_env(s3server, tmp_path), "RAY_TMPDIR": str(ray_tmp)}
    args = [sys.executable, "-m", "runner", "run", str(suite), "--results", "s3://resume-bucket/r"]
    args += ["--cache", str(tmp_path / "cache"), "--executor", "process", "--no-report"]
    out = tmp_path / "driver.out"
    driver = subprocess.Popen(
        args, cwd=REPO, env={**os.environ, **env}, stdout=out.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    job = store(env, "s3://resume-bucket/r").suite("long").job("one")
    try:
        deadline = time.monotonic() + 300
        while not ((job.read_progress() or {}).get("epoch", 0) >= 1 and job.storage.exists("checkpoints/last.pt")):
            assert driver.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
    finally:  # SIGKILL: the driver, its embedded Ray and the training process, all at once
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        kill_trees(lambda cmd: str(ray_tmp) in cmd or str(tmp_path / "node") in cmd)
    again = gridrun(*args[3:], env=env, timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    log = job.log_text()
    assert re.search(r"resuming from epoch [2-6]\b", log), log
    result = job.read_result()
    assert [e.epoch for e in result.epochs] == list(range(1, 7)) and result.resumed_from_epoch >= 2


# --- mistakes ----------------------------------------------------------------------------------------


def one_message(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())
    assert text.count("error:") == 1 and "Traceback" not in proc.stdout + proc.stderr, text
    assert SECRET not in proc.stdout + proc.stderr and KEY_ID not in proc.stdout + proc.stderr
    return text


@pytest.mark.parametrize("verb", ["run", "plan", "status"])
def test_storage_mistakes_are_one_message_before_anything_runs(
    verb: str, s3server: S3Server, s3server_auth: S3Server, tmp_path: Path
) -> None:
    env = s3_env(s3server, tmp_path)
    suite = str(REPO / "jobs/smoke.yaml")

    def call(url: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        args = [verb, suite, "--results", url, "--executor", "process"] if verb != "status" else [verb, url]
        return gridrun(*args, cwd=tmp_path, env={**env, **(extra_env or {})}, timeout=120)

    text = one_message(call("foo://bucket/x"))
    assert "foo://" in text and "s3" in text and "Fix:" in text
    text = one_message(call("s3://no-such-bucket-here/x"))
    assert "no-such-bucket-here" in text and "Fix:" in text
    text = one_message(call("gs://some-bucket/x"))
    assert "pip install 'gridrun[gcs]'" in text
    text = one_message(call("s3://smoke-bucket/x", {**s3server_auth.env, "AWS_SECRET_ACCESS_KEY": "wrong-" + SECRET}))
    assert "AWS_ACCESS_KEY_ID" in text and "Fix:" in text
    text = one_message(call(f"s3://{KEY_ID}:{SECRET}@smoke-bucket/x"))
    assert "Fix:" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing written"
