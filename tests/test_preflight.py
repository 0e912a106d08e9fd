"""The preflight before attaching to a cluster: one ray.init in a short-lived child process, its outcome
made into one message. Most of this needs no Ray cluster: the child is watched and killed the same way
whatever it runs, and the messages come from Ray's own wording. The real heads are in tests/test_remote.py.
"""

import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, gridrun

from runner.schedule import cluster
from runner.schedule.cluster import Preflight, Target, parse_address, preflight_problem

GCS = parse_address("10.0.0.5:6379")
CLIENT = parse_address("ray://10.0.0.5:10001")
AUTO = parse_address("auto")
# Ray's words, as ray.init says them (ray/_private/services.py, ray/_private/utils.py, the C++ GCS client).
NO_LOCAL = (
    "ConnectionError: Could not find any running Ray instance. Please specify the one to connect to by "
    "setting `--address` flag or `RAY_ADDRESS` environment variable."
)
MISMATCH = (
    "Version mismatch: The cluster was started with:\n    Ray: 2.9.3\n    Python: 3.10.12\n"
    "This process on node 10.0.0.7 was started with:\n    Ray: 2.60.0\n    Python: 3.11.7\n"
)
REFUSED_LINE = (
    "[2026-01-01 00:00:00,000 W 1 1] gcs_client.cc:210: Failed to get cluster ID from GCS server: "
    "Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect"
)
SILENT_LINE = (
    "[2026-01-01 00:00:00,000 W 1 1] rpc_client.h:153: Failed to connect to GCS at address 10.0.0.5:6379 "
    "within 5 seconds."
)


def failed(error: str, message: str, lines: list[str] | None = None) -> Preflight:
    return Preflight(lines or [], {"error": error, "message": message, "text": f"Traceback ...\n{error}: {message}"})


def test_a_child_that_prints_a_refusal_is_stopped_at_once() -> None:
    code = f"import time; print({REFUSED_LINE!r}, flush=True); time.sleep(60)"
    started = time.monotonic()
    outcome = cluster._watch([sys.executable, "-c", code], {}, timeout=30)
    assert time.monotonic() - started < 10, "no waiting for the child's own retries"
    assert outcome.lines == [REFUSED_LINE] and not outcome.timed_out
    assert "refused the token" in str(preflight_problem(GCS, "secret", outcome))
    assert "none was given" in str(preflight_problem(GCS, None, outcome))


def test_a_child_that_says_nothing_is_killed_at_the_deadline(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    started = time.monotonic()
    outcome = cluster._watch([sys.executable, "-c", code], {}, timeout=2)
    assert outcome.timed_out and 1.5 < time.monotonic() - started < 10
    assert not Path(f"/proc/{pid_file.read_text()}").exists(), "the child is gone"
    for target, told in ((GCS, "does not answer as a Ray head"), (CLIENT, "the Ray Client server at")):
        message = str(preflight_problem(target, None, outcome))
        assert told in message and "no answer within" in message and "Fix:" in message


def test_a_child_that_connects_is_no_problem() -> None:
    code = f"print({cluster._MARK!r} + '{{\"ok\": true}}')"
    outcome = cluster._watch([sys.executable, "-c", code], {}, timeout=30)
    assert outcome.result == {"ok": True} and preflight_problem(GCS, None, outcome) is None


def test_each_failure_is_one_message_that_names_the_fix() -> None:
    auto = str(preflight_problem(AUTO, None, failed("ConnectionError", NO_LOCAL.split(": ", 1)[1])))
    assert auto.startswith("--address auto found no Ray cluster started on this machine") and "ray start --head" in auto

    other = str(preflight_problem(GCS, None, failed("RuntimeError", MISMATCH)))
    assert "the Ray cluster at 10.0.0.5:6379 runs Ray 2.9.3 with Python 3.10.12" in other
    assert "pip install 'ray[default]==2.9.3'" in other

    missing = failed("AuthenticationError", "Token authentication is enabled but no authentication token was found")
    assert "none was given" in str(preflight_problem(GCS, None, missing))

    silent = str(preflight_problem(GCS, None, Preflight([SILENT_LINE])))
    assert "does not answer as a Ray head" in silent and "Fix:" in silent
    stale = str(preflight_problem(AUTO, None, Preflight([SILENT_LINE])))
    assert "--address auto found a Ray cluster address" in stale and "does not answer" in stale
    client = str(preflight_problem(CLIENT, None, failed("ConnectionError", "ray client connection timeout")))
    assert "the Ray Client server at ray://10.0.0.5:10001 does not answer" in client


def test_an_unforeseen_error_is_told_without_the_token() -> None:
    token = "tok-" + "9" * 30
    outcome = failed("ValueError", f"something odd about {token}\nmore lines")
    message = str(preflight_problem(Target("gcs", "10.0.0.5:6379", "10.0.0.5", 6379), token, outcome))
    assert message.startswith("cannot attach to the Ray cluster at 10.0.0.5:6379: ValueError: something odd about")
    assert token not in message and "more lines" not in message and "Fix:" in message


@pytest.mark.runs
def test_an_address_that_does_not_speak_ray_is_told_in_seconds(tmp_path: Path) -> None:
    """A port that accepts connections but is no Ray head: Ray alone retries for about 40 s."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        held = []
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accept, read nothing, answer nothing
            except TimeoutError:
                continue
        for conn in held:
            conn.close()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        for address, told in ((f"127.0.0.1:{port}", "does not answer as a Ray head"),
                              (f"ray://127.0.0.1:{port}", "the Ray Client server at")):  # fmt: skip
            started = time.monotonic()
            proc = gridrun("run", str(REPO / "jobs/smoke.yaml"), "--results", str(tmp_path / "r"), "--address",
                           address, env={"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": ""})  # fmt: skip
            elapsed = time.monotonic() - started
            assert proc.returncode == 2 and told in proc.stderr and "Fix:" in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
            assert elapsed < 30, f"told after {elapsed:.0f} s"
    finally:
        stop.set()
        acceptor.join()
        server.close()
    assert not (tmp_path / "r").exists()
