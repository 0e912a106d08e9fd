"""A suite sent to a real Ray head through the Jobs API, with token authentication on.

The head is started by the test (`ray start --head`, dashboard on 127.0.0.1, logical GPUs, RAY_AUTH_MODE=token);
gridrun submit, jobs, logs, cancel and fetch run against it as a user would run them. Wrong, missing and
unnecessary-to-risk tokens are refused with one message, and the token is never printed or written.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import ray
from conftest import gridrun
from raycluster import RayCluster

from runner.schedule.cluster import version_problem
from runner.store.layout import SuitePaths
from schemas import JobState

pytestmark = pytest.mark.runs  # starts Ray or a worker that trains: not in `make test-fast`

TOKEN = "gridrun-remote-token-" + "5" * 24
SUITE = """\
suite: {suite}
defaults:
  dataset: {{name: synthetic, image_size: 64, synthetic_size: 200}}
  model: {{arch: alexnet, classifier_width: 32}}
  train: {{epochs: {epochs}, batch_size: 50}}
  resources: {{gpus: 1, cpus: 1, gpu_fallback: cpu}}  # the head's GPUs are logical: the CPU stands in
jobs:
  - {{name: one, framework: torch}}
"""


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory):
    ray_head = RayCluster(tmp_path_factory.mktemp("head"), token=TOKEN)
    try:
        ray_head.start_head(cpus=2, gpus=2)
        yield ray_head
    finally:
        ray_head.stop()


def env_of(head: RayCluster | None, token: str | None = TOKEN) -> dict[str, str]:
    """The user's environment: the cluster's token (or none), and a home of its own (no ~/.ray/auth_token)."""
    home = head.home if head else Path("/nonexistent-home")
    return {"HOME": str(home), "RAY_AUTH_TOKEN": token or "", "RAY_AUTH_TOKEN_PATH": "", "RAY_AUTH_MODE": ""}


def suite_file(tmp_path: Path, name: str, epochs: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(suite=name, epochs=epochs))
    return path


def flat(text: str) -> str:
    return " ".join(text.split())


def submission_ids(head: RayCluster) -> set[str]:
    listed = gridrun("jobs", "--address", head.jobs_api, env=env_of(head))
    assert listed.returncode == 0, listed.stderr
    return set(re.findall(r"gridrun-[\w.-]+-[0-9a-f]{8}", listed.stdout))


def test_submit_jobs_logs_and_fetch_with_the_token(head, tmp_path: Path) -> None:
    outputs = []
    sub = gridrun("submit", str(suite_file(tmp_path, "sent", 1)), "--address", head.jobs_api, "--executor", "process",
                  env=env_of(head))  # fmt: skip
    outputs.append(sub)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    sid = sub.stdout.splitlines()[0].strip()
    assert re.fullmatch(r"gridrun-sent-[0-9a-f]{8}", sid), sub.stdout

    listed = gridrun("jobs", "--address", head.jobs_api, env=env_of(head))
    outputs.append(listed)
    row = next(ln for ln in listed.stdout.splitlines() if sid in ln)
    assert "sent" in row and re.search(r"PENDING|RUNNING|SUCCEEDED", row)

    follow = gridrun("logs", sid, "--follow", "--address", head.jobs_api, env=env_of(head), timeout=300)
    outputs.append(follow)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert "one: succeeded" in follow.stdout and "all 1 job(s) done" in follow.stdout
    assert f"job {sid}: SUCCEEDED" in follow.stderr
    logs = gridrun("logs", sid, "--address", head.jobs_api, env=env_of(head))
    outputs.append(logs)
    assert "all 1 job(s) done" in logs.stdout

    fetched = tmp_path / "fetched"
    fetch = gridrun("fetch", sid, "--results", str(fetched), "--address", head.jobs_api, env=env_of(head),
                    timeout=300)  # fmt: skip
    outputs.append(fetch)
    assert fetch.returncode == 0, fetch.stdout + fetch.stderr
    assert re.search(r"fetched \d+ file\(s\)", fetch.stdout)
    paths = SuitePaths.of(fetched, "sent").job("one")
    status, result = paths.read_status(), paths.read_result()
    assert status.state == JobState.SUCCEEDED and result is not None and len(result.epochs) == 1
    assert paths.checkpoint("last", ".pt").stat().st_size > 1_000_000 and paths.log.is_file()
    on_cluster = head.home / "gridrun-results" / sid / "sent" / "one"
    assert {p.relative_to(on_cluster) for p in on_cluster.rglob("*") if p.is_file()} == {
        p.relative_to(paths.dir) for p in paths.dir.rglob("*") if p.is_file()
    }, "the whole folder came back"

    # The token appears nowhere: not in what gridrun printed, the job's log, the results on either side.
    for proc in outputs:
        assert TOKEN not in proc.stdout + proc.stderr
    for folder in (fetched, head.home / "gridrun-results"):
        for path in folder.rglob("*"):
            assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.slow  # a submitted suite started and cancelled: about 40 s
def test_cancel_stops_a_submitted_suite_and_marks_its_runs(head, tmp_path: Path) -> None:
    sub = gridrun("submit", str(suite_file(tmp_path, "stopped", 400)), "--address", head.jobs_api,
                  "--executor", "process", env=env_of(head))  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    sid = sub.stdout.splitlines()[0].strip()
    deadline = time.monotonic() + 240
    while "running, epoch" not in gridrun("logs", sid, "--address", head.jobs_api, env=env_of(head)).stdout:
        assert time.monotonic() < deadline, "the submitted suite never started training"
        time.sleep(2)
    stop = gridrun("cancel", sid, "--address", head.jobs_api, env=env_of(head))
    assert stop.returncode == 0 and f"stopping {sid}" in stop.stdout, stop.stdout + stop.stderr
    follow = gridrun("logs", sid, "--follow", "--address", head.jobs_api, env=env_of(head), timeout=180)
    assert follow.returncode == 130 and f"job {sid}: STOPPED" in follow.stderr, follow.stdout + follow.stderr
    status = SuitePaths.of(head.home / "gridrun-results" / sid, "stopped").job("one").read_status()
    assert status.state == JobState.CANCELLED and status.reason == "cancelled by `gridrun cancel`"


def test_a_missing_or_wrong_token_is_refused_and_nothing_runs(head, tmp_path: Path) -> None:
    suite = suite_file(tmp_path, "refused", 1)
    before = submission_ids(head)
    missing = gridrun("submit", str(suite), "--address", head.jobs_api, env=env_of(head, token=None))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "requires a token (token authentication is on) and none was given" in flat(missing.stderr)
    assert "RAY_AUTH_TOKEN" in missing.stderr
    wrong = gridrun("submit", str(suite), "--address", head.jobs_api, env=env_of(head, token="not-the-token"))
    assert wrong.returncode == 2 and "refused the token" in flat(wrong.stderr), wrong.stderr
    assert "not-the-token" not in wrong.stdout + wrong.stderr
    for address in (head.address, head.client_address):  # attaching the driver itself: GCS and Ray Client
        for token, told in (("not-the-token", "refused the token"), (None, "and none was given")):
            started = time.monotonic()
            run = gridrun("run", str(suite), "--address", address, "--results", str(tmp_path / "results"),
                          env=env_of(head, token=token))  # fmt: skip
            assert run.returncode == 2 and told in flat(run.stderr), run.stdout + run.stderr
            assert "Traceback" not in run.stderr and "not-the-token" not in run.stdout + run.stderr
            assert time.monotonic() - started < 30, "a refused token is told at once, not after Ray's retries"
    assert not (tmp_path / "results").exists()
    assert submission_ids(head) == before, "nothing was submitted"


def test_a_cluster_on_another_ray_release_is_refused_in_seconds(head, tmp_path: Path) -> None:
    """A driver attaching to a head that recorded another Ray and Python release. (Through Ray Client the
    same message comes from the same check; on a loaded machine that server's own start can fail first.)"""
    suite = suite_file(tmp_path, "elsewhere", 1)
    with head.pretend_release("2.9.3", "3.10.12"):
        run = gridrun("run", str(suite), "--address", head.address, "--results", str(tmp_path / "results"),
                      env=env_of(head))  # fmt: skip
        message = flat(run.stderr)
        assert run.returncode == 2 and "Traceback" not in message, run.stdout + run.stderr
        assert f"the Ray cluster at {head.address} runs Ray 2.9.3 with Python 3.10.12" in message, message
        assert "pip install 'ray[default]==2.9.3'" in message
        assert TOKEN not in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()


def test_beyond_this_machine_a_token_is_required_unless_insecure(tmp_path: Path) -> None:
    suite = suite_file(tmp_path, "far", 1)
    far = "http://192.0.2.10:8265"  # TEST-NET-1: never a real host
    for args in (("submit", str(suite), "--address", far), ("run", str(suite), "--address", "10.1.2.3:6379")):
        refused = gridrun(*args, env=env_of(None, token=None))
        message = flat(refused.stderr)
        assert refused.returncode == 2 and "refusing to use the Ray cluster at" in message, refused.stderr
        assert "CVE-2023-48022" in message and "RAY_AUTH_TOKEN" in message and "--insecure" in message
    insecure = gridrun("jobs", "--address", far, "--insecure", env=env_of(None, token=None))
    assert insecure.returncode == 2 and "cannot reach a Ray cluster at http://192.0.2.10:8265" in flat(insecure.stderr)


class _OldDashboard(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"ray_version": "2.9.3", "version": "4", "ray_commit": "x"}).encode()
        self.send_response(200 if self.path == "/api/version" else 404)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_another_ray_release_on_the_cluster_is_named(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _OldDashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = gridrun("jobs", "--address", f"http://127.0.0.1:{server.server_port}", env=env_of(None, token=None))
    finally:
        server.shutdown()
    message = flat(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in message
    assert f"runs Ray 2.9.3; this gridrun uses Ray {ray.__version__}" in message
    assert "pip install 'ray[default]==2.9.3'" in message

    # Attaching a driver: Ray's own version check, its message made into gridrun's.
    from ray._private.utils import check_version_info

    with pytest.raises(RuntimeError) as raised:
        check_version_info({"ray_version": "2.9.3", "python_version": "3.10.12"}, "this machine")
    problem = str(version_problem("head:6379", str(raised.value)))
    assert "the Ray cluster at head:6379 runs Ray 2.9.3 with Python 3.10.12; this gridrun runs Ray" in problem
    assert f"Ray {ray.__version__} with Python" in problem and "Fix:" in problem
