"""Jobs bigger than one device: data-parallel replicas on CPUs (gloo, TensorFlow's logical CPU devices), on one
node and across the two nodes of a real local Ray cluster, and the refusals of what cannot be placed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, gridrun
from raycluster import RayCluster

SUITE = """\
suite: {suite}
defaults:
  dataset: {{name: synthetic, image_size: 64, synthetic_size: 400}}
  model: {{arch: alexnet, classifier_width: 32, dropout: 0}}
  train: {{epochs: {epochs}, batch_size: 50, augment: {{random_crop: false, horizontal_flip: false}}}}
  executor: process
jobs:
{jobs}
"""


def write(tmp_path: Path, suite: str, jobs: str, epochs: int = 1) -> Path:
    path = tmp_path / f"{suite}.yaml"
    path.write_text(SUITE.format(suite=suite, epochs=epochs, jobs=jobs))
    return path


def result(results: Path, suite: str, job: str) -> dict:
    return json.loads((results / suite / job / "result.json").read_text())


def files(folder: Path) -> list[str]:
    """A job folder's files, events by their folder only (their names hold a time and a host)."""
    names = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    return sorted(n.rsplit("/", 1)[0] + "/<events>" if "tfevents" in n else n for n in names)


@pytest.mark.runs
def test_two_cpu_replicas_train_as_one_in_both_frameworks(tmp_path: Path) -> None:
    jobs = "\n".join(
        f"  - {{name: {fw}-{n}, framework: {fw}, resources: {{cpus: {n}{', replicas: 2' if n == 2 else ''}}}}}"
        for fw in ("torch", "tensorflow")
        for n in (1, 2)
    )
    suite = write(tmp_path, "dp", jobs)
    results = tmp_path / "results"
    plan = gridrun("plan", str(suite), "--results", str(results), "--cache", str(tmp_path / "cache"))
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("2 replicas") == 2, plan.stdout
    run = gridrun("run", str(suite), "--results", str(results), "--cache", str(tmp_path / "cache"), "--no-report")
    assert run.returncode == 0, run.stdout + run.stderr
    for fw, how in (("torch", "DDP over gloo"), ("tensorflow", "MirroredStrategy")):
        one, two = result(results, "dp", f"{fw}-1"), result(results, "dp", f"{fw}-2")
        # The same steps on the same images: the global batch is split, the gradients averaged.
        assert two["epochs"][0]["train_loss"] == pytest.approx(one["epochs"][0]["train_loss"], rel=1e-4), fw
        assert two["total_parameters"] == one["total_parameters"]
        assert (two["environment"]["replicas"], two["environment"]["parallel"]) == (2, how)
        assert (one["environment"]["replicas"], one["environment"]["parallel"]) == (1, "")
        assert files(results / "dp" / f"{fw}-2") == files(results / "dp" / f"{fw}-1")
        # Only the first replica writes: one set of progress lines, the event files of one run.
        log = (results / "dp" / f"{fw}-2" / "log.txt").read_text()
        assert log.count("epoch 1/1 ") == 1 and f"data parallel: 2 replicas ({how.split()[0]}" in log, log
        events = [len(list((results / "dp" / f"{fw}-{n}" / "tb").glob("events.out.tfevents.*"))) for n in (1, 2)]
        assert events[0] == events[1], events


@pytest.mark.docker
@pytest.mark.slow  # a minute: two containers
def test_replicas_train_in_their_framework_containers(tmp_path: Path) -> None:
    from test_docker import daemon_or_skip

    daemon_or_skip()
    jobs = "\n".join(
        f"  - {{name: {fw}, framework: {fw}, executor: docker, resources: {{cpus: 2, replicas: 2}}}}"
        for fw in ("torch", "tensorflow")
    )
    results = tmp_path / "results"
    suite = write(tmp_path, "dpc", jobs)
    run = gridrun("run", str(suite), "--results", str(results), "--cache", str(tmp_path / "cache"), "--no-report")
    assert run.returncode == 0, run.stdout + run.stderr
    for fw, how in (("torch", "DDP over gloo"), ("tensorflow", "MirroredStrategy")):
        env = result(results, "dpc", fw)["environment"]
        # The container has no network: torchrun's rendezvous and gloo go over its loopback.
        assert (env["executor"], env["replicas"], env["parallel"]) == ("docker", 2, how)


def test_each_node_gets_its_rendezvous_torchrun_for_torch_and_tf_config_for_tensorflow(tmp_path: Path) -> None:
    from jobhelp import make_job

    from runner.execute.base import Group, Launch, parallel_env, worker_command
    from runner.execute.docker import container_config

    group = Group(1, "10.0.0.1", 29400, ("10.0.0.1:29400", "10.0.0.2:29401"))
    res = {"gpus": 2, "cpus": 4, "nodes": 2}
    torch_job = make_job(tmp_path, "torch", name="t", resources=res, train={"batch_size": 64})
    launch = Launch(torch_job, tmp_path, torch_job.read_spec(), "run", ["0", "1"], group=group)
    cmd = " ".join(worker_command("python", torch_job.dir, tmp_path, launch))
    assert "-m torch.distributed.run --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29400" in cmd
    assert "--nproc-per-node 2 --max-restarts 0 -m runner.train.worker" in cmd
    env = parallel_env(launch)
    assert env["GRIDRUN_DATA_PARALLEL"] == "1" and "TF_CONFIG" not in env and "GLOO_SOCKET_IFNAME" not in env
    assert container_config(launch, "img", "sha", "python", "1000:1000", 2**30)["network_mode"] == "host"

    tf_job = make_job(tmp_path, "tensorflow", name="f", resources=res, train={"batch_size": 64})
    launch = Launch(tf_job, tmp_path, tf_job.read_spec(), "run", ["0", "1"], group=group)
    assert worker_command("python", tf_job.dir, tmp_path, launch)[:3] == ["python", "-m", "runner.train.worker"]
    assert json.loads(parallel_env(launch)["TF_CONFIG"]) == {
        "cluster": {"worker": ["10.0.0.1:29400", "10.0.0.2:29401"]},
        "task": {"type": "worker", "index": 1},
    }
    one = make_job(tmp_path, "torch", name="o", resources={"cpus": 2, "replicas": 2})
    launch = Launch(one, tmp_path, one.read_spec(), "run", [])
    assert parallel_env(launch)["GLOO_SOCKET_IFNAME"] == "lo"  # all replicas here: a container has only lo
    assert "--master-addr 127.0.0.1" in " ".join(worker_command("python", one.dir, tmp_path, launch))
    assert container_config(launch, "img", "sha", "python", "1000:1000", 2**30)["network_mode"] == "none"


BAD = [
    ("{gpus: 0.5, replicas: 2}", "resources", "a share of one GPU, which cannot hold 2 data-parallel replicas"),
    ("{gpus: 2, replicas: 3}", "resources", "one replica per GPU. Fix: drop replicas, or set gpus: 3"),
    ("{cpus: 1, replicas: 2}", "resources", "each CPU replica needs a core of its own"),
    ("{cpus: 3, replicas: 3}", "train.batch_size", "does not split evenly over 3 replicas. Fix: a multiple of 3"),
]


@pytest.mark.parametrize("resources, where, message", BAD)
def test_what_replicas_cannot_mean_is_refused_with_the_fix(tmp_path: Path, resources: str, where: str, message: str):
    suite = write(tmp_path, "bad", f"  - {{name: j, framework: torch, resources: {resources}}}")
    out = gridrun("validate", str(suite))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert message in out.stderr and where in out.stderr, out.stderr


@pytest.mark.runs
def test_more_replicas_or_nodes_than_the_machine_has_are_refused_at_plan_time(tmp_path: Path) -> None:
    jobs = "  - {name: gpus, framework: torch, train: {batch_size: 48}, resources: {gpus: 4}}\n"
    jobs += "  - {name: nodes, framework: torch, train: {batch_size: 48}, resources: {cpus: 1, nodes: 3}}"
    out = gridrun("plan", str(write(tmp_path, "big", jobs)), "--results", str(tmp_path / "r"), "--gpus", "2")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    text = " ".join(out.stderr.split())
    assert "gpus: needs 4 GPU(s) and 1 CPU(s) for its 4 replicas; the largest node has 2 GPU(s)" in text, text
    assert "nodes: needs 3 distinct nodes with 0 GPU(s) and 1 CPU(s) each; 1 of the cluster's 1 node(s) can" in text
    assert "Fix: resources.nodes: 1 or less" in text


TOKEN = "gridrun-test-token-" + "5" * 24


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory):
    """A head that holds no CPU and two worker nodes of one CPU each, sharing this machine's disk."""
    root = tmp_path_factory.mktemp("two-nodes")
    ray = RayCluster(root, token=TOKEN)
    try:
        ray.start_head(cpus=0, gpus=0)
        env = {"GRIDRUN_COLLECTIVE_TIMEOUT_S": "30", "GRIDRUN_NODE_DIR": str(root / "nodes")}
        ray.start_workers([{"cpus": 1, "gpus": 0, "env": env}, {"cpus": 1, "gpus": 0, "env": env}])
        yield ray
    finally:
        ray.stop()


def cluster_env(cluster: RayCluster) -> dict[str, str]:
    return {"HOME": str(cluster.home), "RAY_AUTH_TOKEN": TOKEN, "RAY_AUTH_TOKEN_PATH": ""}


def run_args(cluster: RayCluster, tmp_path: Path, suite: str, jobs: str, epochs: int) -> list[str]:
    """`gridrun run` of a suite of `jobs` on the cluster, results and cache under tmp_path."""
    path = write(tmp_path, suite, jobs, epochs=epochs)
    args = ["run", str(path), "--address", cluster.address, "--results", str(tmp_path / "results")]
    return [*args, "--cache", str(tmp_path / "cache"), "--no-report"]


def replicas_of(results: Path, suite: str) -> list[int]:
    """Pids of the job's training processes (torchrun's children) on this machine, whichever node started them."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = any(str(results / suite).encode() in part for part in cmdline)
        if ours and b"runner.train.worker" in cmdline and b"torch.distributed.run" not in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.cluster
@pytest.mark.slow
def test_a_job_across_two_nodes_trains_once_and_a_killed_replica_fails_the_attempt_and_the_retry_resumes(
    two_nodes: RayCluster, tmp_path: Path
) -> None:
    jobs = "  - {name: wide, framework: torch, resources: {cpus: 1, nodes: 2, max_retries: 1}}"
    args = run_args(two_nodes, tmp_path, "wide", jobs, epochs=3)
    results = tmp_path / "results"
    out = tmp_path / "driver.log"
    driver = subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "300", **cluster_env(two_nodes)},
        stdout=out.open("w"),
        stderr=subprocess.STDOUT,
    )
    progress = results / "wide" / "wide" / "progress.json"
    deadline = time.monotonic() + 300
    while not (progress.exists() and json.loads(progress.read_text()).get("epoch", 0) >= 1):
        assert driver.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.3)
    victims = replicas_of(results, "wide")
    assert len(victims) == 2, victims  # one replica per node
    killed_at = time.monotonic()
    os.kill(max(victims), signal.SIGKILL)
    # The attempt fails at once (torchrun ends its node's replicas; the other node's are stopped), then resumes.
    status = results / "wide" / "wide" / "status.json"
    while json.loads(status.read_text()).get("attempts", 0) < 2:
        assert driver.poll() is None, out.read_text()
        assert time.monotonic() - killed_at < 60, out.read_text()
        time.sleep(0.3)
    assert driver.wait(timeout=400) == 0, out.read_text()
    text = out.read_text()
    assert "failed, retrying" in text, text
    done = result(results, "wide", "wide")
    assert done["environment"]["replicas"] == 2 and done["environment"]["nodes"] == 2
    assert done["resumed_from_epoch"] is not None and done["resumed_from_epoch"] >= 2, done["resumed_from_epoch"]
    assert [e["epoch"] for e in done["epochs"]] == [1, 2, 3]
    log = (results / "wide" / "wide" / "log.txt").read_text()
    assert "--nnodes 2 --node-rank 0" in log and "--nnodes 2 --node-rank 1" in log, log
    assert not replicas_of(results, "wide")


def test_a_search_across_nodes_is_refused(tmp_path: Path) -> None:
    suite = write(tmp_path, "s", "  - {name: j, framework: torch, resources: {cpus: 1, nodes: 2}}")
    suite.write_text(
        suite.read_text() + "search:\n  name: lr\n  base: j\n  space:\n    train.optimizer.lr: {choice: [0.1, 0.01]}\n"
    )
    out = gridrun("validate", str(suite))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "a search's trials train on one node each" in out.stderr and "Fix: resources.nodes: 1" in out.stderr


@pytest.mark.cluster
@pytest.mark.slow
def test_a_tensorflow_job_across_two_nodes_trains_with_multi_worker_mirrored_strategy(
    two_nodes: RayCluster, tmp_path: Path
) -> None:
    jobs = "  - {name: tf-wide, framework: tensorflow, resources: {cpus: 1, nodes: 2}}"
    out = gridrun(*run_args(two_nodes, tmp_path, "tfwide", jobs, epochs=2), env=cluster_env(two_nodes), timeout=600)
    results = tmp_path / "results"
    assert out.returncode == 0, out.stdout + out.stderr
    done = result(results, "tfwide", "tf-wide")
    env = done["environment"]
    assert (env["replicas"], env["nodes"], env["parallel"]) == (2, 2, "MultiWorkerMirroredStrategy")
    assert [e["epoch"] for e in done["epochs"]] == [1, 2]
    log = (results / "tfwide" / "tf-wide" / "log.txt").read_text()
    assert log.count("epoch 2/2 ") == 1, log


def test_one_replica_may_have_a_share_of_a_core() -> None:
    from schemas import JobSpec

    spec = JobSpec(name="j", framework="torch", model={"arch": "alexnet"}, resources={"cpus": 0.5})
    assert (spec.resources.world, spec.resources.threads) == (1, 1)
