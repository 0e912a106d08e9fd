"""The short chaos run of `make test` (`make chaos` runs the long one): a worker, a container and the driver
killed while a suite runs; every job succeeds exactly once, whole, and nothing is left running."""

import os
from pathlib import Path

import pytest
from chaos import chaos, docker_available


@pytest.mark.slow
def test_kills_of_a_worker_a_container_and_the_driver_lose_nothing(tmp_path: Path) -> None:
    docker = docker_available()
    if not docker and os.environ.get("REQUIRE_DOCKER"):
        pytest.fail("REQUIRE_DOCKER is set but Docker or the torch image is not available")
    order = ["worker", *(["container"] if docker else []), "driver-kill", "driver-term"]
    # Eight one-second epochs a job: the last kills wait 1-3 s each for a victim, and a job must still be running.
    figures, problems = chaos(tmp_path, kills=len(order), jobs=2, epochs=8, seed=7, docker=docker, order=order)
    print(f"kills {dict(figures.kills)}, restarts {figures.restarts}, exits {figures.exits}, {figures.wall_s:.0f} s,")
    print(f"{figures.interrupted} job(s) seen interrupted after the driver's SIGKILL")
    assert problems == []
    # (after the driver's SIGKILL, each job it left running must read interrupted: `problems` says if not)
    assert sum(figures.kills.values()) == len(order) and figures.restarts >= 2
