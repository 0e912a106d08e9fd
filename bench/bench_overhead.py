"""Benchmark: what a command and a run cost beyond training and evaluation.

    .venv/bin/python bench/bench_overhead.py [--sweep 100] [--frameworks torch,tensorflow] [--no-docker]

1. The command: `gridrun run` of a one-job suite, in a child that says at its exit which frameworks the driver
   imported and its peak memory; the phases the command reports (summary.json's command_seconds) against the
   job's own time, from status.json's start to end.
2. A run: each framework's worker started by the executor itself (process, cold and, for a framework that can
   be forked once imported, warm; then docker where the daemon and the images are here) on a tiny job, against
   `python -c "import <framework>"` (torch with torchvision) started the same way; the overhead is the run's
   wall time less that import and less the training and evaluation the worker measured.
3. A sweep: --sweep one-epoch jobs of 1 CPU on the embedded Ray; its utilisation is the jobs' summed time over
   the slots times the wall time of the jobs phase (1.0: every slot always busy).
   The same command once more on the head `gridrun up` keeps: no Ray of its own to start and stop.
Targets (issue 13): the driver imports no framework; a one-job command within 5 s of its job; a run at most
1.5 s beyond its framework's import as a process, 1 s more in a container; the sweep within 1.2x of ideal.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.store.layout import JobPaths, write_json  # noqa: E402
from schemas import JobSpec, SpecFile  # noqa: E402
from schemas.registry import FRAMEWORKS as FRAMEWORK_ENTRIES  # noqa: E402

FRAMEWORKS = ("torch", "tensorflow")
# A framework's own import: for PyTorch with torchvision, whose networks the twins are (and whose import pulls
# in torch._dynamo, about as long as torch's own).
IMPORT = {"torch": "import torch, torchvision", "tensorflow": "import tensorflow"}
TINY = {
    "dataset": {"name": "synthetic", "image_size": 64, "synthetic_size": 64},
    "model": {"arch": "alexnet", "weights": "none", "classifier_width": 64},
    "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 128},
    "resources": {"gpus": 0, "cpus": 1},
}
# Run in the driver's place: gridrun's own entry point, reporting at exit what the driver process had loaded.
DRIVER = """
import atexit, json, resource, sys
def _said():
    mods = sorted(m for m in ("torch", "tensorflow", "keras", "torchvision", "timm", "jax") if m in sys.modules)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("BENCH-DRIVER " + json.dumps({"frameworks": mods, "peak_mb": peak}), flush=True)
atexit.register(_said)
sys.argv = ["gridrun", *sys.argv[1:]]
from runner.cli import main
main()
"""


def suite_file(folder: Path, name: str, jobs: int, framework: str = "torch") -> Path:
    lines = [f"suite: {name}", "defaults:", f"  framework: {framework}", "  executor: process"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in TINY.items()]
    lines += ["jobs:"] + [f"  - name: j{i:03d}" for i in range(jobs)]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_suite(suite: Path, results: Path, env: dict[str, str] | None = None) -> tuple[float, dict, dict]:
    """`gridrun run` in a child: its wall time, what the driver loaded, and summary.json."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, "run", str(suite), "--results", str(results)],
                          cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})  # fmt: skip
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"gridrun run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    said = next(line for line in done.stdout.splitlines() if line.startswith("BENCH-DRIVER "))
    summary = json.loads((results / suite.stem / "summary.json").read_text())
    return wall, json.loads(said.split(" ", 1)[1]), summary


def job_seconds(folder: Path) -> float:
    """A job's time on its slot: from its start to its end as status.json records them."""
    status = json.loads((folder / "status.json").read_text())
    return (
        datetime.fromisoformat(status["finished_at"]) - datetime.fromisoformat(status["started_at"])
    ).total_seconds()


def one_job(tmp: Path, label: str, env: dict[str, str] | None = None) -> dict:
    """`gridrun run` of a one-job suite: its wall time against its job's, and its phases, printed."""
    tmp.mkdir()
    suite = suite_file(tmp, "one", 1)
    wall, driver, summary = run_suite(suite, tmp / "results", env)
    job = job_seconds(tmp / "results" / "one" / "j000")
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in summary["command_seconds"].items())
    print(f"{label}: {wall:.2f} s wall for a {job:.2f} s job: {wall - job:.2f} s beyond it (target 5 s)")
    rest = wall - sum(summary["command_seconds"].values())
    print(f"  phases: {phases}; then report, Ray shutdown, the interpreter's start, imports and exit {rest:.2f} s")
    return driver


def command(tmp: Path) -> None:
    """The one-job command on an embedded Ray of its own, then on the head `gridrun up` keeps."""
    driver = one_job(tmp / "embedded", "one-job command")
    print(f"driver: imported frameworks {driver['frameworks'] or 'none'}, peak {driver['peak_mb']:.0f} MB")
    state = {"GRIDRUN_STATE_DIR": str(tmp / "state")}
    gridrun = [sys.executable, "-m", "runner"]
    subprocess.run([*gridrun, "up"], cwd=REPO, check=True, capture_output=True, env={**os.environ, **state})
    try:
        one_job(tmp / "kept", "one-job command on the head `gridrun up` keeps", state)
    finally:
        subprocess.run([*gridrun, "down", "--force"], cwd=REPO, capture_output=True, env={**os.environ, **state})


def job_folder(root: Path, framework: str) -> tuple[JobPaths, SpecFile]:
    spec = JobSpec.model_validate({"name": f"t-{framework}", "framework": framework, **TINY})
    paths = JobPaths.of(root, "bench", spec.name)
    spec_file = SpecFile(suite="bench", job=spec.name, spec_hash="bench", code_version="bench", declared=spec,
                         spec=spec)  # fmt: skip
    write_json(paths.spec, spec_file)
    return paths, spec_file


def import_seconds(framework: str, executor: str) -> float:
    """Wall time of a bare `python -c "import <framework>"`, on the host or in the framework's image."""
    if executor == "process":
        cmd = [sys.executable, "-c", IMPORT[framework]]
    else:
        from runner.execute import images

        cmd = ["docker", "run", "--rm", "--network", "none", images.tag(framework), "python", "-c", IMPORT[framework]]
    best = float("inf")
    for _ in range(2):  # the second reads from a warm page cache, as a run after the first does
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def run_overhead(tmp: Path, framework: str, executor: str, warm_start: bool = False) -> str:
    """The best of two runs (the first of a warm pair starts the server); cold unless `warm_start`."""
    from runner import execute
    from runner.execute import Launch, warm

    root = tmp / f"{executor}-{framework}-{'warm' if warm_start else 'cold'}"
    run_id = uuid.uuid4().hex[:12]
    walls, extras = [], []
    saved = os.environ.get(warm.WARM_ENV)
    os.environ[warm.WARM_ENV] = "1" if warm_start else "0"
    try:
        for attempt in range(3 if warm_start else 2):
            paths, spec_file = job_folder(root / str(attempt), framework)
            launch = Launch(paths, tmp / "cache", spec_file, run_id)
            t0 = time.perf_counter()
            outcome = execute.get(executor).run(launch)
            wall = time.perf_counter() - t0
            if outcome.exit_code != 0:
                raise SystemExit(f"{executor} {framework}: {outcome.reason}\n{paths.log.read_text()[-2000:]}")
            if warm_start and attempt == 0:
                continue  # it started the server: a cold start and then some
            timing = json.loads(paths.result.read_text())["timing"]
            walls.append(wall)
            extras.append(wall - timing["train_seconds"] - timing["eval_seconds"])
    finally:
        if saved is None:
            del os.environ[warm.WARM_ENV]
        else:
            os.environ[warm.WARM_ENV] = saved
    imported = import_seconds(framework, executor)
    extra = min(extras)
    target = 1.5 if executor == "process" else 2.5
    how = f"{executor} {'warm' if warm_start else 'cold'}"
    return (f"{framework:<10} {how:<12}: run {min(walls):5.2f} s, of which training and evaluation "
            f"{min(walls) - extra:4.2f} s; framework import alone {imported:4.2f} s; overhead beyond it "
            f"{extra - imported:+5.2f} s (target {target} s)")  # fmt: skip


def docker_ready(frameworks: list[str]) -> str:
    """'' when the daemon answers and every framework's image is built; else why not."""
    try:
        from runner.execute import images

        client, why = images.try_connect(timeout=5)
        if client is None:
            return why
        missing = [f for f in frameworks if images.local_image(client, images.tag(f)) is None]
        return f"image(s) {', '.join(images.tag(f) for f in missing)} not built (make images)" if missing else ""
    except Exception as e:  # the bench reports what it can
        return str(e)


def sweep(tmp: Path, jobs: int) -> None:
    suite = suite_file(tmp, "sweep", jobs)
    wall, _, summary = run_suite(suite, tmp / "results")
    folder = tmp / "results" / "sweep"
    each = [job_seconds(folder / f"j{i:03d}") for i in range(jobs)]
    slots = max(1, int(float(os.environ.get("BENCH_SLOTS", os.cpu_count() or 1))))
    phase = summary["command_seconds"]["jobs"]
    ideal = sum(each) / slots
    print(f"sweep of {jobs} one-epoch jobs on {slots} slots: jobs phase {phase:.1f} s against {ideal:.1f} s "
          f"ideal (summed job time {sum(each):.1f} s / {slots}): {phase / ideal:.2f}x (target 1.2x), "
          f"utilisation {ideal / phase:.0%}; {sum(each) / jobs:.2f} s a job; command {wall:.1f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=int, default=100, help="jobs of the sweep (0: no sweep)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="frameworks of the per-run figures")
    parser.add_argument("--no-docker", action="store_true", help="leave out the container figures")
    args = parser.parse_args()
    frameworks = [f for f in args.frameworks.split(",") if f]
    with tempfile.TemporaryDirectory(prefix="gridrun-bench-overhead-") as tmp:
        root = Path(tmp)
        os.environ["GRIDRUN_STATE_DIR"] = str(root / "no-head")  # a head the user keeps must not serve these
        (root / "cache").mkdir()
        (root / "command").mkdir()
        command(root / "command")
        for framework in frameworks:
            print(run_overhead(root, framework, "process"))
            if FRAMEWORK_ENTRIES[framework].forkable:
                print(run_overhead(root, framework, "process", warm_start=True))
        why = "--no-docker" if args.no_docker else docker_ready(frameworks)
        if why:
            print(f"container figures left out: {why}")
        else:
            for framework in frameworks:
                print(run_overhead(root, framework, "docker"))
        if args.sweep:
            (root / "sweep").mkdir()
            sweep(root / "sweep", args.sweep)


if __name__ == "__main__":
    main()
