"""Benchmark: build the report of a suite of 200 job folders and print how long it takes.

    .venv/bin/python bench/bench_report.py [--jobs 200] [--keep DIR]

The job folders are generated (valid spec.json, status.json and result.json of CIFAR-10-shaped
runs with plausible curves, a few failed and blocked ones), since training 200 models is not the
point: this measures reading, tables, plots and rendering. Prints a cold build (every plot drawn),
a warm one (nothing changed) and one after another job finished (as after each finished job of `gridrun run`).
"""

import argparse
import math
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.report import write_report
from runner.report.sweep import PAGES
from runner.store.layout import SuitePaths, write_json
from schemas import JobSpec, RunResult, RunStatus, SpecFile
from schemas.registry import with_imagenet

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_suite(root: Path, suite: str, jobs: int, seed: int = 0) -> SuitePaths:
    """`jobs` job folders under root/suite: mostly succeeded, one in 20 failed, one in 25 blocked."""
    rng = random.Random(seed)
    paths = SuitePaths.of(root, suite)
    for i in range(jobs):
        framework = ("torch", "tensorflow")[i % 2]
        arch = ("alexnet", "vgg16", "resnet18")[(i // 2) % 3]
        weights = ("none", "imagenet")[(i // 6) % 2] if arch in with_imagenet(framework) else "none"
        spec = JobSpec.model_validate({
            "name": f"{arch}-{framework}-{'scratch' if weights == 'none' else 'pretrained'}-{i:03d}",
            "framework": framework,
            "model": {"arch": arch, "weights": weights, "freeze_backbone": weights != "none" and i % 4 == 0},
            "dataset": {"name": "cifar10", "image_size": 64},
            "train": {"epochs": 10, "optimizer": {"lr": round(10 ** rng.uniform(-3, -1), 5)}},
        })  # fmt: skip
        job = paths.job(spec.name)
        digest = spec.digest("bench")
        write_json(job.spec, SpecFile(suite=suite, job=spec.name, spec_hash=digest, code_version="bench",
                                      declared=spec, spec=spec))  # fmt: skip
        if i % 25 == 7:
            write_json(job.status, RunStatus(state="failed", spec_hash=digest,
                                             reason="not runnable: needs 2 GPUs, the largest node has 1"))  # fmt: skip
            continue
        if i % 20 == 3:
            write_json(job.status, RunStatus(state="failed", spec_hash=digest, attempts=1, exit_code=1,
                                             reason="worker exited with code 1: CUDA out of memory"))  # fmt: skip
            continue
        write_json(job.status, RunStatus(state="succeeded", spec_hash=digest, attempts=1, exit_code=0))
        write_json(job.result, _result(spec, suite, digest, rng))
    return paths


def _result(spec: JobSpec, suite: str, digest: str, rng: random.Random) -> RunResult:
    ceiling = rng.uniform(0.55, 0.93)
    speed = rng.uniform(0.3, 1.2)
    epochs = []
    for e in range(1, spec.train.epochs + 1):
        acc = ceiling * (1 - math.exp(-speed * e))
        epochs.append({
            "epoch": e, "train_loss": 2.3 * math.exp(-speed * e), "train_accuracy": min(1, acc + 0.05),
            "val_accuracy": acc + rng.uniform(-0.02, 0.02), "test_accuracy": acc + rng.uniform(-0.02, 0.02),
            "lr": spec.train.optimizer.lr, "epoch_seconds": rng.uniform(20, 90),
            "images_per_second": rng.uniform(800, 40000),
        })  # fmt: skip
    best = max(epochs, key=lambda r: r["val_accuracy"])
    support = 100
    cm = []
    for i in range(len(CLASSES)):
        right = round(support * min(1, max(0, rng.gauss(epochs[-1]["test_accuracy"], 0.08))))
        row = [0] * len(CLASSES)
        row[i] = right
        for _ in range(support - right):
            row[rng.randrange(len(CLASSES))] += 1
        cm.append(row)
    total = sum(r["epoch_seconds"] for r in epochs)
    return RunResult.model_validate({
        "suite": suite, "job": spec.name, "spec_hash": digest, "spec": spec.model_dump(),
        "dataset_sizes": {"train": 45000, "val": 5000, "test": 1000}, "class_names": CLASSES, "epochs": epochs,
        "final_test_accuracy": epochs[-1]["test_accuracy"], "final_val_accuracy": epochs[-1]["val_accuracy"],
        "best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"],
        "best_test_accuracy": best["test_accuracy"],
        "per_class_accuracy": [{"name": n, "accuracy": cm[i][i] / support, "support": support}
                               for i, n in enumerate(CLASSES)],
        "confusion_matrix": cm, "trainable_parameters": rng.randrange(2_000_000, 140_000_000),
        "total_parameters": 140_000_000,
        "timing": {"data_seconds": 3.0, "train_seconds": total * 0.9, "eval_seconds": total * 0.1,
                   "total_seconds": total + 3.0},
        "images_per_second": sum(r["images_per_second"] for r in epochs) / len(epochs),
        "environment": {"framework": spec.framework, "framework_version": "bench", "python_version": "3.11",
                        "device": "cuda", "device_name": "bench", "mixed_precision": "bf16", "hostname": "bench"},
    })  # fmt: skip


def _cpu_seconds() -> float:
    """CPU time of this process and of finished plotting workers: steadier than wall time on a busy machine."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200, help="job folders to generate")
    parser.add_argument("--keep", type=Path, help="write into this folder and keep it (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridrun-bench-report-") as tmp:
        root = args.keep or Path(tmp)
        suite = make_suite(root, "bench", args.jobs)
        # cold: nothing drawn yet; warm: nothing changed; one more: a job finished since, as during `gridrun run`.
        for run in ("cold", "warm", "one more"):
            if run == "one more":
                make_suite(root, "bench", args.jobs + 1, seed=0)
            cpu0, t0 = _cpu_seconds(), time.perf_counter()
            written = write_report(suite.dir)
            seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
            html = (suite.dir / "report.html").stat().st_size / 1e6
            plots = sum(p.suffix == ".png" for p in written)
            pages = sum(p.parent.name == PAGES for p in written)
            runs = args.jobs + (run == "one more")
            print(f"report over {runs} job folders, {run}: {seconds:.2f} s wall, {cpu:.2f} s CPU "
                  f"({plots} plots, {pages} run pages, report.html {html:.2f} MB, {os.cpu_count()} cores)")  # fmt: skip
        print(f"report: {suite.dir / 'report.html'}" if args.keep else "")


if __name__ == "__main__":
    main()
