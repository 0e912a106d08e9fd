"""result.json: everything a finished run measured."""

from pydantic import ConfigDict, Field

from schemas.base import Strict
from schemas.job import JobSpec
from schemas.registry import EXECUTORS, FRAMEWORKS, plain


class Measured(Strict):
    """What a run measured, recorded as it came: a diverged run's loss is NaN, and that is a result."""

    model_config = ConfigDict(allow_inf_nan=True)


class EpochRecord(Measured):
    """One epoch's metrics. Accuracies are fractions in [0, 1]."""

    epoch: int = Field(ge=1, description="Epoch number, from 1.")
    train_loss: float = Field(description="Mean training loss.")
    train_accuracy: float = Field(description="Training accuracy (on augmented batches).")
    val_accuracy: float = Field(description="Validation accuracy.")
    test_accuracy: float = Field(description="Test accuracy.")
    lr: float = Field(description="Learning rate at the end of the epoch.")
    epoch_seconds: float = Field(description="Wall time of the epoch, training and evaluation.")
    images_per_second: float = Field(description="Training throughput.")


class ClassAccuracy(Measured):
    """Test accuracy of one class."""

    name: str = Field(description="Class name.")
    accuracy: float = Field(description="Share of this class's test images predicted right.")
    support: int = Field(description="Test images of this class.")


class Timing(Measured):
    """Wall time, split. Seconds."""

    data_seconds: float = Field(description="Loading the dataset and moving it to the device.")
    train_seconds: float = Field(description="Training steps.")
    eval_seconds: float = Field(description="Validation and test passes.")
    total_seconds: float = Field(description="The whole run, start to finish.")


class Substitution(Strict):
    """Something that stood in for the real thing, declared in the suite and announced."""

    kind: str = Field(description="dataset, weights, executor or device.")
    wanted: str = Field(description="What the spec asked for.")
    used: str = Field(description="What was used instead.")
    reason: str = Field(description="Why.")


class Limits(Strict):
    """The share of the machine a run had: what it reserved, as the worker saw it applied."""

    cpu_threads: int | None = Field(None, description="The framework's intra-op (compute) threads.")
    interop_threads: int | None = Field(None, description="The framework's inter-op threads.")
    cpu_quota: float | None = Field(None, description="CPUs of the cgroup's quota (cpu.max); none: no quota.")
    memory_limit_gb: float | None = Field(None, description="GiB of the cgroup's memory.max; none: no limit.")
    gpu_memory_fraction: float | None = Field(None, description="Share of the GPU's memory it may take.")

    def describe(self) -> str:
        """'1 compute thread(s), 1 inter-op, CPU quota 1, memory 2 GiB, GPU memory 0.5'."""
        parts = [f"{self.cpu_threads} compute thread(s), {self.interop_threads} inter-op"]
        parts.append(f"CPU quota {self.cpu_quota:g}" if self.cpu_quota else "no CPU quota")
        parts.append(f"memory {self.memory_limit_gb:g} GiB" if self.memory_limit_gb else "no memory limit")
        if self.gpu_memory_fraction:
            parts.append(f"GPU memory {self.gpu_memory_fraction:g}")
        return ", ".join(parts)

    def differences(self, other: "Limits") -> list[str]:
        """The fields two runs did not share, by name."""
        return [name for name in type(self).model_fields if getattr(self, name) != getattr(other, name)]


class Environment(Strict):
    """Where and with what the run executed."""

    framework: str = Field(description=f"Framework: {plain(list(FRAMEWORKS))}.")
    framework_version: str = Field(description="Version of the framework.")
    python_version: str = Field(description="Version of Python.")
    device: str = Field(description="cuda, mps or cpu.")
    device_name: str = Field(description="e.g. the GPU's product name.")
    mixed_precision: str = Field(description="bf16 or off.")
    hostname: str = Field(description="Host (or container) name.")
    executor: str = Field("", description=f"{plain(list(EXECUTORS))}.")
    image: str = Field("", description="Docker image, when run in one.")
    image_digest: str = Field("", description="Docker image id.")
    libraries: dict[str, str] = Field(default_factory=dict, description="Other library versions.")
    limits: Limits = Field(default_factory=Limits, description="Threads, CPU quota and memory limits it ran under.")
    replicas: int = Field(1, ge=1, description="Data-parallel replicas it trained with, all nodes together.")
    nodes: int = Field(1, ge=1, description="Nodes those replicas ran on.")
    parallel: str = Field("", description="How the replicas trained together, e.g. DDP over gloo; '' for one.")


class RunResult(Measured):
    """What a finished run hands back."""

    schema_version: int = Field(1, description="Version of this file's layout.")
    suite: str = Field(description="Suite name.")
    job: str = Field(description="Job name.")
    spec_hash: str = Field(description="Hash of the spec as run (see spec.json).")
    spec: JobSpec = Field(description="The spec as run, after any declared substitution.")
    substitutions: list[Substitution] = Field(default_factory=list, description="Declared substitutes used.")
    dataset_sizes: dict[str, int] = Field(description="Images in train, val and test.")
    class_names: list[str] = Field(description="Class names, in label order.")
    epochs: list[EpochRecord] = Field(description="Every epoch, in order.")
    final_test_accuracy: float = Field(description="Test accuracy after the last epoch.")
    final_val_accuracy: float = Field(description="Validation accuracy after the last epoch.")
    best_epoch: int = Field(description="Epoch with the best validation accuracy.")
    best_val_accuracy: float = Field(description="Validation accuracy at the best epoch.")
    best_test_accuracy: float = Field(description="Test accuracy at the best epoch.")
    per_class_accuracy: list[ClassAccuracy] = Field(description="Final model's test accuracy per class.")
    confusion_matrix: list[list[int]] = Field(description="Rows: true class; columns: predicted class.")
    trainable_parameters: int = Field(description="Parameters the optimizer updates.")
    total_parameters: int = Field(description="All parameters of the model.")
    timing: Timing = Field(description="Wall time, split.")
    images_per_second: float = Field(description="Mean training throughput over all epochs.")
    resumed_from_epoch: int | None = Field(None, description="First epoch run after resuming from a checkpoint.")
    environment: Environment = Field(description="Where and with what the run executed.")
