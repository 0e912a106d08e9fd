"""The docker executor and the framework images, against a real Docker daemon.

Tests marked `docker` skip when no daemon answers, and fail instead when REQUIRE_DOCKER=1 (CI,
after `bash docker/ci-setup.sh`). The others need no daemon.
"""

import _thread
import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from runner.errors import UserError
from runner.execute import choose, images
from runner.execute.base import Launch, Outcome
from runner.execute.docker import (
    OWNER_LABEL,
    PIDS_LIMIT,
    DockerExecutor,
    _owner,
    cleanup_stale,
    container_config,
    container_user,
    ensure_image,
    probe,
)
from runner.store.layout import JobPaths
from tests.conftest import gridrun
from tests.jobhelp import job_spec, make_job

REQUIRE = os.environ.get("REQUIRE_DOCKER") == "1"
NO_DAEMON = "unix:///nonexistent/gridrun-test.sock"
GiB = 2**30


def launch_of(paths: JobPaths, cache: Path, gpu_ids: tuple[str, ...] = (), run_id: str = "run-1") -> Launch:
    return Launch(paths, cache, paths.read_spec(), run_id, list(gpu_ids))


# ---- no daemon needed ---------------------------------------------------------------------------


def test_two_gpu_launches_get_their_own_device_ids(tmp_path: Path, cache: Path) -> None:
    paths = make_job(tmp_path, resources={"gpus": 1, "memory_gb": 3})
    a = container_config(launch_of(paths, cache, ("0",)), "img:1", "sha256:x", "python", "1000:1000", 16 * GiB)
    b = container_config(launch_of(paths, cache, ("1",)), "img:1", "sha256:x", "python", "1000:1000", 16 * GiB)
    assert [r["DeviceIDs"] for r in a["device_requests"]] == [["0"]]
    assert [r["DeviceIDs"] for r in b["device_requests"]] == [["1"]]
    assert a["device_requests"][0]["Capabilities"] == [["gpu"]]
    # Inside, the one GPU it sees is device 0 whatever its host id.
    assert a["environment"]["CUDA_VISIBLE_DEVICES"] == b["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    none = container_config(launch_of(paths, cache), "img:1", "sha256:x", "python", "1000:1000", 16 * GiB)
    assert none["device_requests"] is None and none["environment"]["CUDA_VISIBLE_DEVICES"] == ""


def test_container_config_is_confined(tmp_path: Path, cache: Path, monkeypatch) -> None:
    paths = make_job(tmp_path, name="conf", resources={"memory_gb": 3})
    cfg = container_config(launch_of(paths, cache), "img:1", "sha256:abc", "/opt/venv/bin/python", "1000:1000", 0)
    assert cfg["cap_drop"] == ["ALL"] and cfg["security_opt"] == ["no-new-privileges"]
    assert cfg["network_mode"] == "none" and cfg["user"] == "1000:1000"
    assert cfg["mem_limit"] == cfg["memswap_limit"] == 3 * GiB and cfg["pids_limit"] == PIDS_LIMIT
    assert cfg["shm_size"] == int(1.5 * GiB)
    mounts = {m["Target"]: m for m in cfg["mounts"]}
    assert mounts["/results/test-suite"]["Source"] == str(paths.dir.parent)
    assert mounts["/results/test-suite"]["ReadOnly"] is False
    assert mounts["/cache"]["Source"] == str(cache) and mounts["/cache"]["ReadOnly"] is True
    assert cfg["command"] == [
        "/opt/venv/bin/python",
        "-m",
        "runner.train.worker",
        "/results/test-suite/conf",
        "--cache",
        "/cache",
    ]
    assert cfg["labels"]["gridrun"] == "1" and cfg["labels"]["gridrun.job"] == "conf"
    assert cfg["labels"]["gridrun.suite"] == "test-suite" and cfg["labels"]["gridrun.run_id"] == "run-1"
    assert cfg["environment"]["GRIDRUN_IMAGE"] == "img:1"
    assert cfg["environment"]["GRIDRUN_IMAGE_DIGEST"] == "sha256:abc"
    assert cfg["environment"]["GRIDRUN_EXECUTOR"] == "docker"
    # Relative --results and --cache become absolute mount sources.
    monkeypatch.chdir(tmp_path)
    relative = Launch(JobPaths(paths.dir.relative_to(tmp_path)), Path("cache"), paths.read_spec(), "run-1")
    cfg = container_config(relative, "img:1", "sha256:abc", "python", "1000:1000", 8 * GiB)
    assert {m["Source"] for m in cfg["mounts"]} == {str(paths.dir.parent), str(cache)}


def test_container_user() -> None:
    assert container_user(1001, 1002, "1000:1000") == ("1001:1002", None)  # results belong to the invoker
    assert container_user(0, 0, "1000:1000") == ("1000:1000", (1000, 1000))  # root lends the folder
    assert container_user(0, 0, "1234") == ("1234:1234", (1234, 1234))
    assert container_user(0, 0, "") == ("65534:65534", (65534, 65534))  # an image without a user
    assert container_user(0, 0, "root") == ("65534:65534", (65534, 65534))
    assert container_user(0, 0, "0:0") == ("65534:65534", (65534, 65534))


def test_tag_follows_the_dockerfile_and_the_label_follows_the_code(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "tree"
    for name in ("runner", "schemas", "docker"):
        shutil.copytree(images.ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in images.CONTEXT_FILES:
        shutil.copy(images.ROOT / name, root / name)
    monkeypatch.setattr(images, "ROOT", root)
    tag, source = images.tag("torch"), images.source_hash("torch")
    assert tag.startswith(f"gridrun-torch:{images.__version__}-")
    (root / "runner" / "train" / "worker.py").write_text(
        (root / "runner" / "train" / "worker.py").read_text() + "\n# edited\n"
    )
    assert images.tag("torch") == tag and images.source_hash("torch") != source
    (root / "docker" / "pip-ca" / "ca.crt").write_text("not part of the identity")
    source = images.source_hash("torch")
    dockerfile = root / "docker" / "torch.Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\n# edited\n")
    assert images.tag("torch") != tag and images.source_hash("torch") != source
    assert images.tag("tensorflow").startswith("gridrun-tensorflow:")


def test_no_daemon_is_one_clear_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DAEMON)
    spec = job_spec(executor="docker")
    assert probe(spec) == (False, f"no Docker daemon at {NO_DAEMON}")
    with pytest.raises(UserError, match=r"asks for the docker executor, but no Docker daemon at .*Fix:"):
        choose("docker", spec)
    assert choose("auto", spec).name == "process"
    assert cleanup_stale() == 0
    out = DockerExecutor().run(launch_of(make_job(tmp_path), tmp_path / "cache"))
    assert out.exit_code == 2 and f"no Docker daemon at {NO_DAEMON}. Fix: start it" in out.reason
    for args in (["images"], ["images", "build", "-q"]):
        proc = gridrun(*args, env={"DOCKER_HOST": NO_DAEMON})
        assert proc.returncode == 2, proc.stderr
        assert f"no Docker daemon at {NO_DAEMON}. Fix: start it" in proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout


# ---- a real daemon ------------------------------------------------------------------------------


def daemon_or_skip():
    """The Docker daemon; the test is skipped without one, or fails where REQUIRE_DOCKER=1 says there must be one."""
    client, why = images.try_connect(timeout=10)
    if client is None:
        if REQUIRE:
            pytest.fail(f"REQUIRE_DOCKER=1 but {why}: run `bash docker/ci-setup.sh` first")
        pytest.skip(why)
    return client


@pytest.fixture(scope="session")
def client():
    """The daemon; at the end of the session no container this process started may be left."""
    client = daemon_or_skip()
    yield client
    left = client.containers.list(all=True, filters={"label": f"{OWNER_LABEL}={_owner()}"})
    assert not left, f"containers left behind: {[c.name for c in left]}"


def _image(client, framework: str) -> str:
    """The framework's image for this tree: rebuilt when only the code changed (seconds), else skip or fail."""
    name = images.tag(framework)
    try:
        image = client.images.get(name)
    except Exception:
        if REQUIRE:
            pytest.fail(f"image {name} is not built: run `bash docker/ci-setup.sh` first")
        pytest.skip(f"image {name} not built (make images)")
    if images.state_of(image, name) != "current":
        images.build(framework, ca=images.pip_cert(), say=lambda line: None, client=client)
    return name


@pytest.fixture(scope="session")
def torch_image(client) -> str:
    return _image(client, "torch")


@pytest.fixture(scope="session")
def tf_image(client) -> str:
    return _image(client, "tensorflow")


def _containers(client, job: str) -> list:
    return client.containers.list(all=True, filters={"label": [f"{OWNER_LABEL}={_owner()}", f"gridrun.job={job}"]})


def _in_thread(launch: Launch) -> tuple[threading.Thread, list[Outcome]]:
    outcomes: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcomes.append(DockerExecutor().run(launch)), daemon=True)
    thread.start()
    return thread, outcomes


def _wait_running(client, job: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in _containers(client, job) if c.status == "running"]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no running container for job {job} within {timeout}s")


@pytest.mark.docker
def test_torch_smoke_job_in_a_confined_container(client, torch_image: str, tmp_path: Path, cache: Path) -> None:
    paths = make_job(tmp_path, "torch", name="smoke-torch", resources={"memory_gb": 3})
    thread, outcomes = _in_thread(launch_of(paths, cache))
    container = _wait_running(client, "smoke-torch")
    attrs = client.api.inspect_container(container.id)
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "1000:1000"  # we are root here: the image's own user
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["NetworkMode"] == "none" and host["Memory"] == 3 * GiB and host["PidsLimit"] == PIDS_LIMIT
    assert host["ShmSize"] == int(1.5 * GiB)
    mounts = {m["Destination"]: m for m in attrs["Mounts"]}
    assert mounts["/results/test-suite"]["Source"] == str(paths.dir.parent) and mounts["/results/test-suite"]["RW"]
    assert mounts["/cache"]["RW"] is False
    assert attrs["Config"]["Labels"]["gridrun"] == "1"
    thread.join(300)
    assert outcomes == [Outcome(0, "")], paths.log.read_text()
    assert _containers(client, "smoke-torch") == []  # removed
    result = paths.read_result()
    assert result is not None and result.environment.executor == "docker"
    assert result.environment.image == torch_image
    assert result.environment.image_digest == client.images.get(torch_image).id
    assert "done: test accuracy" in paths.log.read_text()
    # Written by uid 1000 inside, handed back to the invoker afterwards.
    assert {p.stat().st_uid for p in [paths.dir, *paths.dir.rglob("*")]} == {os.getuid()}


@pytest.mark.docker
def test_tensorflow_smoke_job_in_a_container(client, tf_image: str, tmp_path: Path, cache: Path) -> None:
    paths = make_job(tmp_path, "tensorflow", name="smoke-tf")
    outcome = DockerExecutor().run(launch_of(paths, cache))
    assert outcome == Outcome(0, ""), paths.log.read_text()
    result = paths.read_result()
    assert result is not None and result.environment.framework == "tensorflow"
    assert result.environment.image == tf_image and result.environment.image_digest.startswith("sha256:")
    assert _containers(client, "smoke-tf") == []


@pytest.mark.docker
def test_killed_container_fails_the_job_with_a_reason(client, torch_image: str, tmp_path: Path, cache: Path) -> None:
    paths = make_job(tmp_path, "torch", name="killed", train={"epochs": 500})
    thread, outcomes = _in_thread(launch_of(paths, cache))
    _wait_running(client, "killed").kill()
    thread.join(60)
    assert not thread.is_alive(), "the executor hangs after its container was killed"
    [outcome] = outcomes
    assert outcome.exit_code == 137
    assert "killed by SIGKILL (signal 9) during epoch " in outcome.reason and "exit 137" in outcome.reason
    assert outcome.stopped, "the log's last line is not why it ended"
    assert _containers(client, "killed") == []


@pytest.mark.docker
def test_a_container_out_of_memory_is_told_with_its_limit_and_the_fix(
    client, torch_image: str, tmp_path: Path, cache: Path
) -> None:
    paths = make_job(tmp_path, "torch", name="oom", resources={"memory_gb": 0.125})  # less than torch needs
    outcome = DockerExecutor().run(launch_of(paths, cache))
    assert outcome.exit_code == 137 and outcome.stopped, (outcome, paths.log.read_text())
    assert outcome.reason == (
        "out of memory (the container hit its memory limit of 0.125 GiB) during epoch 1 of 1 (none finished): "
        "raise resources.memory_gb"
    )
    assert _containers(client, "oom") == []


@pytest.mark.docker
def test_timeout_stops_and_removes_the_container(client, torch_image: str, tmp_path: Path, cache: Path) -> None:
    paths = make_job(tmp_path, "torch", name="slow", train={"epochs": 500}, resources={"timeout_minutes": 0.1})
    start = time.monotonic()
    outcome = DockerExecutor().run(launch_of(paths, cache))
    assert outcome.exit_code == 124 and outcome.stopped
    assert outcome.reason.startswith("timed out after 0.1 minutes (resources.timeout_minutes) during epoch ")
    assert time.monotonic() - start < 40
    assert _containers(client, "slow") == []


@pytest.mark.docker
def test_keyboard_interrupt_stops_and_removes_the_container(
    client, torch_image: str, tmp_path: Path, cache: Path
) -> None:
    paths = make_job(tmp_path, "torch", name="cancelled", train={"epochs": 500})

    def interrupt_when_running() -> None:
        _wait_running(client, "cancelled")
        _thread.interrupt_main()  # what Ray's cancel and Ctrl-C do to the task

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        DockerExecutor().run(launch_of(paths, cache))
    assert _containers(client, "cancelled") == []


@pytest.mark.docker
def test_daemon_accepts_a_gpu_container_config(client, torch_image: str, tmp_path: Path, cache: Path) -> None:
    """Created, not started: there is no GPU nor nvidia runtime here, but the daemon validates the request."""
    paths = make_job(tmp_path, "torch", name="gpu", resources={"gpus": 1})
    cfg = container_config(launch_of(paths, cache, ("1",)), torch_image, "sha256:x", "python", "1000:1000", 8 * GiB)
    container = client.containers.create(**cfg)
    try:
        requests = client.api.inspect_container(container.id)["HostConfig"]["DeviceRequests"]
        assert [(r["DeviceIDs"], r["Capabilities"]) for r in requests] == [(["1"], [["gpu"]])]
    finally:
        container.remove(force=True)


def _no_nvidia_runtime(client) -> None:
    if any("nvidia" in name for name in client.info().get("Runtimes", {})):
        pytest.skip("this daemon has the NVIDIA runtime: it can pass GPUs")


@pytest.mark.docker
def test_a_daemon_without_the_nvidia_runtime_is_refused_for_a_gpu_job(
    client, torch_image: str, tmp_path: Path, cache: Path
) -> None:
    _no_nvidia_runtime(client)
    paths = make_job(tmp_path, "torch", name="gpu", resources={"gpus": 1})
    # At the job's start, on its node: before devices are requested, one reason with the fix, no container.
    outcome = DockerExecutor().run(launch_of(paths, cache, ("1",)))
    assert outcome.exit_code == 2, "a user's fix, not retried"
    assert outcome.reason.startswith("the Docker daemon has no NVIDIA runtime (its runtimes: "), outcome.reason
    assert "cannot give a container the 1 GPU(s) the job reserves" in outcome.reason
    assert "Fix: install the NVIDIA Container Toolkit" in outcome.reason and "nvidia-ctk" in outcome.reason
    assert _containers(client, "gpu") == [] and not paths.result.exists()
    # In the plan, before anything runs: `docker` asked for is refused; `auto` takes the process executor, saying why.
    spec = job_spec("torch", name="gpu", resources={"gpus": 1}, executor="docker")
    with pytest.raises(UserError, match=r"job 'gpu' asks for the docker executor, but the Docker daemon has no NVIDIA"):
        choose("docker", spec)
    auto = choose("auto", spec)
    assert auto.name == "process" and "has no NVIDIA runtime" in auto.reason and "host's Python" in auto.reason
    assert choose("auto", job_spec("torch", name="cpu")).name == "docker", "a job without GPUs still gets docker"


@pytest.mark.docker
def test_gpu_fallback_cpu_runs_the_container_without_a_gpu_and_records_it(
    client, torch_image: str, tmp_path: Path, cache: Path
) -> None:
    _no_nvidia_runtime(client)
    paths = make_job(tmp_path, "torch", name="gpu-fallback", model={"classifier_width": 16},
                     resources={"gpus": 1, "gpu_fallback": "cpu"})  # fmt: skip
    outcome = DockerExecutor().run(launch_of(paths, cache, ("1",)))
    log = paths.log.read_text()
    assert outcome == Outcome(0, ""), log
    assert "the container gets no GPU: the Docker daemon has no NVIDIA runtime" in log
    assert "SUBSTITUTE device: cpu stands in for 1 GPU(s)" in log
    result = paths.read_result()
    assert result.environment.device == "cpu" and result.environment.executor == "docker"
    assert [s.kind for s in result.substitutions] == ["device"]
    assert "CUDA_VISIBLE_DEVICES=, " in result.substitutions[0].reason, "the container was given no GPU"


@pytest.mark.docker
def test_cleanup_stale_removes_only_orphans(client, torch_image: str) -> None:
    import socket

    dead = f"{socket.gethostname()}:999999999:"  # no such pid
    orphan = client.containers.create(torch_image, ["true"], labels={"gridrun": "1", OWNER_LABEL: dead})
    mine = client.containers.create(torch_image, ["true"], labels={"gridrun": "1", OWNER_LABEL: _owner()})
    try:
        assert cleanup_stale() >= 1
        ids = {c.id for c in client.containers.list(all=True, filters={"label": "gridrun=1"})}
        assert orphan.id not in ids and mine.id in ids
    finally:
        for c in (orphan, mine):
            with contextlib.suppress(Exception):
                c.remove(force=True)


@pytest.mark.docker
def test_probe_and_missing_images(client, torch_image: str, tmp_path: Path, monkeypatch) -> None:
    ok, why = probe(job_spec("torch"))
    assert ok and torch_image in why
    missing = "localhost:1/gridrun-missing:0"  # a registry that refuses at once
    ok, why = probe(job_spec("torch", image=missing))
    assert not ok and why.startswith(f"image {missing} is neither on this machine nor pullable (")
    with pytest.raises(UserError, match=r"neither on this machine nor pullable .*Fix: build or load it here"):
        ensure_image(job_spec("torch", image=missing))
    # Even under auto: a job that names its own image never falls back to the host's Python.
    with pytest.raises(UserError, match=rf"asks for its own image {missing}, but image {missing} is neither"):
        choose("auto", job_spec("torch", image=missing))
    paths = make_job(tmp_path, "torch", name="own-image", image=missing)
    outcome = DockerExecutor().run(launch_of(paths, tmp_path / "cache"))
    assert outcome.exit_code == 2 and "neither on this machine nor pullable" in outcome.reason
    assert ensure_image(job_spec("torch", image=torch_image)) == client.images.get(torch_image).id
    # A framework image that is not built (its Dockerfile changed): the plan says `run` builds it.
    monkeypatch.setattr(images, "tag", lambda framework: f"gridrun-{framework}:0.0.0-notbuilt")
    planned = "image gridrun-torch:0.0.0-notbuilt is not built; `run` builds it first"
    assert probe(job_spec("torch")) == (True, planned)
    assert (choose("auto", job_spec("torch")).name, choose("auto", job_spec("torch")).reason) == ("docker", planned)
    # ... and the run does not try a build that needs a package index it cannot reach: auto falls back.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")  # the discard port: refused at once
    choice = choose("auto", job_spec("torch"), build=True)
    assert choice.name == "process"
    assert choice.reason.startswith(
        "image gridrun-torch:0.0.0-notbuilt is not built, and it cannot be built here: "
        "the package index http://127.0.0.1:9/simple/ does not answer ("
    )
    refused = r"asks for the docker executor, but image \S+ is not built, and it cannot be built here"
    with pytest.raises(UserError, match=refused):
        choose("docker", job_spec("torch"), build=True)


@pytest.mark.docker
def test_run_rebuilds_an_image_built_from_other_code(client, torch_image: str) -> None:
    """An image whose code is out of date is rebuilt before the run (the code layer; here every layer is
    cached), the out-of-date build is removed, and the job runs in docker, not in the host's Python."""
    import io

    current = client.images.get(torch_image).id
    stale_file = f"FROM {torch_image}\nLABEL {images.LABEL_SOURCE}=0000000000000000\n".encode()
    stale = client.images.build(fileobj=io.BytesIO(stale_file), tag=torch_image, rm=True)[0].id
    try:
        assert images.state_of(client.images.get(torch_image), torch_image) == "stale"
        assert choose("auto", job_spec("torch")).reason.endswith(
            "(only its code layer is rebuilt); `run` builds it first"
        )
        said: list[str] = []
        choice = choose("auto", job_spec("torch"), build=True, say=said.append)
        assert (choice.name, choice.image) == ("docker", torch_image), choice.reason
        assert (
            choice.reason == f"image {torch_image} was built from other code (only its code layer is rebuilt); "
            "built it before the run"
        )
        assert said[0].endswith("building it now") and said[-1].startswith(f"built {torch_image} in ")
        steps = [line for line in said if line.startswith("Step ")]
        assert steps and all("\n" not in line for line in steps), "one line per build step"
        # Current again (not necessarily `current`'s id: another test process may have rebuilt the code layer
        # of an image that was stale when the tests began, and the build cache holds both).
        assert images.state_of(client.images.get(torch_image), torch_image) == "current"
        assert not images._has_image(client, stale), "the out-of-date build was left behind"
    finally:
        if images.state_of(client.images.get(torch_image), torch_image) != "current":
            client.images.get(current).tag(torch_image)


@pytest.mark.docker
def test_images_command_lists_digests_and_the_ca_stays_out(client, torch_image: str) -> None:
    proc = gridrun("images")
    assert proc.returncode == 0, proc.stderr
    assert torch_image in proc.stdout and client.images.get(torch_image).id[:19] in proc.stdout
    # The proxy CA reached only the builder stage: no layer of the image copied it.
    history = " ".join(h.get("CreatedBy", "") for h in client.api.history(torch_image))
    assert "pip-ca" not in history and "/opt/venv" in history
    assert client.images.get(torch_image).labels[images.LABEL_VERSION] == images.__version__


@pytest.mark.docker
def test_images_prune_removes_old_tags_only(client, torch_image: str) -> None:
    """A tag of another version or Dockerfile goes; the current image stays."""
    old = "gridrun-torch:0.0.1-000000000000"
    client.images.get(torch_image).tag(old)
    try:
        assert any(r.tag == old and r.state == "old" for r in images.list_images(client))
        proc = gridrun("images", "prune")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"removed {old} (" in proc.stdout
        assert not images._has_image(client, old) and images._has_image(client, torch_image)
        again = gridrun("images", "prune")
        assert again.returncode == 0 and "no old gridrun images" in again.stdout
    finally:
        with contextlib.suppress(Exception):
            client.images.remove(old)


@pytest.mark.docker
def test_smoke_suite_runs_in_containers_and_writes_the_same_files(torch_image, tf_image, tmp_path: Path) -> None:
    """`gridrun run jobs/smoke.yaml --executor docker`: both frameworks in their images, the same results contract."""
    from runner.store.layout import SuitePaths
    from tests.conftest import REPO

    results = tmp_path / "results"
    proc = gridrun("run", str(REPO / "jobs/smoke.yaml"), "--results", str(results), "--cache", str(tmp_path / "cache"),
                   "--executor", "docker", "--no-report")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, image in (("smoke-torch", torch_image), ("smoke-tf", tf_image)):
        paths = SuitePaths.of(results, "smoke").job(name)
        status, result = paths.read_status(), paths.read_result()
        assert status.executor == "docker" and result is not None
        env = result.environment
        assert (env.executor, env.image) == ("docker", image) and env.image_digest.startswith("sha256:")
        # cpus: 1 as the container's CFS quota and the framework's pools; memory capped by the container's cgroup.
        assert (env.limits.cpu_quota, env.limits.cpu_threads, env.limits.interop_threads) == (1, 1, 1), env.limits
        assert env.limits.memory_limit_gb is not None and env.limits.memory_limit_gb > 0, env.limits
        assert {"spec.json", "status.json", "result.json", "log.txt", "tb", "checkpoints"} <= {
            p.name for p in paths.dir.iterdir()
        }
        assert [e.epoch for e in result.epochs] == [1, 2] and any(paths.tb.glob("events.out.tfevents.*"))


@pytest.mark.docker
def test_a_rebuild_removes_the_image_it_took_the_tag_from(client) -> None:
    """Rebuilds (code changes) must not pile up untagged multi-GB images; a still-tagged one is kept."""
    import io

    if not images._has_image(client, images.OFFLINE_BASE):
        pytest.skip(f"{images.OFFLINE_BASE} not built (bash docker/base/build.sh)")
    name, other = f"gridrun-test-rebuild:{os.getpid()}", f"gridrun-test-keep:{os.getpid()}"

    def build(label: str) -> str:
        dockerfile = f"FROM {images.OFFLINE_BASE}\nLABEL gridrun.test={label}\n".encode()
        return client.images.build(fileobj=io.BytesIO(dockerfile), tag=name, rm=True)[0].id

    said: list[str] = []
    try:
        first = build("first")
        second = build("second")
        images._remove_untagged(client, first, said.append)
        assert not images._has_image(client, first) and images._has_image(client, second)
        assert said == [f"removed the previous build {first[:19]}"]
        client.images.get(second).tag(other)
        build("third")
        images._remove_untagged(client, second, said.append)
        assert images._has_image(client, other), "an image with another tag was removed"
    finally:
        for tag in (name, other):
            with contextlib.suppress(Exception):
                client.images.remove(tag, force=True)
