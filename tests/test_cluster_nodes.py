"""A real multi-node Ray cluster on this machine whose worker nodes do not share the driver's disk.

The head holds no CPU, so every job runs on a worker node. Each worker node runs in a mount namespace of
its own with an empty tmpfs over the driver's folder (`cluster.hidden`), as a machine without that disk:
results and cache there are refused at plan time; with a storage URL (a real S3 API, moto's server) every
job folder arrives complete in the bucket, inputs come from the cache URL, and a killed node's job resumes
elsewhere from its checkpoint in the bucket. Then the head is killed.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, gridrun
from raycluster import RayCluster
from s3server import running_s3_server
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.store import ResultsStore, Storage
from runner.store.layout import SuitePaths
from runner.train import torch_models
from runner.train.weights import imagenet_path
from schemas import JobState, ModelSpec

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # a multi-node Ray cluster: 30-60 s a test

TOKEN = "gridrun-test-token-" + "7" * 24
SUITE = """\
suite: {suite}
defaults:
  dataset: {{name: {dataset}, image_size: 64, synthetic_size: 300}}
  model: {{arch: alexnet, classifier_width: 32}}
  train: {{epochs: {epochs}, batch_size: 50}}
  resources: {{gpus: 1, cpus: 1, gpu_fallback: cpu}}  # the nodes' GPUs are logical: the CPU stands in
jobs:
{jobs}
"""


@pytest.fixture(scope="module")
def s3():
    with running_s3_server() as server:
        server.make_bucket("nodes")
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3):
    root = tmp_path_factory.mktemp("nodes")
    ray = RayCluster(root, token=TOKEN)
    if not ray.can_hide():
        pytest.skip("worker nodes could not get a private mount namespace here (needs root and unshare)")
    try:
        ray.start_head(cpus=0, gpus=0)
        ray.hidden = root / "driver-disk"  # never removed: removing a mount point here would unmount it there
        ray.hidden.mkdir()
        ray.start_workers(
            [
                {"cpus": 1, "gpus": 1, "labels": f"zone={zone}", "resources": '{"fast": 1}' if zone == "b" else None}
                | {"env": {**s3.env, "GRIDRUN_NODE_DIR": str(root / f"node-{zone}")}}
                | {"hide": ray.hidden}
                for zone in ("a", "b")
            ]
        )
        yield ray
    finally:
        ray.stop()


def env_of(cluster: RayCluster, s3=None) -> dict[str, str]:
    return {
        "HOME": str(cluster.home),
        "RAY_AUTH_TOKEN": TOKEN,
        "RAY_AUTH_TOKEN_PATH": "",
        "GRIDRUN_SYNC_SECONDS": "1",
        "GRIDRUN_CLUSTER_LOST_AFTER_S": "4",
        **(s3.env if s3 is not None else {}),
    }


def write_suite(tmp_path: Path, name: str, epochs: int, jobs: str, dataset: str = "synthetic") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(suite=name, epochs=epochs, jobs=jobs, dataset=dataset))
    return path


def run_on_cluster(cluster: RayCluster, suite: Path, results: str, cache: str, s3=None) -> subprocess.CompletedProcess:
    """`gridrun run` of a suite on the cluster with the process executor, to the end."""
    return gridrun(
        "run", str(suite), "--address", cluster.address, "--results", results, "--executor", "process",
        "--cache", cache, "--no-report", env=env_of(cluster, s3), timeout=400,
    )  # fmt: skip


def start_driver(cluster: RayCluster, suite: Path, results: str, cache: str, out: Path, s3=None) -> subprocess.Popen:
    args = ["run", str(suite), "--address", cluster.address, "--results", results, "--executor", "process"]
    args += ["--cache", cache, "--no-report"]
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200", **env_of(cluster, s3)},
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(condition, proc: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.3)


def node_of(log: str) -> str:
    """Which node the job's (last) attempt ran on: the worker's command line names its working folder."""
    return re.findall(r"runner\.train\.worker \S*/node-(\w)/", log)[-1]


def no_working_folders(cluster: RayCluster) -> None:
    for zone in ("a", "b"):  # each node's working folders were removed once their files were in the store
        work = cluster.root / f"node-{zone}" / "work"
        assert not work.exists() or not any(work.iterdir()), list(work.rglob("*"))


def test_plan_shows_placement_and_refuses_what_no_node_offers(cluster, tmp_path: Path) -> None:
    suite = write_suite(
        tmp_path,
        "placed",
        1,
        "  - {name: on-b, framework: torch, resources: {labels: {zone: b}, custom: {fast: 1}}}\n"
        "  - {name: not-c, framework: torch, resources: {labels: {zone: '!c'}}}",
    )
    plan = gridrun(
        "plan", str(suite), "--address", cluster.address, "--results", str(tmp_path / "r"), "--executor", "process",
        env=env_of(cluster),
    )  # fmt: skip
    assert plan.returncode == 0, plan.stdout + plan.stderr
    row = next(ln for ln in plan.stdout.splitlines() if "│ on-b" in ln)
    assert "1 GPU, 1 CPU" in row
    assert "on fast: 1, zone=b" in plan.stdout and "on zone=!c" in plan.stdout

    nowhere = write_suite(tmp_path, "nowhere", 1, "  - {name: on-c, framework: torch, resources: {labels: {zone: c}}}")
    refused = gridrun(
        "run", str(nowhere), "--address", cluster.address, "--results", str(tmp_path / "r"), env=env_of(cluster)
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert "on-c: needs 1 GPU(s) and 1 CPU(s) on a node with zone=c; the nodes offer:" in message
    assert "zone=a" in message and "zone=b" in message and "Traceback" not in message
    assert not (tmp_path / "r").exists()


def test_a_folder_the_nodes_do_not_see_is_refused_at_plan_time(cluster, s3, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "apart", 1, "  - {name: one, framework: torch}")
    results = cluster.hidden / "results"
    for verb in ("plan", "run"):
        proc = gridrun(
            verb, str(suite), "--address", cluster.address, "--results", str(results), "--executor", "process",
            env=env_of(cluster),
        )  # fmt: skip
        assert proc.returncode == 2, proc.stdout + proc.stderr
        message = " ".join(proc.stderr.split())
        assert f"--results {results} is a folder of this machine that 2 of the cluster's 3 nodes do not see" in message
        assert "Nothing was run. Fix: give --results a storage URL (s3://bucket/prefix" in message
        assert message.count("error:") == 1 and "Traceback" not in message
    assert not results.exists(), "nothing written"
    reads_cifar = write_suite(tmp_path, "apart", 1, "  - {name: one, framework: torch}", dataset="cifar10")
    hidden_cache = gridrun(
        "plan", str(reads_cifar), "--address", cluster.address, "--results", "s3://nodes/refused",
        "--executor", "process", "--cache", str(cluster.hidden / "cache"), env=env_of(cluster, s3),
    )  # fmt: skip
    assert hidden_cache.returncode == 2, hidden_cache.stdout + hidden_cache.stderr
    assert "--cache" in hidden_cache.stderr and "do not see" in hidden_cache.stderr


def write_cifar10(folder: Path, per_batch: int = 40) -> None:
    """A small CIFAR-10 in the standard pickle layout (cifar-10-batches-py/), seeded noise."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))


def test_with_a_storage_url_every_job_folder_arrives_complete(cluster, s3, tmp_path: Path, monkeypatch) -> None:
    """Results and cache on S3: each node fetches the inputs from the cache URL (checked by digest) into its
    own cache, and each job's folder arrives complete in the bucket."""
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    cache = cluster.hidden / "cache"  # the prepare step's local cache: the nodes cannot see it
    write_cifar10(cache / "datasets" / "cifar10" / "cifar-10-batches-py")
    model = torch_models.build(ModelSpec(arch="alexnet", classifier_width=32), 10)
    weights = imagenet_path("torch", "alexnet", cache)  # a stand-in: the real file is 233 MiB
    weights.parent.mkdir(parents=True)
    torch.save(model.state_dict(), weights)
    suite = write_suite(
        tmp_path,
        "apart",
        2,
        "  - {name: on-a, framework: torch, resources: {labels: {zone: a}}}\n"
        "  - {name: on-b, framework: torch, resources: {custom: {fast: 1}}, model: {weights: imagenet}}",
        dataset="cifar10",
    )
    env = {**env_of(cluster, s3), "GRIDRUN_CACHE": str(cache)}
    proc = gridrun(
        "run", str(suite), "--address", cluster.address, "--results", "s3://nodes/apart-run", "--executor",
        "process", "--cache", "s3://nodes/cache", "--no-report", env=env, timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("prepare: copying") == 8, proc.stdout  # 7 CIFAR-10 files and the weights, once
    suite_store = ResultsStore.open("s3://nodes/apart-run").suite("apart")
    local = tmp_path / "copy"
    for name, zone in (("on-a", "a"), ("on-b", "b")):
        job = suite_store.job(name)
        assert node_of(job.log_text()) == zone, "placement by label / custom resource"
        status, result = job.read_status(), job.read_result()
        assert status.state == JobState.SUCCEEDED and status.attempts == 1 and status.gpu_ids == ["0"]
        assert result is not None and [e.epoch for e in result.epochs] == [1, 2]
        assert result.dataset_sizes == {"train": 180, "val": 20, "test": 40}
        job.storage.download_tree("", local / name)
        events = EventAccumulator(str(local / name / "tb"))
        events.Reload()
        assert [e.step for e in events.Scalars("accuracy/val")] == [1, 2]
        last = torch.load(local / name / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
        assert last["epoch"] == 2, "the checkpoint arrived whole (it loads) and is the final one"
        assert json.loads((local / name / "progress.json").read_text())["epoch"] == 2
        node_cache = next((cluster.root / f"node-{zone}" / "cache").iterdir())
        assert (node_cache / "datasets/cifar10/cifar-10-batches-py/data_batch_5").stat().st_size == (
            cache / "datasets/cifar10/cifar-10-batches-py/data_batch_5"
        ).stat().st_size
    in_cache = weights.relative_to(cache)
    assert (next((cluster.root / "node-b" / "cache").iterdir()) / in_cache).is_file()
    assert not (next((cluster.root / "node-a" / "cache").iterdir()) / in_cache).exists(), "on-a reads no weights"
    no_working_folders(cluster)
    again = gridrun(
        "run", str(suite), "--address", cluster.address, "--results", "s3://nodes/apart-run", "--executor",
        "process", "--cache", "s3://nodes/cache", "--no-report", env=env, timeout=400,
    )  # fmt: skip
    assert again.returncode == 0 and "prepare: copying" not in again.stdout, again.stdout
    assert len(re.findall(r"apart/on-[ab] +│ skipped", again.stdout)) == 2, again.stdout


def test_a_killed_worker_node_is_retried_elsewhere_and_resumes(cluster, s3, tmp_path: Path, monkeypatch) -> None:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    suite = write_suite(tmp_path, "survive", 8, "  - {name: long, framework: torch, resources: {max_retries: 1}}")
    out = tmp_path / "driver.out"
    driver = start_driver(cluster, suite, "s3://nodes/survive-run", str(tmp_path / "cache"), out, s3)
    job = ResultsStore.open("s3://nodes/survive-run", create=True).suite("survive").job("long")
    try:

        def live() -> bool:  # epoch 2's files reached the bucket while the job still runs on its node
            progress = job.read_progress() or {}
            return progress.get("epoch", 0) >= 2 and job.storage.exists("checkpoints/last.pt")

        wait_for(live, driver, out)
        assert any(rel.startswith("events.out.tfevents") for rel in job.storage.files("tb")), "events arrive live"
        zone = node_of(job.log_text())
        killed = cluster.kill_node(cluster.workers["ab".index(zone)])
        assert killed >= 2, "the node's raylet and the job's processes"
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = out.read_text()
    assert driver.returncode == 0, text
    status, result = job.read_status(), job.read_result()
    assert status.state == JobState.SUCCEEDED and status.attempts == 2
    log = job.log_text()
    assert node_of(log) != zone, "the second attempt ran on the other node"
    assert re.search(r"resuming from epoch [2-8] ", log), "it resumed from the checkpoint in the bucket"
    assert [e.epoch for e in result.epochs] == list(range(1, 9))
    assert len(re.findall(r"\] long: failed, retrying \(1 left\): the run's Ray task failed: NodeDiedError", text)) == 1
    assert len(re.findall(r"\] long: succeeded", text)) == 1, "reported once"
    summary = Storage.open("s3://nodes/survive-run").read_json("survive/summary.json")
    assert [(j["job"], j["state"]) for j in summary["jobs"]] == [("long", "succeeded")]


def test_losing_the_head_ends_the_run_with_one_clear_message(cluster, tmp_path: Path) -> None:
    suite = write_suite(
        tmp_path,
        "headless",
        1,
        "  - {name: quick, framework: torch, resources: {gpus: 0, cpus: 0.5}}\n"
        "  - {name: slow, framework: torch, train: {epochs: 60}, resources: {gpus: 0, cpus: 0.5}}",
    )
    results = tmp_path / "results"
    out = tmp_path / "driver.out"
    driver = start_driver(cluster, suite, str(results), str(tmp_path / "cache"), out)
    jobs = SuitePaths.of(results, "headless")
    try:

        def quick_done_slow_running() -> bool:
            quick = jobs.job("quick").read_status()
            return quick is not None and quick.state == JobState.SUCCEEDED and jobs.job("slow").progress.is_file()

        wait_for(quick_done_slow_running, driver, out)
        assert cluster.kill_head() >= 2
        driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = " ".join(out.read_text().split())
    assert driver.returncode == 1, text
    assert text.count("lost the Ray cluster at") == 1 and "Traceback" not in text
    assert "1 job(s) had finished and are complete" in text and "1 unfinished job(s) are marked failed" in text
    quick, slow = jobs.job("quick"), jobs.job("slow")
    assert quick.read_status().state == JobState.SUCCEEDED and quick.read_result() is not None
    assert slow.read_status().state == JobState.FAILED and slow.read_status().reason.startswith("cluster lost: ")
    assert slow.read_result() is None
    summary = json.loads(jobs.summary.read_text())
    assert {j["job"]: j["state"] for j in summary["jobs"]} == {"quick": "succeeded", "slow": "failed"}
