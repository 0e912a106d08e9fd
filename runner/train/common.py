"""What both trainers share: the context they get, metric bookkeeping, TensorBoard tag names,
progress lines and the assembly of result.json. Framework-neutral (numpy only)."""

import json
import os
import platform
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.errors import UserError
from runner.store.layout import JobPaths, write_json
from runner.train.data import Splits
from schemas import (
    ClassAccuracy,
    Environment,
    EpochRecord,
    JobSpec,
    Limits,
    RunResult,
    SpecFile,
    Substitution,
    Timing,
    TrialInfo,
)

# TensorBoard scalar tags, the same in every framework so runs overlay in one chart.
TAGS: dict[str, str] = {
    "train_loss": "loss/train",
    "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "test_accuracy": "accuracy/test",
    "lr": "optim/lr",
    "images_per_second": "speed/images_per_second",
    "epoch_seconds": "speed/epoch_seconds",
}

# Normalisation of the torchvision ImageNet models, also used for every model trained from
# scratch so that a PyTorch and a TensorFlow run see identical inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Set by the executor for a data-parallel job, whose launcher (torchrun) gives each replica RANK and WORLD_SIZE.
DATA_PARALLEL_ENV = "GRIDRUN_DATA_PARALLEL"
COLLECTIVE_TIMEOUT_ENV = "GRIDRUN_COLLECTIVE_TIMEOUT_S"
_RANKS = (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))


@dataclass(frozen=True)
class Replica:
    """This process's place among a data-parallel job's processes: rank, how many, and its rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def primary(self) -> bool:
        """The first replica: the only one that writes results, TensorBoard events, checkpoints and progress."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Replica":
        if os.environ.get(DATA_PARALLEL_ENV) != "1":  # a stray RANK in the user's environment means nothing here
            return cls()
        if os.environ.get("TF_CONFIG"):  # TensorFlow across nodes: one process (worker) per node
            task = json.loads(os.environ["TF_CONFIG"])
            return cls(int(task["task"]["index"]), len(task["cluster"]["worker"]), 0)
        rank, world, local = (int(os.environ.get(name) or default) for name, default in _RANKS)
        return cls(rank, world, local)


def collective_timeout_s() -> float:
    """How long a replica waits in a collective for the others before the attempt fails (a replica died)."""
    return float(os.environ.get(COLLECTIVE_TIMEOUT_ENV, 300) or 300)


def log(message: str) -> None:
    """One progress line, flushed at once so log.txt follows the run live; the first replica's only."""
    if Replica.from_env().primary:
        print(message, flush=True)


@dataclass
class TrainContext:
    """Everything a trainer needs; the worker builds it."""

    spec_file: SpecFile
    paths: JobPaths
    cache: Path
    splits: Splits
    data_seconds: float
    started: float = field(default_factory=time.perf_counter)
    log: Callable[[str], None] = log
    # Substitutes the run itself had to use (the CPU for an unusable GPU), after the driver's declared ones.
    substitutions: list[Substitution] = field(default_factory=list)
    replica: Replica = field(default_factory=Replica.from_env)

    @property
    def spec(self) -> JobSpec:
        return self.spec_file.spec

    @property
    def gpu_fraction(self) -> float:
        """Share of a GPU this job was given (1.0 when it has whole GPUs)."""
        return float(os.environ.get("GRIDRUN_GPU_FRACTION", "1") or 1)

    def limits(self, intra: int, inter: int, on_gpu: bool) -> Limits:
        """The limits this run trains under, as the framework and the cgroup report them; logged once."""
        quota, memory = cgroup_limits()
        limits = Limits(
            cpu_threads=intra,
            interop_threads=inter,
            cpu_quota=quota,
            memory_limit_gb=memory,
            gpu_memory_fraction=self.gpu_fraction if on_gpu and self.gpu_fraction < 1 else None,
        )
        self.log(f"limits: {limits.describe()}")
        return limits


def cgroup_limits(root: Path = Path("/sys/fs/cgroup")) -> tuple[float | None, float | None]:
    """(CPUs of the quota, GiB of memory) of this process's cgroup, v2 or v1; None where there is no limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None, None
    # v2: one hierarchy ("0::/path"); v1: one per controller ("4:memory:/path"). Inside a container the path is
    # its namespace's root, so the files are read at the path and at the mount's root.
    paths = {}
    for line in lines:
        _, controllers, own = [*line.split(":", 2), "", ""][:3]
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = own.strip().lstrip("/")

    def read(*names: str) -> list[str]:
        for name in names:
            controller, _, file = name.rpartition("/")
            for folder in dict.fromkeys((root / controller / paths.get(controller, ""), root / controller)):
                try:
                    return (folder / file).read_text().split()
                except OSError:
                    continue
        return []

    if "" in paths and (root / "cgroup.controllers").exists():  # v2
        cpu, memory = read("cpu.max"), read("memory.max")
    else:
        cpu = read("cpu/cpu.cfs_quota_us") + read("cpu/cpu.cfs_period_us")
        memory = read("memory/memory.limit_in_bytes")
    quota = int(cpu[0]) / int(cpu[1]) if len(cpu) == 2 and cpu[0].isdigit() and cpu[1].isdigit() else None
    limit = int(memory[0]) if memory and memory[0].isdigit() else None
    # v1 writes "no limit" as a page-rounded 2**63 - 1.
    gib = limit / 2**30 if limit and limit < 2**60 else None
    return (round(quota, 3) if quota else None), (round(gib, 3) if gib else None)


# The fix when a framework with CUDA finds no NVIDIA device.
NO_DEVICE_FIX = (
    "check that `nvidia-smi` lists the GPU here (a container gets it through the NVIDIA Container Toolkit; "
    "`gridrun run --gpus` on a CPU machine declares GPUs that are not there)"
)


def announce(sub: Substitution, say: Callable[[str], None] = log) -> None:
    """The log line of a substitute in use."""
    say(f"SUBSTITUTE {sub.kind}: {sub.used} stands in for {sub.wanted} ({sub.reason})")


def nvidia_devices() -> list[str]:
    """The NVIDIA device files this process sees (/dev/nvidia0, ...): none without a driver, or in a
    container that was given no GPU."""
    return sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))


def gpu_unusable(ctx: TrainContext, framework: str, cause: str, fix: str) -> None:
    """The job reserved GPUs and `framework` can use none: a UserError with the cause and the fix, unless the
    job declares resources.gpu_fallback: cpu, in which case the CPU stands in, announced and recorded."""
    gpus = ctx.spec.resources.gpus
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    seen = f"CUDA_VISIBLE_DEVICES={visible if visible is not None else '(unset)'}, "
    seen += ", ".join(nvidia_devices()) or "no /dev/nvidia*"
    if ctx.spec.resources.gpu_fallback == "cpu":
        sub = Substitution(
            kind="device",
            wanted=f"{gpus:g} GPU(s)",
            used="cpu",
            reason=f"{framework} sees no GPU: {cause} ({seen}); resources.gpu_fallback: cpu",
        )
        ctx.substitutions.append(sub)
        announce(sub, ctx.log)
        return
    raise UserError(
        f"the job reserved {gpus:g} GPU(s) but {framework} on {socket.gethostname()} can use none: {cause} ({seen}). "
        f"Fix: {fix}; or set resources.gpus: 0, or resources.gpu_fallback: cpu to train on the CPU when no GPU is "
        "usable"
    )


@dataclass
class History:
    """Per-epoch records and the best epoch by validation accuracy. Saved inside checkpoints."""

    epochs: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    best_test_accuracy: float = 0.0
    resumed_from_epoch: int | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0

    def add(self, record: EpochRecord) -> bool:
        """Record an epoch; True when it is the new best."""
        self.epochs.append(record)
        if record.val_accuracy > self.best_val_accuracy:
            self.best_epoch = record.epoch
            self.best_val_accuracy = record.val_accuracy
            self.best_test_accuracy = record.test_accuracy
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {
            "epochs": [e.model_dump() for e in self.epochs],
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "best_test_accuracy": self.best_test_accuracy,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "History":
        h = cls(**{k: v for k, v in state.items() if k != "epochs"})
        h.epochs = [EpochRecord.model_validate(e) for e in state["epochs"]]
        h.resumed_from_epoch = len(h.epochs) + 1
        return h


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return cm


def per_class_accuracy(cm: np.ndarray, names: list[str]) -> list[ClassAccuracy]:
    support = cm.sum(axis=1)
    return [
        ClassAccuracy(name=n, accuracy=float(cm[i, i] / support[i]) if support[i] else 0.0, support=int(support[i]))
        for i, n in enumerate(names)
    ]


def report_epoch(ctx: TrainContext, record: EpochRecord) -> None:
    """A progress line in the log and progress.json for the live view."""
    total = ctx.spec.train.epochs
    ctx.log(
        f"epoch {record.epoch}/{total}  loss {record.train_loss:.4f}  train {record.train_accuracy:.2%}  "
        f"val {record.val_accuracy:.2%}  test {record.test_accuracy:.2%}  lr {record.lr:.3g}  "
        f"{record.epoch_seconds:.1f}s  {record.images_per_second:,.0f} img/s"
    )
    write_json(ctx.paths.progress, {"epoch": record.epoch, "epochs": total, **record.model_dump()})


def hparams(spec: JobSpec, trial: TrialInfo | None = None) -> dict[str, Any]:
    """Flat hyper-parameters for TensorBoard's HParams view; a search's trial adds its search, its number and
    each value drawn for it, by its dotted key, so that the view compares the trials on what they varied."""
    drawn = {"search": trial.search, "trial": trial.number, **trial.values} if trial is not None else {}
    return drawn | {
        "framework": spec.framework,
        "arch": spec.model.arch,
        "weights": spec.model.weights,
        "freeze_backbone": spec.model.freeze_backbone,
        "classifier_width": spec.model.classifier_width or 0,
        "dataset": spec.dataset.name,
        "image_size": spec.dataset.image_size,
        "epochs": spec.train.epochs,
        "batch_size": spec.train.batch_size,
        "optimizer": spec.train.optimizer.name,
        "lr": spec.train.optimizer.lr,
        "weight_decay": spec.train.optimizer.weight_decay,
        "schedule": spec.train.schedule.name,
        "label_smoothing": spec.train.label_smoothing,
        "mixed_precision": spec.train.mixed_precision,
    }


def environment(
    framework: str,
    framework_version: str,
    device: str,
    device_name: str,
    mixed_precision: bool,
    libraries: dict[str, str],
    limits: Limits,
    replicas: int = 1,
    nodes: int = 1,
    parallel: str = "",
) -> Environment:
    """Where the run executed; the executor passes its name and image through the environment."""
    return Environment(
        framework=framework,
        framework_version=framework_version,
        python_version=platform.python_version(),
        device=device,
        device_name=device_name,
        mixed_precision="bf16" if mixed_precision else "off",
        hostname=socket.gethostname(),
        executor=os.environ.get("GRIDRUN_EXECUTOR", ""),
        image=os.environ.get("GRIDRUN_IMAGE", ""),
        image_digest=os.environ.get("GRIDRUN_IMAGE_DIGEST", ""),
        libraries={"numpy": np.__version__, **libraries},
        limits=limits,
        replicas=replicas,
        nodes=nodes,
        parallel=parallel,
    )


def build_result(
    ctx: TrainContext,
    history: History,
    cm: np.ndarray,
    trainable: int,
    total: int,
    env: Environment,
) -> RunResult:
    """result.json from the history and the final evaluation."""
    last = history.epochs[-1]
    return RunResult(
        suite=ctx.spec_file.suite,
        job=ctx.spec_file.job,
        spec_hash=ctx.spec_file.spec_hash,
        spec=ctx.spec,
        substitutions=[*ctx.spec_file.substitutions, *ctx.substitutions],
        dataset_sizes=ctx.splits.sizes(),
        class_names=ctx.splits.class_names,
        epochs=history.epochs,
        final_test_accuracy=last.test_accuracy,
        final_val_accuracy=last.val_accuracy,
        best_epoch=history.best_epoch,
        best_val_accuracy=history.best_val_accuracy,
        best_test_accuracy=history.best_test_accuracy,
        per_class_accuracy=per_class_accuracy(cm, ctx.splits.class_names),
        confusion_matrix=cm.tolist(),
        trainable_parameters=trainable,
        total_parameters=total,
        timing=Timing(
            data_seconds=ctx.data_seconds,
            train_seconds=history.train_seconds,
            eval_seconds=history.eval_seconds,
            total_seconds=time.perf_counter() - ctx.started + ctx.data_seconds,
        ),
        images_per_second=float(np.mean([e.images_per_second for e in history.epochs])),
        resumed_from_epoch=history.resumed_from_epoch,
        environment=env,
    )
