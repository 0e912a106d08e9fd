"""Shared fixtures: the gridrun command as a subprocess, and a cache with no network needed."""

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3server import S3Server, running_s3_server

REPO = Path(__file__).resolve().parents[1]
# A head kept by `gridrun up` (the user's, or another test's) must not serve the tests' commands: each test
# process has a state folder of its own, and tests of the kept head one per test.
os.environ["GRIDRUN_STATE_DIR"] = tempfile.mkdtemp(prefix="gridrun-state-")


def gridrun(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m runner <args>` as a user would; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "400", **(env or {})},
    )


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/smoke of one real `gridrun run` of jobs/smoke.yaml (once per session), with two more jobs
    so that a report shows every kind of row: one whose dataset falls back to digits, one that times out."""
    import yaml

    root = tmp_path_factory.mktemp("smoke")
    suite = yaml.safe_load((REPO / "jobs" / "smoke.yaml").read_text())
    suite["jobs"] += [
        {"name": "smoke-fallback", "framework": "torch",
         "dataset": {"name": "imagefolder", "path": str(root / "no-such-folder"), "fallback": "digits", "limit": 200}},
        {"name": "smoke-timeout", "framework": "torch", "resources": {"timeout_minutes": 0.002}},
    ]  # fmt: skip
    (root / "smoke.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    proc = gridrun("run", str(root / "smoke.yaml"), "--results", str(root / "results"), "--cache", str(root / "cache"),
                   "--executor", "process")  # fmt: skip
    suite_dir = root / "results" / suite["suite"]
    assert (suite_dir / "smoke-torch" / "result.json").is_file(), proc.stdout + proc.stderr
    return suite_dir


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 16 MiB tmpfs: enough for spec, logs and TensorBoard, far too small for an AlexNet checkpoint."""
    mount = tmp_path / "small disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture(scope="session")
def s3server() -> Iterator[S3Server]:
    """A real S3 API on 127.0.0.1 (moto's server mode), for the whole session."""
    with running_s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def s3server_auth() -> Iterator[S3Server]:
    """A second server that checks credentials: any access key it was not given is refused."""
    with running_s3_server(auth=True) as server:
        yield server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long tests first (those that train, start containers or clusters), in file order: the two xdist
    workers then finish together, instead of one waiting idle on the other's last long test."""
    for item in items:
        # What reads the session's real smoke run needs that run first: not part of `make test-fast`.
        if "smoke_results" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.runs)
    long = ("slow", "docker", "cluster", "tensorflow")
    items.sort(key=lambda item: 0 if any(item.get_closest_marker(m) for m in long) else 1)
