"""The study's CUDA path, measured: gridrun's PyTorch worker next to a bare bf16 loop, on one GPU.

Each case writes a job folder (spec.json, as the driver writes it) and runs the real worker on it,
`python -m runner.train.worker <job folder> --cache <cache>`, on CIFAR-shaped synthetic images. Then, in this
process, a bare loop trains the same network on the same images (the same loader, moved to the device once):
index slices, resize on the device, bf16 autocast, channels-last, fused SGD, nothing else. Printed and written:

  alexnet-b64, alexnet-b512    AlexNet at 224 px, batch 64 (the study's) and 512
  vgg16-frozen, vgg16-full     VGG16 at 224 px, batch 64, backbone frozen / fully fine-tuned
  <case>-compile               each again with train.compile (torch.compile; the bare loop compiles too)
  shared-gpu                   two AlexNet jobs at resources.gpus 0.5 on the GPU at once: each capped at half
                               its memory, both must finish
  projection                   wall time of the study's PyTorch runs (jobs/alexnet-challenge.yaml: their
                               epochs and batch, CIFAR-10's images) from the figures above

images/s of the worker and of the bare loop, and their ratio. The worker's figure is the mean of its epochs
after the first (the first pays for cuDNN autotuning and compilation); the bare loop, likewise, runs one
untimed epoch first. Every figure goes to one JSON file (--out), rewritten after each case, so a run cut short
keeps what it measured. Exit code 1 when a case failed (its log's end is in the JSON), else 0.

Without a CUDA device, or with --tiny, the same cases run at sizes a CPU trains in seconds (tests/test_gpu_check.py
does this, so the script cannot break unnoticed): jobs that reserve a GPU then declare resources.gpu_fallback:
cpu, the compiled twins are skipped on a CPU (the trainer compiles on CUDA only), and the figures only show that
the path works.

On the H200 machine (Python 3.12 with torch, torchvision, timm and tensorboard; no Ray, TensorFlow, Docker or
pydantic), the worker needs pydantic, which travels as wheels. Once, in the repository root here:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \\
        typing-extensions==4.16.0

then, with the device tool's run, carry [".whl"] and the command (results on /dev/shm: checkpoints are GBs):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \\
      && PYTHONPATH=/tmp/site TMPDIR=/dev/shm PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --out $OUT/gpu_check.json

The workers get this process's PYTHONPATH with the repository first, so they import the same pydantic.
"""

import argparse
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.store.layout import JobPaths, write_json  # noqa: E402
from runner.suite import load_suite  # noqa: E402
from runner.train import data, torch_models  # noqa: E402
from runner.train.common import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from schemas import JobSpec, RunResult, SpecFile  # noqa: E402

SUITE = "gpu-check"
STUDY = REPO / "jobs" / "alexnet-challenge.yaml"
# CIFAR-10's training pool and official test split (the dataset gridrun's study trains on).
CIFAR10_TRAIN_POOL, CIFAR10_TEST = 50_000, 10_000
# The study's optimizer (jobs/alexnet-challenge.yaml), for the worker and the bare loop alike.
SGD = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0005}
EVAL_SHARE = 0.02  # validation and test images, each as a share of the training images: evaluation is not timed


@dataclass(frozen=True)
class Case:
    """One configuration, trained by the worker and by the bare loop."""

    name: str
    arch: str
    image_size: int
    batch: int
    train_images: int  # per epoch, before the last partial batch is dropped
    freeze: bool = False
    compile: bool = False
    width: int | None = None  # classifier_width; None: torchvision's 4096

    def spec(self, epochs: int, gpus: float, fallback: bool) -> JobSpec:
        """The job the worker runs: synthetic images, the study's optimizer, the schema's defaults otherwise."""
        resources: dict[str, Any] = {"gpus": gpus}
        if fallback:
            resources["gpu_fallback"] = "cpu"
        return JobSpec.model_validate(
            {
                "name": self.name,
                "framework": "torch",
                "model": {"arch": self.arch, "freeze_backbone": self.freeze, "classifier_width": self.width},
                "dataset": {
                    "name": "synthetic",
                    "image_size": self.image_size,
                    "limit": self.train_images,
                    # A 2% test and validation share is held out of the pool first; `limit` then keeps these.
                    "synthetic_size": math.ceil(self.train_images / (1 - EVAL_SHARE) ** 2) + 10,
                    "val_fraction": EVAL_SHARE,
                    "test_fraction": EVAL_SHARE,
                },
                "train": {
                    "epochs": epochs,
                    "batch_size": self.batch,
                    "eval_batch_size": 512,
                    "optimizer": SGD,
                    "mixed_precision": True,
                    "compile": self.compile,
                },
                "resources": resources,
                "executor": "process",
            }
        )


def cases(tiny: bool) -> list[Case]:
    """The measured cases: the study's sizes on a GPU; the same shapes of run, tiny, on a CPU."""
    if tiny:  # the smallest sides the architectures take (AlexNet 63 px), small heads and batches
        plain = [
            Case("alexnet-b64", "alexnet", 64, 8, 16, width=16),
            Case("alexnet-b512", "alexnet", 64, 16, 16, width=16),
            Case("vgg16-frozen", "vgg16", 32, 5, 10, freeze=True, width=16),  # dataset.limit is 10 at least
            Case("vgg16-full", "vgg16", 32, 5, 10, width=16),
        ]
    else:  # about a second an epoch at DESIGN.md's bare-loop figures
        plain = [
            Case("alexnet-b64", "alexnet", 224, 64, 16_384),
            Case("alexnet-b512", "alexnet", 224, 512, 32_768),
            Case("vgg16-frozen", "vgg16", 224, 64, 8_192, freeze=True),
            Case("vgg16-full", "vgg16", 224, 64, 4_096),
        ]
    return plain + [replace(c, name=f"{c.name}-compile", compile=True) for c in plain]


# --- the worker --------------------------------------------------------------------------------------


@dataclass
class WorkerRun:
    """A worker started on a job folder."""

    paths: JobPaths
    proc: subprocess.Popen
    started: float
    wall_seconds: float = 0.0


def write_job(root: Path, spec: JobSpec) -> JobPaths:
    """<root>/gpu-check/<job>/spec.json, as the driver writes it."""
    paths = JobPaths.of(root, SUITE, spec.name)
    spec_file = SpecFile(
        suite=SUITE,
        job=spec.name,
        spec_hash=spec.digest(SUITE),
        code_version=SUITE,
        declared=spec,
        spec=spec,
        executor="process",
    )
    write_json(paths.spec, spec_file)
    return paths


def worker_env(fraction: float) -> dict[str, str]:
    """This process's environment, the repository first on PYTHONPATH, and what an executor sets."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "GRIDRUN_GPU_FRACTION": f"{fraction:g}",
        "GRIDRUN_EXECUTOR": "process",
    }


def start_worker(paths: JobPaths, cache: Path, fraction: float = 1.0) -> WorkerRun:
    cmd = [sys.executable, "-m", "runner.train.worker", str(paths.dir), "--cache", str(cache)]
    with open(paths.log, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=worker_env(fraction), stdout=log, stderr=subprocess.STDOUT)
    return WorkerRun(paths, proc, time.perf_counter())


def finish_worker(run: WorkerRun, timeout: float) -> RunResult:
    """Wait for the worker; its result, or a RuntimeError with the end of its log."""
    try:
        code = run.proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - run.started)))
    except subprocess.TimeoutExpired:
        run.proc.kill()
        run.proc.wait()
        code = None
    run.wall_seconds = time.perf_counter() - run.started
    result = run.paths.read_result()
    if code != 0 or result is None:
        tail = run.paths.log.read_text(errors="replace").strip().splitlines()[-15:]
        how = f"timed out after {timeout:g} s" if code is None else f"exited {code}"
        raise RuntimeError(f"worker {run.paths.dir.name} {how}: " + "\n".join(tail))
    return result


def steady(values: list[float]) -> float:
    """The mean after the first (warm-up) value; the only one when there is one."""
    return sum(values[1:]) / len(values[1:]) if len(values) > 1 else values[0]


def worker_figures(run: WorkerRun, result: RunResult) -> dict[str, Any]:
    """What the worker measured, from its result.json and its wall time."""
    t = result.timing
    per_epoch = [e.images_per_second for e in result.epochs]
    n, bs = result.dataset_sizes["train"], result.spec.train.batch_size
    images = min(n, max(1, n // bs) * bs)  # an epoch's: full batches only
    # What the first epoch took beyond a steady one: cuDNN autotuning, compilation.
    warmup = images / per_epoch[0] - images / steady(per_epoch)
    evaluated = len(result.epochs) * (result.dataset_sizes["val"] + result.dataset_sizes["test"])
    return {
        "images_per_second": steady(per_epoch),
        "epochs_images_per_second": per_epoch,
        "device": result.environment.device,
        "device_name": result.environment.device_name,
        "mixed_precision": result.environment.mixed_precision,
        "substitutions": [s.model_dump() for s in result.substitutions],
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "dataset_sizes": result.dataset_sizes,
        "wall_seconds": run.wall_seconds,
        # Outside the run's own timer: Python's start and the imports before it, TensorBoard's extras after it.
        "untimed_seconds": max(0.0, run.wall_seconds - t.total_seconds),
        "data_seconds": t.data_seconds,
        "train_seconds": t.train_seconds,
        "eval_seconds": t.eval_seconds,
        "eval_images_per_second": evaluated / t.eval_seconds if t.eval_seconds > 0 else 0.0,
        # Checkpoints, TensorBoard, building the model: what is neither data, training nor evaluation.
        "other_seconds": max(0.0, t.total_seconds - t.data_seconds - t.train_seconds - t.eval_seconds),
        "warmup_seconds": max(0.0, warmup),
        "memory": memory_lines(run.paths),
    }


def memory_lines(paths: JobPaths) -> dict[str, int]:
    """The GPU memory cap and peak the torch trainer logs (MiB); empty off CUDA."""
    log = paths.log.read_text(errors="replace")
    found: dict[str, int] = {}
    if m := re.search(r"gpu 0: memory limited to (\d+) MiB \(\S+ of (\d+) MiB\)", log):
        found["limit_mib"], found["total_mib"] = int(m.group(1)), int(m.group(2))
    if m := re.search(r"gpu 0: peak memory (\d+) MiB reserved", log):
        found["peak_mib"] = int(m.group(1))
    return found


# --- the bare loop -----------------------------------------------------------------------------------


_SPLITS: dict[str, data.Splits] = {}


def splits_of(spec: JobSpec, cache: Path) -> data.Splits:
    """The images the worker trained on, made by the same loader (once per dataset spec)."""
    key = spec.dataset.model_dump_json()
    if key not in _SPLITS:
        _SPLITS[key] = data.load(spec.dataset, cache)
    return _SPLITS[key]


def bare_loop(spec: JobSpec, splits: data.Splits, epochs: int, device: torch.device) -> dict[str, Any]:
    """Train the job's network as plainly as PyTorch allows: one untimed epoch, then `epochs - 1` timed ones.

    bf16 autocast, channels-last, fused SGD and torch.compile on CUDA only, as the trainer uses them."""
    cuda = device.type == "cuda"
    figures = _bare_epochs(spec, splits, max(2, epochs), device)
    if cuda:
        torch.cuda.empty_cache()  # its tensors are gone: the next worker gets the memory back
    return {**figures, "bf16": cuda and torch.cuda.is_bf16_supported(), "compiled": bool(spec.train.compile and cuda)}


def _bare_epochs(spec: JobSpec, splits: data.Splits, epochs: int, device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = torch_models.build(spec.model, splits.num_classes)
    if spec.model.freeze_backbone:
        model.features.requires_grad_(False)  # alexnet's and vgg16's backbone; `classifier` trains
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format).train()
    net = torch.compile(model) if spec.train.compile and cuda else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=SGD["lr"], momentum=SGD["momentum"], weight_decay=SGD["weight_decay"], fused=cuda)
    loss_fn = nn.CrossEntropyLoss()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    x_all = torch.from_numpy(splits.train_x).to(device)
    y_all = torch.from_numpy(splits.train_y).to(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    size, bs = spec.dataset.image_size, spec.train.batch_size
    steps = max(1, len(y_all) // bs)

    def epoch() -> float:
        perm = torch.randperm(len(y_all), device=device)
        sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            x = (x_all[idx].permute(0, 3, 1, 2).float() - mean) / std
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else nullcontext():
                loss = loss_fn(net(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        return min(len(y_all), steps * bs) / (time.perf_counter() - t0)

    per_epoch = [epoch() for _ in range(epochs)]
    return {
        "images_per_second": steady(per_epoch),
        "epochs_images_per_second": per_epoch,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the checks --------------------------------------------------------------------------------------


@dataclass
class Check:
    """Everything the run measured, written to --out after each step."""

    out: Path
    figures: dict[str, Any]
    failed: list[str] = field(default_factory=list)

    def save(self) -> None:
        self.figures["projection"] = projections(self.figures)
        write_json(self.out, self.figures)


def measure_case(case: Case, args: argparse.Namespace, root: Path, device: torch.device, check: Check) -> None:
    """Worker, then bare loop, on one case; the figures and their ratio."""
    cuda = device.type == "cuda"
    entry: dict[str, Any] = {"case": asdict(case), "epochs": args.epochs}
    check.figures["runs"][case.name] = entry
    try:
        spec = case.spec(args.epochs, gpus=1, fallback=not cuda)
        run = start_worker(write_job(root, spec), root / "cache")
        entry["worker"] = worker_figures(run, finish_worker(run, args.timeout))
        entry["bare"] = bare_loop(spec, splits_of(spec, root / "cache"), args.epochs, device)
        w, b = entry["worker"], entry["bare"]
        if (w["trainable_parameters"], w["total_parameters"]) != (b["trainable_parameters"], b["total_parameters"]):
            raise RuntimeError(f"the bare loop's network is not the worker's: {b} against {w}")
        entry["ratio"] = w["images_per_second"] / b["images_per_second"]
        print(
            f"{case.name:22} {case.arch} {case.image_size}px batch {case.batch:<4} worker "
            f"{w['images_per_second']:>9,.0f} img/s   bare {b['images_per_second']:>9,.0f} img/s   "
            f"ratio {entry['ratio']:.3f}   (wall {w['wall_seconds']:.0f} s, untimed {w['untimed_seconds']:.1f} s)",
            flush=True,
        )
    except Exception as e:  # one case's failure is recorded; the others still run
        entry["error"] = str(e)
        check.failed.append(case.name)
        print(f"{case.name:22} FAILED: {e}", flush=True)
    check.save()


def measure_shared(base: Case, args: argparse.Namespace, root: Path, device: torch.device, check: Check) -> None:
    """Two jobs at gpus 0.5 on the one GPU at once: each capped at half its memory; both must finish."""
    cuda = device.type == "cuda"
    entry: dict[str, Any] = {"case": asdict(base), "fraction": 0.5}
    check.figures["shared_gpu"] = entry
    try:
        runs = []
        for i in (1, 2):
            spec = replace(base, name=f"shared-{i}").spec(args.epochs, gpus=0.5, fallback=not cuda)
            runs.append(start_worker(write_job(root, spec), root / "cache", fraction=0.5))
        t0 = time.perf_counter()
        errors, jobs = [], []
        for run in runs:
            try:
                jobs.append(worker_figures(run, finish_worker(run, args.timeout)))
            except RuntimeError as e:
                errors.append(str(e))
        entry["wall_seconds"] = time.perf_counter() - t0
        if errors:
            raise RuntimeError("; ".join(errors))
        entry["jobs"] = jobs
        entry["combined_images_per_second"] = sum(j["images_per_second"] for j in jobs)
        if cuda:  # the trainer logs its cap and its peak: each must have stayed within half the GPU
            unheld = [j["memory"] for j in jobs if not {"limit_mib", "peak_mib"} <= j["memory"].keys()]
            unheld += [j["memory"] for j in jobs if j["memory"].get("peak_mib", 0) > j["memory"].get("limit_mib", 0)]
            if unheld:
                raise RuntimeError(f"a job at gpus 0.5 was not held to half the GPU's memory: {unheld}")
        entry["memory_capped"] = cuda
        mem = "; ".join(f"peak {j['memory']['peak_mib']:,} of {j['memory']['limit_mib']:,} MiB" for j in jobs if cuda)
        print(
            f"{'shared-gpu (2 x 0.5)':22} {base.arch} {base.image_size}px batch {base.batch:<4} "
            + "   ".join(f"job {i}: {j['images_per_second']:,.0f} img/s" for i, j in enumerate(jobs, 1))
            + f"   together {entry['combined_images_per_second']:,.0f} img/s   {mem or 'no GPU: no memory cap'}",
            flush=True,
        )
    except Exception as e:
        entry["error"] = str(e)
        check.failed.append("shared-gpu")
        print(f"{'shared-gpu':22} FAILED: {e}", flush=True)
    check.save()


# --- the projection ----------------------------------------------------------------------------------


def study_torch_jobs() -> list[JobSpec]:
    """The study's PyTorch jobs as it declares them (no profile: the GPU run)."""
    return [j for j in load_suite(STUDY).jobs() if j.framework == "torch"]


def cifar10_sizes(spec: JobSpec) -> tuple[int, int]:
    """(training images an epoch trains, images an epoch evaluates) of CIFAR-10 under the job's split."""
    val = max(1, round(CIFAR10_TRAIN_POOL * spec.dataset.val_fraction))
    train = CIFAR10_TRAIN_POOL - val
    return train // spec.train.batch_size * spec.train.batch_size, val + CIFAR10_TEST


def project(figures: dict[str, Any], suffix: str = "", batch_case: str | None = None) -> dict[str, Any] | None:
    """Seconds of the study's PyTorch runs, one after the other on one GPU, from a measured case's figures: what
    ran outside the run's timer, data and warm-up once; then per epoch its training images at the steady rate, its
    evaluation, and what else an epoch cost (checkpoints). None when the case it needs was not measured."""
    jobs, total = [], 0.0
    for spec in study_torch_jobs():
        name = batch_case or f"{spec.model.arch}-b{spec.train.batch_size}"
        measured = figures["runs"].get(name + suffix, {}).get("worker")
        if measured is None or spec.model.freeze_backbone:
            return None
        train, evaluated = cifar10_sizes(spec)
        epochs = spec.train.epochs
        per_epoch = train / measured["images_per_second"] + evaluated / max(measured["eval_images_per_second"], 1e-9)
        per_epoch += measured["other_seconds"] / len(measured["epochs_images_per_second"])
        seconds = measured["untimed_seconds"] + measured["data_seconds"] + measured["warmup_seconds"]
        seconds += epochs * per_epoch
        jobs.append({"job": spec.name, "epochs": epochs, "train_images": train, "eval_images": evaluated,
                     "from_case": name + suffix, "seconds": seconds})  # fmt: skip
        total += seconds
    return {"jobs": jobs, "seconds": total}


def projections(figures: dict[str, Any]) -> dict[str, Any]:
    """The study as declared (batch 64, no compile), and as it would run compiled, or at batch 512."""
    return {
        name: p
        for name, p in (
            ("as_declared", project(figures)),
            ("compiled", project(figures, "-compile")),
            ("batch_512", project(figures, batch_case="alexnet-b512")),
            ("batch_512_compiled", project(figures, "-compile", batch_case="alexnet-b512")),
        )
        if p is not None
    }


def print_projection(found: dict[str, Any], tiny: bool) -> None:
    for name, p in found.items():
        parts = ", ".join(f"{j['job']} {j['epochs']} epochs {j['seconds']:.0f} s" for j in p["jobs"])
        note = " (tiny sizes: not the study's figure)" if tiny else " (target: under 300 s)"
        print(f"projected study, PyTorch runs, {name.replace('_', ' ')}: {p['seconds']:.0f} s{note}: {parts}")


# --- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU-sized cases (the default without a CUDA device)")
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON of figures to write")
    p.add_argument("--work", type=Path, default=None, help="folder for the job folders (default: a temporary one)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each run; all after the first are timed")
    p.add_argument("--timeout", type=float, default=240, help="seconds one worker may take")
    p.add_argument("--only", default="", help="comma-separated case names (and/or shared-gpu) to run")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first is warm-up")
    tiny = args.tiny or not cuda
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    all_cases = cases(tiny)
    wanted = {w.strip() for w in args.only.split(",") if w.strip()}
    known = {c.name for c in all_cases} | {"shared-gpu"}
    if wanted - known:
        p.error(f"--only: unknown {', '.join(sorted(wanted - known))}; the cases are {', '.join(sorted(known))}")
    selected = [c for c in all_cases if not wanted or c.name in wanted]
    for case in all_cases:  # every job is valid before the first one starts
        case.spec(args.epochs, gpus=1, fallback=not cuda)
    figures: dict[str, Any] = {
        "tiny": tiny,
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "epochs": args.epochs,
        "runs": {},
    }
    check = Check(args.out, figures)
    print(f"gpu_check on {figures['device']}, torch {torch.__version__}{' (tiny sizes)' if tiny else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gridrun-gpu-check-") as tmp:
        root = args.work or Path(tmp)
        # The plain cases first, then the pair, then the compiled ones: a run cut short has the study's figures.
        for case in [c for c in selected if not c.compile]:
            measure_case(case, args, root, device, check)
        if not wanted or "shared-gpu" in wanted:
            measure_shared(next(c for c in all_cases if c.name == "alexnet-b512"), args, root, device, check)
        for case in [c for c in selected if c.compile]:
            if cuda:
                measure_case(case, args, root, device, check)
            else:  # the trainer compiles on CUDA only: on a CPU the run would be its plain twin's again
                figures["runs"][case.name] = {"case": asdict(case), "skipped": "torch.compile is used on CUDA only"}
                print(f"{case.name:22} skipped: the trainer uses torch.compile on CUDA only", flush=True)
        check.save()
    print_projection(figures["projection"], tiny)
    print(f"figures: {args.out}")
    if check.failed:
        print(f"failed: {', '.join(check.failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
