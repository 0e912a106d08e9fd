"""A real multi-node Ray cluster on this machine whose worker nodes do not share the results disk.

The head holds no CPU, so every job runs on a worker node; each worker runs its jobs in its own folder
(GRIDRUN_NODE_DIR) and is told not to use the results path although it could see it
(GRIDRUN_SHARED_RESULTS=0): the driver must bring every file back through Ray, exactly as from a
machine that has no such path. Then a worker node is killed mid-job, and finally the head.
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
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.schedule import transfer
from runner.store.layout import SuitePaths
from runner.train import torch_models
from runner.train.weights import imagenet_path
from schemas import JobState, ModelSpec

TOKEN = "gridrun-test-token-" + "7" * 24
SUITE = """\
suite: {suite}
defaults:
  dataset: {{name: {dataset}, image_size: 64, synthetic_size: 300}}
  model: {{arch: alexnet, classifier_width: 32}}
  train: {{epochs: {epochs}, batch_size: 50}}
  resources: {{gpus: 1, cpus: 1}}
jobs:
{jobs}
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("nodes")
    ray = RayCluster(root, token=TOKEN)
    try:
        ray.start_head(cpus=0, gpus=0)
        if ray.can_hide():  # the driver's cache of test_inputs_reach_nodes_that_do_not_see_the_cache
            ray.hidden = root / "driver-cache"
            ray.hidden.mkdir()
        ray.start_workers(
            [
                {"cpus": 1, "gpus": 1, "labels": f"zone={zone}", "resources": '{"fast": 1}' if zone == "b" else None}
                | {"env": {"GRIDRUN_SHARED_RESULTS": "0", "GRIDRUN_NODE_DIR": str(root / f"node-{zone}")}}
                | {"hide": ray.hidden}
                for zone in ("a", "b")
            ]
        )
        yield ray
    finally:
        ray.stop()


def env_of(cluster: RayCluster) -> dict[str, str]:
    return {
        "HOME": str(cluster.home),
        "RAY_AUTH_TOKEN": TOKEN,
        "RAY_AUTH_TOKEN_PATH": "",
        "GRIDRUN_CHUNK_BYTES": str(2**20),  # checkpoints of ~22 MiB travel in many pieces
        "GRIDRUN_SYNC_SECONDS": "1",
        "GRIDRUN_CLUSTER_LOST_AFTER_S": "4",
    }


def write_suite(tmp_path: Path, name: str, epochs: int, jobs: str, dataset: str = "synthetic") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(suite=name, epochs=epochs, jobs=jobs, dataset=dataset))
    return path


def run_on_cluster(cluster: RayCluster, suite: Path, results: Path, cache: Path) -> subprocess.CompletedProcess:
    """`gridrun run` of a suite on the cluster with the process executor, to the end."""
    return gridrun(
        "run", str(suite), "--address", cluster.address, "--results", str(results), "--executor", "process",
        "--cache", str(cache), "--no-report", env=env_of(cluster), timeout=400,
    )  # fmt: skip


def start_driver(cluster: RayCluster, suite: Path, results: Path, out: Path) -> subprocess.Popen:
    args = ["run", str(suite), "--address", cluster.address, "--results", str(results), "--executor", "process"]
    args += ["--cache", str(results.parent / "cache"), "--no-report"]
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200", **env_of(cluster)},
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(condition, proc: subprocess.Popen, out: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.3)


def node_of(log: Path) -> str:
    """Which node folder the job's (last) attempt ran in: the worker's command line names it."""
    return re.findall(r"runner\.train\.worker \S*/node-(\w)/", log.read_text())[-1]


def no_leftovers(suite_dir: Path) -> None:
    assert not list(suite_dir.rglob(f"*{transfer.PART}")), "a file that did not finish arriving was left"
    assert not list(suite_dir.glob(".gridrun-marker-*")), "the run's marker file was left"


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


def test_every_job_folder_comes_back_from_nodes_that_share_no_disk(cluster, tmp_path: Path) -> None:
    suite = write_suite(
        tmp_path,
        "apart",
        2,
        "  - {name: on-a, framework: torch, resources: {labels: {zone: a}}}\n"
        "  - {name: on-b, framework: torch, resources: {custom: {fast: 1}}}",
    )
    results = tmp_path / "results"
    proc = run_on_cluster(cluster, suite, results, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    suite_dir = SuitePaths.of(results, "apart")
    for name, zone in (("on-a", "a"), ("on-b", "b")):
        paths = suite_dir.job(name)
        assert node_of(paths.log) == zone, "placement by label / custom resource"
        assert "epoch 2/2" in paths.log.read_text()
        status, result = paths.read_status(), paths.read_result()
        assert status.state == JobState.SUCCEEDED and status.attempts == 1 and status.gpu_ids == ["0"]
        assert result is not None and [e.epoch for e in result.epochs] == [1, 2]
        events = EventAccumulator(str(paths.tb))
        events.Reload()
        assert [e.step for e in events.Scalars("accuracy/val")] == [1, 2]
        last = torch.load(paths.checkpoint("last", ".pt"), map_location="cpu", weights_only=False)
        assert last["epoch"] == 2, "the checkpoint arrived whole (it loads) and is the final one"
        assert torch.load(paths.checkpoint("best", ".pt"), map_location="cpu", weights_only=False)["model"]
        assert json.loads(paths.progress.read_text())["epoch"] == 2
    no_leftovers(suite_dir.dir)
    for zone in ("a", "b"):  # each node's working folders were removed once their files were here
        node_dir = cluster.root / f"node-{zone}"
        assert not node_dir.exists() or not any(node_dir.rglob("*.pt")), list(node_dir.rglob("*"))


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


def test_inputs_reach_nodes_that_do_not_see_the_cache(cluster, tmp_path: Path) -> None:
    """Each worker node has its own empty tmpfs over the driver's cache folder (a mount namespace of its
    own): the dataset and the weights file in the cache travel through Ray, once per run, and both jobs
    train on them."""
    if not cluster.hidden:
        pytest.skip("worker nodes could not get a private mount namespace here (needs root and unshare)")
    cache = cluster.hidden  # never removed: removing a mount point here would unmount it in the nodes
    write_cifar10(cache / "datasets" / "cifar10" / "cifar-10-batches-py")
    model = torch_models.build(ModelSpec(arch="alexnet", classifier_width=32), 10)
    weights = imagenet_path("torch", "alexnet", cache)  # a stand-in: the real file is 233 MiB
    weights.parent.mkdir(parents=True)
    torch.save(model.state_dict(), weights)
    suite = write_suite(
        tmp_path,
        "inputs",
        1,
        "  - {name: on-a, framework: torch, resources: {labels: {zone: a}}}\n"
        "  - {name: on-b, framework: torch, resources: {custom: {fast: 1}},\n"
        "      model: {weights: imagenet}}",
        dataset="cifar10",
    )
    results = tmp_path / "results"
    proc = run_on_cluster(cluster, suite, results, cache)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sending = [ln for ln in proc.stdout.splitlines() if "input file(s) of the cache (" in ln]
    assert len(sending) == 2, proc.stdout  # one per job; the dataset's bytes travel only with the first
    assert sum("(already in Ray's object store)" in ln for ln in sending) <= 1
    suite_dir = SuitePaths.of(results, "inputs")
    for name, zone in (("on-a", "a"), ("on-b", "b")):
        paths = suite_dir.job(name)
        assert node_of(paths.log) == zone
        result = paths.read_result()
        assert result is not None and result.dataset_sizes == {"train": 180, "val": 20, "test": 40}, result
        node_cache = cluster.root / f"node-{zone}" / "cache"
        assert (node_cache / "datasets/cifar10/cifar-10-batches-py/data_batch_5").stat().st_size == (
            cache / "datasets/cifar10/cifar-10-batches-py/data_batch_5"
        ).stat().st_size
    in_cache = weights.relative_to(cache)
    assert (cluster.root / "node-b" / "cache" / in_cache).stat().st_size == weights.stat().st_size
    assert not (cluster.root / "node-a" / "cache" / in_cache).exists(), "on-a does not read the weights"


def test_a_killed_worker_node_is_retried_elsewhere_and_resumes(cluster, tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "survive", 8, "  - {name: long, framework: torch, resources: {max_retries: 1}}")
    results = tmp_path / "results"
    out = tmp_path / "driver.out"
    driver = start_driver(cluster, suite, results, out)
    paths = SuitePaths.of(results, "survive").job("long")
    try:

        def live() -> bool:  # epoch 2's files came back while the job still runs on its node
            progress = json.loads(paths.progress.read_text()) if paths.progress.is_file() else {}
            return progress.get("epoch", 0) >= 2 and paths.checkpoint("last", ".pt").is_file()

        wait_for(live, driver, out)
        events = EventAccumulator(str(paths.tb))
        events.Reload()
        assert [e.step for e in events.Scalars("accuracy/val")][:1] == [1], "TensorBoard events come back live"
        zone = node_of(paths.log)
        killed = cluster.kill_node(cluster.workers["ab".index(zone)])
        assert killed >= 2, "the node's raylet and the job's processes"
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    text = out.read_text()
    assert driver.returncode == 0, text
    status, result = paths.read_status(), paths.read_result()
    assert status.state == JobState.SUCCEEDED and status.attempts == 2
    assert node_of(paths.log) != zone, "the second attempt ran on the other node"
    assert re.search(r"resuming from epoch [2-8] ", paths.log.read_text()), "it resumed from the checkpoint"
    assert [e.epoch for e in result.epochs] == list(range(1, 9))
    assert len(re.findall(r"\] long: failed, retrying \(1 left\): the run's Ray task failed: NodeDiedError", text)) == 1
    assert len(re.findall(r"\] long: succeeded", text)) == 1, "reported once"
    summary = json.loads(SuitePaths.of(results, "survive").summary.read_text())
    assert [(j["job"], j["state"]) for j in summary["jobs"]] == [("long", "succeeded")]
    no_leftovers(paths.dir.parent)


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
    driver = start_driver(cluster, suite, results, out)
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
    no_leftovers(jobs.dir)


def test_a_folder_travels_in_pieces_while_it_changes(tmp_path: Path) -> None:
    """transfer.pull / Receiver on real files, without Ray: pieces smaller than the files, a log that grows, a
    checkpoint replaced halfway through its transfer, temporary files of atomic writes, a driver-owned spec."""
    src, dst = tmp_path / "node", tmp_path / "driver"
    (src / "tb").mkdir(parents=True)
    (src / "checkpoints").mkdir()
    (src / "spec.json").write_text("{}")
    (src / "log.txt").write_bytes(b"epoch 1\n")
    (src / "tb" / "events.out.tfevents.1.host").write_bytes(os.urandom(3000))
    (src / "checkpoints" / "last.pt").write_bytes(os.urandom(10_000))
    (src / "checkpoints" / ".last.pt.x1.tmp").write_bytes(b"half a checkpoint")  # an atomic write in progress
    receiver, state, order = transfer.Receiver(dst), {}, []

    def pull_once() -> bool:
        nonlocal state
        out = transfer.pull(str(src), state, 4096)
        assert sum(len(p["data"]) for p in out["pieces"]) <= 4096
        order.extend(p["rel"] for p in out["pieces"])
        state = out["state"]
        for rel in receiver.apply(out["pieces"]):
            state.pop(rel)
        return out["complete"]

    assert not pull_once()  # 13 kB do not fit in 4 kB
    with (src / "log.txt").open("ab") as f:
        f.write(b"epoch 2\n")
    replaced = os.urandom(9_000)
    (src / "checkpoints" / ".new").write_bytes(replaced)
    os.replace(src / "checkpoints" / ".new", src / "checkpoints" / "last.pt")
    (src / "result.json").write_text('{"done": true}')
    while not pull_once():
        pass
    assert (dst / "checkpoints" / "last.pt").read_bytes() == replaced
    assert (dst / "log.txt").read_bytes() == b"epoch 1\nepoch 2\n"
    assert (dst / "tb" / "events.out.tfevents.1.host").read_bytes() == (
        src / "tb" / "events.out.tfevents.1.host"
    ).read_bytes()
    assert order[-1] == "result.json", "result.json comes last"
    assert not (dst / "spec.json").exists() and not list(dst.rglob(".*")), "no spec, no temporary or partial file"
    with pytest.raises(ValueError, match="outside"):
        receiver.apply([{"rel": "../escape", "append": False, "offset": 0, "total": 1, "data": b"x"}])

    marker, token = transfer.write_marker(tmp_path, "run1")
    assert transfer.shares_results(str(marker), token)
    assert not transfer.shares_results(str(marker), "another run's token")
    assert not transfer.shares_results(str(tmp_path / "elsewhere" / marker.name), token)
