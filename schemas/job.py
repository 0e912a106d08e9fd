"""The resolved specification of one training run."""

import difflib
import hashlib
import json
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from schemas.base import PlainText, Problems, SafeName, Strict, clip, excerpt
from schemas.registry import (
    ARCHS,
    AUTO_EXECUTOR,
    DATASETS,
    EXECUTORS,
    FRAMEWORKS,
    ZOOS,
    Dataset,
    Parameters,
    Registered,
    dataset_of,
    framework_of_file,
    model_ref,
    plain,
    quoted,
    weights_suffixes,
    with_hidden_layers,
    with_imagenet,
    zoos_of,
)

# Names declared in schemas.registry, checked against it whenever a spec is validated.
FrameworkName = Annotated[str, Registered(FRAMEWORKS, "framework")]


def _model_name(value: str) -> str:
    model_ref(value)  # raises ValueError with the fix for a name that parses as nothing
    return value


# A twin of ARCHS, <zoo>.<name> or <module>:<function>; a library's own names are checked where the job is built,
# a module of the user's by runner.suite (its file in the code: folder) and the worker (the rest).
ArchName = Annotated[str, AfterValidator(_model_name)]
DatasetName = Annotated[str, Registered(DATASETS, "dataset", own="mydata:load")]
# A substitute is one of gridrun's datasets: the user's function is never "not at hand".
FallbackName = Annotated[str, Registered(DATASETS, "dataset")]
ExecutorName = Annotated[str, Registered(EXECUTORS, "executor", extra=(AUTO_EXECUTOR,))]

# Ray node labels: a key like gpu-type or ray.io/accelerator-type; a value, optionally negated or a set.
# All patterns here are matched with fullmatch: `$` would accept a trailing newline.
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,252}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"!?([A-Za-z0-9._-]{1,63}|in\([A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*\))")
# A Ray custom resource, e.g. A100 or accelerator_type:H100.
_RESOURCE = re.compile(r"[A-Za-z0-9_.:/-]{1,100}")
# A Docker image reference: [registry[:port]/]repository[:tag][@digest].
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,254}")

# numpy's RandomState and the frameworks' global seeds take at most 32 bits.
MAX_SEED = 2**32 - 1
MAX_IMAGES = 10_000_000  # dataset.limit: far beyond CIFAR-10 and ImageNet-1k's 1.3 million
MAX_SYNTHETIC = 1_000_000  # synthetic images are made in memory: 3 GB of 32 px RGB at this count
MAX_WIDTH = 16_384  # classifier_width: a 16384 x 16384 dense layer alone holds 268 M parameters
MAX_EPOCHS = 10_000
MAX_CUSTOM = 1_000_000  # Ray keeps resource amounts as fixed-point integers
MAX_MEMORY_GB = 65_536  # 64 TiB
# What the suite's folder holds beside its job folders (runner.store, runner.report): no job may take these names.
SUITE_ENTRIES = frozenset({"suite.yaml", "summary.json", "report.md", "report.html", "plots"})
MAX_REPLICAS = 256  # data-parallel replicas on one node
MAX_NODES = 1024
MAX_TIMEOUT_MINUTES = 100_000  # about 69 days: finite, so deadlines and timers stay representable


def _always_at_hand() -> list[str]:
    return [d.name for d in DATASETS.values() if d.offline]


def _label_sets() -> str:
    """cifar100: fine (100 classes) or coarse (20 classes): the datasets with several sets of labels."""
    return "; ".join(
        f"{d.name}: " + plain([f"{k} ({n} classes)" for k, n in d.label_sets.items()])
        for d in DATASETS.values()
        if d.label_sets
    )


class DatasetSpec(Strict):
    """Which images a run trains on and how they are split."""

    name: DatasetName = Field(
        "cifar10",
        description=f"Dataset: {plain(list(DATASETS))}, or <module>:<function> from the suite's code: folder "
        "(function(path_or_None) returns a dict of images, labels and classes).",
    )
    image_size: int = Field(224, ge=8, le=1024, description="Side in pixels the images are resized to.")
    limit: int | None = Field(
        None,
        ge=10,
        le=MAX_IMAGES,
        description="Use at most this many training images; validation and test shrink alike.",
    )
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of the training pool held out for validation.")
    test_fraction: float = Field(
        0.2, gt=0, lt=0.5, description="Share held out for testing, for datasets without an official test split."
    )
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the train / validation / test split.")
    path: PlainText | None = Field(
        None,
        description="Data folder: cifar10/cifar100 pickle files, an imagefolder root, or what your own dataset "
        "function is given. Default: inside the cache.",
    )
    labels: str | None = Field(
        None,
        description=f"Which labels of a dataset that has several: {_label_sets()}. Default: the first.",
    )
    synthetic_size: int = Field(2000, ge=10, le=MAX_SYNTHETIC, description="Number of images of the synthetic dataset.")
    fallback: FallbackName | None = Field(
        None, description="Declared substitute used, and recorded, when this dataset cannot be had offline."
    )

    @model_validator(mode="after")
    def _check(self) -> "DatasetSpec":
        problems = Problems(self)
        sets = self.declared.label_sets
        if self.labels is not None and not sets:
            problems.add(
                "labels",
                f"labels applies to datasets with several sets of labels ({_label_sets()}); {self.name} has one. "
                "Fix: remove dataset.labels",
                self.labels,
            )
        elif self.labels is not None and self.labels not in sets:
            close = difflib.get_close_matches(self.labels, list(sets), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add(
                "labels",
                f"{self.name} has no labels {excerpt(self.labels)}{hint}: use {quoted(list(sets))}",
                self.labels,
            )
        if self.declared.needs_path and not self.path:
            problems.add(
                "path", f"dataset {self.name} needs 'path': the folder holding one sub-folder per class", self.path
            )
        if self.fallback == self.name:
            problems.add(
                "fallback",
                f"fallback {self.fallback!r} is the dataset itself: name another dataset or remove it",
                self.fallback,
            )
        elif self.fallback is not None and DATASETS[self.fallback].needs_path:
            # A substitute gets no dataset.path: the path named belongs to the dataset it stands in for.
            problems.add(
                "fallback",
                f"fallback {self.fallback!r} needs a folder of its own, which a substitute does not get. "
                f"Fix: name a dataset that is always at hand ({plain(_always_at_hand())}), or remove fallback",
                self.fallback,
            )
        problems.raise_any()
        return self

    @property
    def declared(self) -> Dataset:
        """The dataset's registry entry (USER_DATASET for the user's own function)."""
        return dataset_of(self.name)

    @property
    def user(self) -> bool:
        """The user's own `<module>:<function>`, from the suite's code: folder."""
        return self.declared.user

    @property
    def classes(self) -> int | None:
        """Classes the model's head gets, as declared; None where only loading the data tells."""
        sets = self.declared.label_sets
        return sets[self.labels or next(iter(sets))] if sets else self.declared.classes


class ModelSpec(Strict):
    """Architecture, initial weights and head."""

    arch: ArchName = Field(
        description=f"Model: {plain(list(ARCHS))} (the same network in every framework), "
        f"{plain([f'{z}.<name>' for z in ZOOS])} (that library's model with a new head), or <module>:<function> "
        "from the suite's code: folder."
    )
    weights: PlainText = Field(
        "none", description="Initial weights: none (random), imagenet, or a path to a weights file."
    )
    weights_fallback: Literal["none"] | None = Field(
        None, description="Declared substitute when ImageNet weights cannot be had: none = random initial weights."
    )
    freeze_backbone: bool = Field(False, description="Train only the classifier head.")
    classifier_width: int | None = Field(
        None,
        ge=8,
        le=MAX_WIDTH,
        description=f"Width of the hidden dense layers of the classifier ({'/'.join(with_hidden_layers())}, and "
        "zoo models whose classifier has hidden dense layers; default: the library's).",
    )
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout rate in the classifier.")

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        problems = Problems(self)
        ref = model_ref(self.arch)
        # Your own function reads its weights file itself, whatever its kind: only gridrun's loaders need a suffix.
        own = ref.kind == "user"
        if self.weights not in ("none", "imagenet") and not own and not self.weights.endswith(weights_suffixes()):
            problems.add(
                "weights",
                f"weights {excerpt(self.weights)} is not none, imagenet, or a weights file "
                f"(a path ending in {', '.join(weights_suffixes())})",
                self.weights,
            )
        if own and self.classifier_width is not None:
            problems.add(
                "classifier_width",
                f"classifier_width does not apply to {self.arch}: your function builds its own layers. "
                "Fix: remove classifier_width and set the width in your code",
                self.classifier_width,
            )
        if own and self.freeze_backbone:
            problems.add(
                "freeze_backbone",
                f"freeze_backbone does not apply to {self.arch}: gridrun cannot tell which layers of your model "
                "are its head. Fix: remove freeze_backbone and freeze the backbone in your function "
                "(requires_grad_(False) on its parameters in torch, layer.trainable = False in Keras): gridrun "
                "trains, and counts as trainable, what your model leaves trainable",
                self.freeze_backbone,
            )
        elif ref.twin and self.classifier_width is not None and ARCHS[self.arch].default_width is None:
            problems.add(
                "classifier_width",
                f"classifier_width applies to {plain(with_hidden_layers(), 'and')}; {self.arch} has a single "
                "linear head. Fix: remove classifier_width",
                self.classifier_width,
            )
        problems.raise_any()
        return self

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"

    @property
    def twin(self) -> bool:
        """One of gridrun's own architectures: the same network in every framework."""
        return model_ref(self.arch).twin

    def parameters(self, classes: int) -> Parameters | None:
        """Total and trainable parameters with a `classes` head, by arithmetic for a twin (no framework);
        None for a zoo or user model, which only its library can count (runner.plan.models asks it)."""
        if not self.twin:
            return None
        return ARCHS[self.arch].count(classes, self.classifier_width, self.freeze_backbone)


class OptimizerSpec(Strict):
    """Optimizer, in PyTorch's meaning of each value."""

    name: Literal["sgd", "adam", "adamw"] = Field("sgd", description="sgd, adam or adamw.")
    lr: float = Field(0.01, gt=0, le=10, description="Peak learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (PyTorch's definition).")
    nesterov: bool = Field(False, description="Nesterov momentum for SGD.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="Weight decay (L2 for sgd/adam, decoupled for adamw).")

    @model_validator(mode="after")
    def _check(self) -> "OptimizerSpec":
        problems = Problems(self)
        if self.name == "sgd" and self.nesterov and self.momentum == 0:
            problems.add(
                "nesterov",
                "nesterov needs momentum above 0. Fix: set train.optimizer.momentum (e.g. 0.9), or nesterov: false",
                self.nesterov,
            )
        problems.raise_any()
        return self


class ScheduleSpec(Strict):
    """Learning-rate schedule over the whole run."""

    name: Literal["constant", "cosine", "onecycle"] = Field("constant", description="constant, cosine or onecycle.")
    warmup_epochs: float = Field(0, ge=0, le=MAX_EPOCHS, description="Linear warm-up, in epochs (cosine only).")


class AugmentSpec(Strict):
    """Training-time augmentation, done on the device in batches."""

    random_crop: bool = Field(True, description="Random translation, as a padded random crop.")
    crop_padding: float = Field(0.125, ge=0, le=0.5, description="Crop padding as a share of the side (4 px of 32).")
    horizontal_flip: bool = Field(True, description="Random horizontal flip.")


class TrainSpec(Strict):
    """How a run trains."""

    epochs: int = Field(10, ge=1, le=MAX_EPOCHS, description="Number of epochs.")
    batch_size: int = Field(64, ge=1, le=65_536, description="Training batch size.")
    eval_batch_size: int = Field(512, ge=1, le=65_536, description="Batch size for validation and test.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer.")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="Learning-rate schedule.")
    augment: AugmentSpec = Field(default_factory=AugmentSpec, description="Augmentation.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing of the cross-entropy loss.")
    mixed_precision: bool = Field(True, description="bfloat16 autocast where the GPU supports it.")
    compile: bool = Field(False, description="torch.compile / XLA jit_compile the model.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of weight initialisation and batch order.")


class ResourcesSpec(Strict):
    """What the scheduler reserves for the run."""

    gpus: float = Field(0, ge=0, le=64, description="GPUs; fractions below 1 share a GPU.")
    gpu_fallback: Literal["cpu"] | None = Field(
        None,
        description="Declared substitute when the framework cannot use the GPUs reserved (no driver, a CPU-only "
        "build, a Docker daemon without the NVIDIA runtime): cpu = train on the CPU, announced and recorded. "
        "Without it such a job fails at its start, naming the cause.",
    )
    cpus: float = Field(1, gt=0, le=1024, description="CPU cores (on each node, shared by its replicas).")
    replicas: int | None = Field(
        None,
        ge=1,
        le=MAX_REPLICAS,
        description="Data-parallel replicas on each node. With gpus: N there is one per GPU (leave this unset, "
        "or equal to gpus); with gpus: 0 they are CPU replicas (gloo for PyTorch, logical CPU devices for "
        "TensorFlow) sharing the job's cpus, for testing and CPU clusters.",
    )
    nodes: int = Field(
        1,
        ge=1,
        le=MAX_NODES,
        description="Nodes one job trains across, each holding the job's gpus, cpus and memory and running its "
        "replicas (Ray places one bundle per node, on distinct nodes). train.batch_size stays the global batch.",
    )
    memory_gb: float | None = Field(None, gt=0, le=MAX_MEMORY_GB, description="Host memory limit in GiB.")
    timeout_minutes: float | None = Field(
        None, gt=0, le=MAX_TIMEOUT_MINUTES, description="Stop the run after this long."
    )
    max_retries: int = Field(0, ge=0, le=10, description="Retries after a failure of the node or container.")
    custom: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources the run needs, e.g. {A100: 1}: only nodes started with "
        "`ray start --resources '{\"A100\": 4}'` can hold it.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the run's node must carry (Ray label selector), e.g. {gpu-type: A100}; a value "
        "may be 'v', '!v', 'in(a,b)' or '!in(a,b)'. Nodes get labels with `ray start --labels gpu-type=A100`.",
    )

    @property
    def per_node(self) -> int:
        """Replicas on each node: one per whole GPU, else `replicas` (1 when unset)."""
        return int(self.gpus) if self.gpus >= 1 else (self.replicas or 1)

    @property
    def world(self) -> int:
        """Data-parallel replicas in all: every node's."""
        return self.per_node * self.nodes

    @property
    def threads(self) -> int:
        """Compute threads each replica may use: its share of the CPUs reserved, rounded down, at least one."""
        return max(1, int(self.cpus) // self.per_node)

    @model_validator(mode="after")
    def _check_replicas(self) -> "ResourcesSpec":
        if 0 < self.gpus < 1 and (self.nodes > 1 or (self.replicas or 1) > 1):
            raise ValueError(
                f"gpus {self.gpus:g} is a share of one GPU, which cannot hold {self.world} data-parallel replicas: "
                "use whole GPUs (gpus: 1 or more, one replica each), or gpus: 0 with replicas for CPU replicas"
            )
        if self.gpus >= 1 and self.replicas is not None and self.replicas != int(self.gpus):
            raise ValueError(
                f"replicas {self.replicas} with gpus {int(self.gpus)}: a job with GPUs runs one replica per GPU. "
                f"Fix: drop replicas, or set gpus: {self.replicas}"
            )
        if self.gpus == 0 and self.per_node > max(1, int(self.cpus)):  # one replica may have a share of a core
            raise ValueError(
                f"replicas {self.per_node} on cpus {self.cpus:g}: each CPU replica needs a core of its own. "
                f"Fix: set cpus: {self.per_node} or more, or fewer replicas"
            )
        return self

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> "ResourcesSpec":
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise ValueError(f"gpus {self.gpus} is a fraction above 1: use a whole number, or a fraction below 1")
        return self

    @model_validator(mode="after")
    def _check_placement(self) -> "ResourcesSpec":
        for name, amount in self.custom.items():
            if not _RESOURCE.fullmatch(name):
                raise ValueError(
                    f"custom resource {excerpt(name)} is not a resource name: use 1-100 letters, digits, "
                    "'_', '-', '.', ':' or '/'"
                )
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"custom resource {name!r} is built in: use resources.cpus / gpus / memory_gb")
            if not 0 < amount <= MAX_CUSTOM:
                raise ValueError(
                    f"custom resource {name!r} needs an amount above 0 and at most {MAX_CUSTOM:,}, not {amount:g}"
                )
        for key, value in self.labels.items():
            if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
                raise ValueError(
                    f"label {excerpt(key)}: {excerpt(value)} is not a node label selector: use a key of letters, "
                    "digits, '-', '_', '.', '/' and a value 'v', '!v', 'in(a,b)' or '!in(a,b)'"
                )
        return self


class JobSpec(Strict):
    """One run: framework, model, data, training and resources."""

    name: SafeName = Field(description="Job name; also its folder name under the suite's results.")
    framework: FrameworkName = Field(description=f"Framework: {plain(list(FRAMEWORKS))}.")
    model: ModelSpec = Field(description="Model.")
    dataset: DatasetSpec = Field(default_factory=DatasetSpec, description="Dataset.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Resources.")
    executor: ExecutorName = Field(AUTO_EXECUTOR, description=f"{plain([AUTO_EXECUTOR, *EXECUTORS])}.")
    image: str | None = Field(None, description="Docker image with the worker installed; default: the framework's.")
    description: str = Field("", description="Free text shown in the report.")

    @model_validator(mode="after")
    def _check(self) -> "JobSpec":
        problems = Problems(self)
        if self.name.lower() in SUITE_ENTRIES:  # lower: a folder on a case-insensitive disk is the same
            problems.add(
                "name",
                f"{self.name!r} is taken by the suite's own files beside its job folders "
                f"({', '.join(sorted(SUITE_ENTRIES))}). Fix: give the job another name, e.g. "
                f"{self.name.split('.')[0]}-1",
                self.name,
            )
        ref = model_ref(self.model.arch)
        if ref.zoo is not None and ref.zoo.framework != self.framework:
            own = plain([f"{z.prefix}.<name>" for z in zoos_of(self.framework)])
            problems.add(
                "model.arch",
                f"{self.model.arch} is a {ref.zoo.display} model, which trains in "
                f"{ref.zoo.framework}, not {self.framework}. Fix: framework: {ref.zoo.framework}, or a "
                f"{self.framework} model ({plain(list(ARCHS))}, {own} or <module>:<function>)",
                self.model.arch,
            )
        low = ARCHS[self.model.arch].min_image_size if ref.twin else 0
        if self.dataset.image_size < low:
            problems.add(
                "dataset.image_size",
                f"image_size {self.dataset.image_size} is too small for {self.model.arch}: use at least {low}",
                self.dataset.image_size,
            )
        if self.image is not None and not _IMAGE.fullmatch(self.image):
            problems.add(
                "image",
                f"image {excerpt(self.image)} is not a Docker image reference: use letters, digits and "
                "'.', '_', '-', ':', '/', '@' (e.g. registry.example.com/team/gridrun-torch:1.0)",
                self.image,
            )
        world = self.resources.world
        if world > 1 and self.train.batch_size % world:
            fits = max(world, self.train.batch_size // world * world)
            problems.add(
                "train.batch_size",
                f"batch_size {self.train.batch_size} (the global batch) does not split evenly over {world} "
                f"replicas. Fix: a multiple of {world}, e.g. {fits}",
                self.train.batch_size,
            )
        self._check_weights(problems)
        problems.raise_any()
        return self

    def _check_weights(self, problems: Problems) -> None:
        """ImageNet weights this framework has for the arch; a weights file of this framework's kind."""
        weights, arch, framework = self.model.weights, self.model.arch, FRAMEWORKS[self.framework]
        kind = model_ref(arch).kind
        if weights == "imagenet" and kind == "user":
            problems.add(
                "model.weights",
                f"{arch} is your own model: gridrun has no ImageNet weights for it. Fix: weights: <path to a "
                "weights file> (your function gets its path), or weights: none",
                weights,
            )
        elif weights == "imagenet" and kind == "twin" and self.framework not in ARCHS[arch].imagenet:
            offered = ", ".join(with_imagenet(self.framework)) or "none"
            problems.add(
                "model.weights",
                f"{self.framework} has no ImageNet weights for {arch} (offered: {offered}). "
                "Fix: use weights: none, or weights: <path to a weights file>",
                weights,
            )
        elif weights not in ("none", "imagenet") and kind != "user":
            owner = framework_of_file(weights)
            if owner is not None and owner.name != self.framework:
                problems.add(
                    "model.weights",
                    f"weights file {clip(weights, 100)} is a {owner.display} file; a {self.framework} job loads "
                    f"{framework.weights_kind}. Fix: {framework.weights_fix}; or use weights: none or imagenet",
                    weights,
                )

    def code_refs(self) -> list[tuple[str, str]]:
        """(field, module:function) of each name of the user's own code in the spec."""
        refs = [("model.arch", self.model.arch)] if model_ref(self.model.arch).kind == "user" else []
        return refs + ([("dataset.name", self.dataset.name)] if self.dataset.user else [])

    def canonical_json(self) -> str:
        """The spec as canonical JSON (sorted keys, no spaces): the input of its hash."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def digest(self, *extra: str) -> str:
        """Hash of the canonical spec plus anything else that changes the result (image, code version)."""
        h = hashlib.sha256(self.canonical_json().encode())
        for part in extra:
            h.update(b"\0" + part.encode())
        return h.hexdigest()[:16]
