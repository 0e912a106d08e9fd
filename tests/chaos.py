"""Chaos: a suite of small jobs while workers, containers and the driver are killed at random points.

    python tests/chaos.py [--kills 12] [--jobs 4] [--epochs 4] [--seed 1] [--docker/--no-docker] [--baseline]

Each round starts `gridrun run`, waits a random while, then kills one thing: a worker (SIGKILL), a container
(`docker kill`), or the driver (SIGKILL, SIGTERM, Ctrl-C). A killed worker or container is retried by the
driver; a killed driver is started again. After the last kill the run is left to finish. Then every job
must have succeeded exactly once (one "done:" line in its log), every result.json must be whole and
readable with every epoch, and no process or container of any round may be left. The figures (kills by
kind, restarts, epochs trained against needed, wall time, and with --baseline the time lost against an
uninterrupted run) are printed; the exit code is 1 when a check fails.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.execute.reaper import marked  # noqa: E402
from runner.store import ResultsStore  # noqa: E402

SUITE = "chaos"


def suite_yaml(jobs: int, epochs: int, docker: bool) -> str:
    lines = [
        f"suite: {SUITE}",
        "defaults:",
        "  framework: torch",
        "  dataset: {name: synthetic, image_size: 64, synthetic_size: 400}",
        "  model: {arch: alexnet, classifier_width: 32}",
        f"  train: {{epochs: {epochs}, batch_size: 50}}",
        "  resources: {gpus: 0, cpus: 1, max_retries: 10}",
        "  executor: process",
        "jobs:",
    ]
    for i in range(jobs):
        executor = "docker" if docker and i % 2 == 1 else "process"
        lines.append(f"  - {{name: job-{i}, executor: {executor}, train: {{seed: {i + 1}}}}}")
    return "\n".join(lines) + "\n"


@dataclass
class Figures:
    kills: Counter = field(default_factory=Counter)
    restarts: int = 0
    run_ids: set[str] = field(default_factory=set)
    exits: list[int] = field(default_factory=list)
    wall_s: float = 0.0
    expect_exit: int | None = None  # the exit code a driver signalled must end with
    wrong_exits: list[str] = field(default_factory=list)
    interrupted: int = 0  # jobs seen interrupted after a driver's SIGKILL


def start(suite: Path, results: Path, cache: Path, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "runner", "run", str(suite), "--results", str(results), "--cache", str(cache)]
    return subprocess.Popen(
        [*cmd, "--no-report"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def run_ids(results: Path) -> set[str]:
    found = set()
    for status in (results / SUITE).glob("*/status.json"):
        try:
            owner = json.loads(status.read_text()).get("owner") or {}
        except (OSError, ValueError):
            continue
        if owner.get("run_id"):
            found.add(owner["run_id"])
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def workers(ids: set[str]) -> list[int]:
    """The runs' workers: marked, or forked by a marked warm server (a forked worker's title hides its mark)."""
    found = set()
    for run in ids:
        mine = set(marked(run))
        for entry in Path("/proc").glob("[0-9]*"):
            pid = int(entry.name)
            if (pid in mine or _parent(pid) in mine) and "runner.train.worker" in _cmdline(pid):
                found.add(pid)
    return sorted(found)


def containers(ids: set[str]) -> list:
    try:
        import docker

        client = docker.from_env(timeout=10)
        return [c for run in ids for c in client.containers.list(filters={"label": f"gridrun.run_id={run}"})]
    except Exception:
        return []


def running(results: Path, docker: bool) -> bool:
    """Whether some job of the suite trains now: a worker process here, or one of its containers."""
    ids = run_ids(results)
    return bool(workers(ids) or (docker and containers(ids)))


KINDS = ("worker", "container", "driver-kill", "driver-term", "driver-int")


def kill_one(
    driver: subprocess.Popen, results: Path, rng: random.Random, docker: bool, figures: Figures, want: str | None
) -> bool:
    """Kill one thing of the running suite (of kind `want`, else any there is now); whether one was killed."""
    ids = run_ids(results)
    figures.run_ids |= ids
    victims: dict[str, list] = {"worker": workers(ids), "container": containers(ids) if docker else []}
    kinds = [k for k in KINDS if k not in victims or victims[k]]
    kind = want if want is not None else rng.choice(kinds)
    if kind not in kinds:
        return False  # none of that kind running now: try again later
    if kind == "worker":
        os.kill(rng.choice(victims["worker"]), signal.SIGKILL)
    elif kind == "container":
        rng.choice(victims["container"]).kill()
    elif kind == "driver-int":
        os.killpg(driver.pid, signal.SIGINT)  # what a terminal sends
        figures.expect_exit = 130
    else:
        driver.send_signal(signal.SIGKILL if kind == "driver-kill" else signal.SIGTERM)
        figures.expect_exit = -signal.SIGKILL if kind == "driver-kill" else 143
    figures.kills[kind] += 1
    return True


def chaos(
    workdir: Path,
    kills: int,
    jobs: int,
    epochs: int,
    seed: int,
    docker: bool,
    order: list[str] | None = None,
    say=print,
) -> tuple[Figures, list[str]]:
    """Run the chaos rounds in `workdir`; the figures and the failed checks (empty when all hold). With `order`,
    the kills are of those kinds in that order (each as soon as there is one to kill), else random."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    suite = workdir / "chaos.yaml"
    suite.write_text(suite_yaml(jobs, epochs, docker))
    results, cache = workdir / "results", workdir / "cache"
    figures = Figures()
    t0 = time.monotonic()
    with open(workdir / "drivers.log", "ab") as log:
        driver = start(suite, results, cache, log)
        while True:
            if sum(figures.kills.values()) < kills:
                # A random point of the training: once some worker runs (or after a minute), then 1-8 s on.
                started = time.monotonic() + 60
                while time.monotonic() < started and driver.poll() is None and not running(results, docker):
                    time.sleep(0.2)
                deadline = time.monotonic() + rng.uniform(1, 3 if order else 8)
                while time.monotonic() < deadline and driver.poll() is None:
                    time.sleep(0.2)
                done = sum(figures.kills.values())
                want = order[done] if order and done < len(order) else None
                if driver.poll() is None and kill_one(driver, results, rng, docker, figures, want):
                    time.sleep(0.5)
            elif driver.poll() is None:
                driver.wait(timeout=900)
            code = driver.poll()
            if code is None:
                continue
            figures.exits.append(code)
            if figures.expect_exit is not None and code != figures.expect_exit:
                figures.wrong_exits.append(f"exit {code} after a signal that should end it with {figures.expect_exit}")
            figures.expect_exit = None
            figures.run_ids |= run_ids(results)
            if code == 0:  # the suite is complete (once it is, no kill is left to make)
                break
            if code == 2 or len(figures.exits) > kills + 5:  # a refused suite, or no end in sight
                break
            if code == -signal.SIGKILL:
                check_interrupted(results, figures)
            figures.restarts += 1
            say(f"  driver exited {code}; restart {figures.restarts}")
            driver = start(suite, results, cache, log)
    figures.wall_s = time.monotonic() - t0
    return figures, verify(results, jobs, epochs, figures)


def check_interrupted(results: Path, figures: Figures) -> None:
    """After a driver's SIGKILL: the jobs it was training read as interrupted (or succeeded, when their result
    was written), each with its epoch and the dead driver named; none reads running."""
    for job in ResultsStore.open(results).suite(SUITE).jobs():
        seen = job.read_status_seen()
        if seen is None:
            continue
        if seen.state.value in ("queued", "running"):
            figures.wrong_exits.append(f"{job.name} reads {seen.state.value} after its driver was killed")
        elif seen.state.value == "interrupted":
            figures.interrupted += 1
            if "its driver (pid" not in seen.reason or not ("after epoch" in seen.reason or "before" in seen.reason):
                figures.wrong_exits.append(f"{job.name}: interrupted without its epoch or driver: {seen.reason}")


def verify(results: Path, jobs: int, epochs: int, figures: Figures) -> list[str]:
    problems = list(figures.wrong_exits)
    if not figures.exits or figures.exits[-1] != 0:
        problems.append(f"the last driver exited {figures.exits[-1:]} (want 0); exits: {figures.exits}")
    suite = ResultsStore.open(results).suite(SUITE)
    names = sorted(j.name for j in suite.jobs())
    if names != sorted(f"job-{i}" for i in range(jobs)):
        problems.append(f"job folders {names}")
    for job in suite.jobs():
        status, result = job.read_status(), job.read_result()
        if status is None or status.state.value not in ("succeeded", "skipped"):
            problems.append(f"{job.name}: state {status.state.value if status else 'unreadable'}")
        if result is None or len(result.epochs) != epochs:
            problems.append(
                f"{job.name}: result.json {'missing' if result is None else f'{len(result.epochs)} epochs'}"
            )
        done = [ln for ln in job.log_text().splitlines() if ln.startswith("done: test accuracy")]
        if len(done) != 1:
            problems.append(f"{job.name}: finished {len(done)} times (want exactly once)")
    redone = epochs_trained(results) - jobs * epochs
    if redone > sum(figures.kills.values()):  # a kill loses at most the epoch in progress: the rest resumes
        problems.append(f"{redone} epochs trained again for {sum(figures.kills.values())} kills: resumption failed")
    deadline = time.monotonic() + 30  # the watchdogs sweep a few seconds after their driver is gone
    while time.monotonic() < deadline and (left := [p for r in figures.run_ids for p in marked(r)]):
        time.sleep(0.5)
    if left:
        problems.append(f"processes left: {[_cmdline(p)[:80] for p in left]}")
    if running := containers(figures.run_ids):
        problems.append(f"containers left: {[c.name for c in running]}")
    return problems


def epochs_trained(results: Path) -> int:
    total = 0
    for log in (results / SUITE).glob("*/log.txt"):
        total += sum(1 for ln in log.read_text(errors="replace").splitlines() if ln.startswith("epoch "))
    return total


def baseline(workdir: Path, jobs: int, epochs: int, docker: bool) -> float:
    """Wall time of the same suite run once, uninterrupted."""
    suite = workdir / "chaos.yaml"
    suite.write_text(suite_yaml(jobs, epochs, docker))
    t0 = time.monotonic()
    with open(workdir / "baseline.log", "ab") as log:
        start(suite, workdir / "results", workdir / "cache", log).wait(timeout=1800)
    return time.monotonic() - t0


def docker_available() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        from runner.execute import images

        return images.local_image(client, images.tag("torch")) is not None
    except Exception:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--docker", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--baseline", action="store_true", help="also time an uninterrupted run")
    parser.add_argument("--workdir", type=Path, help="keep the suite, results and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    docker = docker_available() if args.docker is None else args.docker
    with tempfile.TemporaryDirectory(prefix="gridrun-chaos-") as tmp:
        work = args.workdir or Path(tmp)
        print(f"chaos: {args.jobs} jobs x {args.epochs} epochs, {args.kills} kills, seed {args.seed}, docker {docker}")
        figures, problems = chaos(work / "chaos", args.kills, args.jobs, args.epochs, args.seed, docker)
        trained, needed = epochs_trained(work / "chaos" / "results"), args.jobs * args.epochs
        print(
            f"kills: {dict(figures.kills)} ({sum(figures.kills.values())} in all); driver restarts: {figures.restarts}"
        )
        print(f"epochs trained: {trained} for {needed} needed ({trained - needed} redone)")
        print(f"wall time: {figures.wall_s:.0f} s")
        if args.baseline:
            (work / "base").mkdir()
            clean = baseline(work / "base", args.jobs, args.epochs, docker)
            print(f"uninterrupted: {clean:.0f} s; time lost to the kills: {figures.wall_s - clean:.0f} s")
        for problem in problems:
            print(f"FAILED: {problem}")
        print("every job succeeded exactly once; nothing left running" if not problems else "chaos checks failed")
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
