"""A real S3 API server for tests: moto in server mode, as a subprocess on a free local port."""

import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pytest

KEY_ID = "testing-key-id"
SECRET = "FAKE-SECRET-do-not-print-7Qx9"  # recognisable: a test asserts it never appears in a message


@dataclass
class S3Server:
    """A running moto server: its endpoint, the environment that points clients at it, and its process."""

    endpoint: str
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)
    log: IO[bytes] | None = None  # the server's request log (a file: a pipe nobody reads would fill and block it)

    def client(self) -> Any:
        """A boto3 client with the test credentials (boto3 comes with moto[server])."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )

    def make_bucket(self, name: str) -> str:
        """Create a bucket; returns its name."""
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.log is not None:
            self.log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(endpoint: str) -> bool:
    parts = urlsplit(endpoint)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=1)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        conn.getresponse().read()
        return True  # any status: it answers
    except OSError:
        return False
    finally:
        conn.close()


def start_s3_server(auth: bool = False, timeout: float = 30) -> S3Server:
    """Start `moto_server` (from this interpreter's bin folder) and wait until it answers.

    With `auth`, moto checks credentials against its own IAM (INITIAL_NO_AUTH_ACTION_COUNT=0), so a request with
    an unknown access key fails with 403 InvalidAccessKeyId; without, it accepts any credentials.
    """
    script = Path(sys.executable).with_name("moto_server")
    env = {**os.environ}
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    else:
        env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
    last = ""
    for _attempt in range(3):  # the free port may be taken between finding it and moto binding it
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server; S3Server.stop closes it
        cmd = [str(script), "-H", "127.0.0.1", "-p", str(port)]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(endpoint):
                return S3Server(endpoint=endpoint, process=proc, env=s3_env(endpoint), log=log)
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.seek(0)
        last = log.read().decode(errors="replace")[-2000:]
        log.close()
    raise RuntimeError(f"moto_server did not start: {last}")


def s3_env(endpoint: str) -> dict[str, str]:
    """Variables that point S3 clients at `endpoint` with the fake credentials, and away from ~/.aws and IMDS."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# Variables of the developer's own setup that would override or add to the test's.
CLEARED = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION")


@contextmanager
def running_s3_server(auth: bool = False) -> Iterator[S3Server]:
    """A server for the duration of the block."""
    server = start_s3_server(auth=auth)
    try:
        yield server
    finally:
        server.stop()


def use_server(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> S3Server:
    """Point this test's environment at `server` (monkeypatch restores it afterwards)."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    return server
