"""Shared fixtures: the gridrun command as a subprocess, and a cache with no network needed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def gridrun(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """Run `python -m runner <args>` as a user would; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path
