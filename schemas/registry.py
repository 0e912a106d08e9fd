"""Everything gridrun knows by name, each declared once: frameworks, architectures, datasets, executors.

An entry holds what a spec's checks, the plan, the prepare step and the report need to know, as plain
data; nothing here imports a framework, so the driver validates specs and sizes checkpoints without
PyTorch or TensorFlow. Where an entry has code behind it, it names it as "module" or
"module:attribute", which only the package that runs it imports, and only when it runs it.

Adding one is its module and its entry here:

- a framework: a trainer module (`train(ctx) -> RunResult`, loaded by runner.train.frameworks), a
  models module whose ARCHS builds every architecture below, a Dockerfile; a Framework entry.
- an architecture: an Arch entry (its parameter arithmetic, smallest image, hidden width, ImageNet
  weights per framework) and, in each framework's models module, one ARCHS entry with its builder.
- a dataset: a loader `load(spec, cache) -> Splits` (runner.train.data calls it); a Dataset entry.
  A spec may also name `<module>:<function>` of the suite's code: folder (USER_DATASET stands for it).
- an executor: an `Executor` subclass (runner.execute.get makes one); an Executor entry.

tests/test_registry.py checks that every entry's code exists and agrees with its declaration.
"""

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema

from schemas.base import clip, excerpt

# --- frameworks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Framework:
    """A deep-learning framework a job can train in."""

    name: str  # as a spec says it: framework: torch
    display: str  # as a report says it: PyTorch
    image: str  # the repository of its worker's Docker image (the tag is the version and a hash)
    dockerfile: str  # that image's Dockerfile, in the source checkout
    trainer: str  # module with train(ctx: TrainContext) -> RunResult
    models: str  # module whose ARCHS maps each architecture below to this framework's builder
    weights_suffixes: tuple[str, ...]  # the weights files it loads, by suffix
    weights_kind: str  # what those files are, in words
    weights_fix: str  # how to make one, for error messages
    packages: tuple[str, ...] = ()  # its distributions, whose versions are part of a run's identity
    colour: str = ""  # its bars in the report's plots ("" picks one)
    forkable: bool = False  # a process that imported its trainer may fork runs (runner.execute.warm)
    # Data-parallel jobs: one process per replica, started by torch.distributed.run (torchrun), or else one
    # process per node holding all of that node's replicas (tf.distribute's strategies).
    process_per_replica: bool = False


FRAMEWORKS: dict[str, Framework] = {
    f.name: f
    for f in (
        Framework(
            "torch",
            "PyTorch",
            image="gridrun-torch",
            dockerfile="docker/torch.Dockerfile",
            trainer="runner.train.torch_trainer",
            models="runner.train.torch_models",
            weights_suffixes=(".pth", ".pt"),
            weights_kind="PyTorch state dicts",
            weights_fix="give a .pth/.pt state dict saved with torch.save(model.state_dict(), path) "
            "(a gridrun torch run's checkpoints/best.pt)",
            packages=("torch", "torchvision"),
            colour="#ee4c2c",
            # Importing torch starts no runtime: CUDA and the thread pools start at first use, in each run.
            forkable=True,
            process_per_replica=True,
        ),
        Framework(
            "tensorflow",
            "TensorFlow",
            image="gridrun-tensorflow",
            dockerfile="docker/tensorflow.Dockerfile",
            trainer="runner.train.tf_trainer",
            models="runner.train.tf_models",
            weights_suffixes=(".h5", ".keras"),
            weights_kind="Keras weights",
            weights_fix="give a .weights.h5 or .keras file saved from the Keras model "
            "(a gridrun tensorflow run's checkpoints/best.weights.h5), or a keras-applications .h5",
            packages=("tensorflow", "keras"),
            colour="#ff8f00",
        ),
    )
}


def weights_suffixes() -> tuple[str, ...]:
    """Every suffix of a weights file some framework loads, in declaration order."""
    return tuple(dict.fromkeys(s for f in FRAMEWORKS.values() for s in f.weights_suffixes))


def framework_of_file(path: str) -> Framework | None:
    """The framework whose weights files end like `path` (the longest matching suffix wins)."""
    matches = [(len(s), f) for f in FRAMEWORKS.values() for s in f.weights_suffixes if path.endswith(s)]
    return max(matches, key=lambda m: m[0])[1] if matches else None


# --- architectures -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsSource:
    """A downloadable weights file and how to verify it."""

    url: str
    sha256_prefix: str = ""  # torchvision files carry the first hex digits of their sha256 in the name
    md5: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


class Parameters(NamedTuple):
    """Parameter counts of a model as PyTorch counts them (BatchNorm's running statistics are buffers)."""

    total: int
    trainable: int


@dataclass(frozen=True)
class Arch:
    """An architecture: torchvision's layers with a fresh head for the dataset's classes."""

    name: str
    description: str
    # Smallest input side the layers accept (each stride and pool must leave at least one pixel).
    min_image_size: int
    # (classes, hidden width) -> (backbone, head) parameters; the head is what trains under freeze_backbone.
    parameters: Callable[[int, int], tuple[int, int]]
    # Width of the hidden dense layers of the classifier; None: a single linear head, no classifier_width.
    default_width: int | None = None
    # ImageNet weights each framework can load for it.
    imagenet: Mapping[str, WeightsSource] = field(default_factory=dict)

    def count(self, classes: int, width: int | None = None, frozen: bool = False) -> Parameters:
        """Total and trainable parameters with a `classes` head (and `width` hidden layers, default width)."""
        backbone, head = self.parameters(classes, width or self.default_width or 0)
        return Parameters(backbone + head, head if frozen else backbone + head)


# Parameter arithmetic: torchvision's layers, counted.


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _conv(n_in: int, n_out: int, kernel: int, bias: bool = True) -> int:
    return n_in * n_out * kernel * kernel + (n_out if bias else 0)


def _batchnorm(channels: int) -> int:
    return 2 * channels  # weight and bias; the running mean and variance are buffers


def _dense_head(flat: int, width: int, classes: int) -> int:
    """torchvision's alexnet/vgg classifier: flat -> width -> width -> classes (ReLU and dropout have none)."""
    return _linear(flat, width) + _linear(width, width) + _linear(width, classes)


def _alexnet(classes: int, width: int) -> tuple[int, int]:
    """features: five convolutions; AdaptiveAvgPool2d(6) makes the classifier's input 256 * 6 * 6."""
    convs = [(3, 64, 11), (64, 192, 5), (192, 384, 3), (384, 256, 3), (256, 256, 3)]
    return sum(_conv(i, o, k) for i, o, k in convs), _dense_head(256 * 6 * 6, width, classes)


_VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)  # configuration "D"


def _vgg16(classes: int, width: int) -> tuple[int, int]:
    """features: thirteen 3x3 convolutions; AdaptiveAvgPool2d(7) makes the classifier's input 512 * 7 * 7."""
    backbone = sum(_conv(i, o, 3) for i, o in zip((3, *_VGG16_CHANNELS[:-1]), _VGG16_CHANNELS, strict=True))
    return backbone, _dense_head(512 * 7 * 7, width, classes)


def _resnet18(classes: int, width: int) -> tuple[int, int]:
    """A 7x7 stem, four stages of two BasicBlocks (convolutions without bias, each with a BatchNorm),
    a 1x1 projection where a stage changes the width; the head is `fc`."""
    backbone = _conv(3, 64, 7, bias=False) + _batchnorm(64)
    channels_in = 64
    for channels in (64, 128, 256, 512):
        for _ in range(2):
            # conv3x3 (stride) + BN, conv3x3 + BN
            backbone += _conv(channels_in, channels, 3, False) + _conv(channels, channels, 3, False)
            backbone += 2 * _batchnorm(channels)
            if channels != channels_in:  # the first block of stages 2-4 (stride 2): downsample conv + BN
                backbone += _conv(channels_in, channels, 1, False) + _batchnorm(channels)
            channels_in = channels
    return backbone, _linear(512, classes)


_TORCHVISION = "https://download.pytorch.org/models/"

ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        # AlexNet's strided convolution and three max-pools need 63 px; VGG16's and ResNet18's five halvings 32.
        Arch(
            "alexnet",
            "torchvision AlexNet",
            min_image_size=63,
            parameters=_alexnet,
            default_width=4096,
            imagenet={"torch": WeightsSource(_TORCHVISION + "alexnet-owt-7be5be79.pth", "7be5be79")},
        ),
        Arch(
            "vgg16",
            "torchvision VGG16 (configuration D, no BatchNorm)",
            min_image_size=32,
            parameters=_vgg16,
            default_width=4096,
            imagenet={
                "torch": WeightsSource(_TORCHVISION + "vgg16-397923af.pth", "397923af"),
                # keras.applications' convolutional base (its layers are torchvision's `features`).
                "tensorflow": WeightsSource(
                    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
                    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    md5="6d6bbae143d832006294945121d1f1fc",
                ),
            },
        ),
        Arch(
            "resnet18",
            "torchvision ResNet18",
            min_image_size=32,
            parameters=_resnet18,
            imagenet={"torch": WeightsSource(_TORCHVISION + "resnet18-f37072fd.pth", "f37072fd")},
        ),
    )
}


def with_hidden_layers() -> list[str]:
    """The architectures whose classifier has hidden dense layers (classifier_width applies)."""
    return [a.name for a in ARCHS.values() if a.default_width is not None]


def with_imagenet(framework: str) -> list[str]:
    """The architectures with ImageNet weights for `framework`."""
    return [a.name for a in ARCHS.values() if framework in a.imagenet]


# --- model libraries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Zoo:
    """A library of ready-made models a spec names as `<prefix>.<name>`: the library's own network with a
    fresh head for the dataset's classes, built by runner.train.torch_zoo or keras_zoo (the driver imports
    no framework, so the library's own names are checked where the job is built)."""

    prefix: str  # model.arch: <prefix>.<name>
    display: str  # as messages and the report say it
    framework: str  # the one framework that can train it
    description: str
    weights_suffix: str  # the suffix of its ImageNet weights in the cache
    example: str  # a name, for messages
    # Its distributions: all installed, the driver can ask the library (in a child process, runner.train.probe);
    # their versions key what it answered in the cache.
    packages: tuple[str, ...]
    # Where the library downloads its ImageNet weights from: a plan, which downloads nothing, asks whether it answers.
    weights_host: str


ZOOS: dict[str, Zoo] = {
    z.prefix: z
    for z in (
        Zoo(
            "torchvision",
            "torchvision",
            "torch",
            "torchvision.models' classification models (torchvision.models.list_models())",
            weights_suffix=".pth",
            example="torchvision.resnet50",
            packages=("torch", "torchvision"),
            weights_host="https://download.pytorch.org/models/",
        ),
        Zoo(
            "timm",
            "timm",
            "torch",
            "PyTorch Image Models (timm.list_models()); a pretrained tag may follow: timm.resnet50.a1_in1k",
            weights_suffix=".pth",
            example="timm.convnext_tiny",
            packages=("torch", "timm"),
            weights_host="https://huggingface.co/timm",  # timm's weights are on the Hugging Face hub
        ),
        Zoo(
            "keras",
            "keras.applications",
            "tensorflow",
            "keras.applications' models",
            weights_suffix=".weights.h5",
            example="keras.ResNet50",
            packages=("keras", "tensorflow"),
            weights_host="https://storage.googleapis.com/tensorflow/keras-applications/",
        ),
    )
}

# `<module>:<function>`: the user's own model or dataset, from the suite's code: folder.
USER_REF = re.compile(r"[A-Za-z_]\w{0,99}(\.[A-Za-z_]\w{0,99}){0,9}:[A-Za-z_]\w{0,99}")


def is_user_ref(name: str) -> bool:
    """Whether a model or dataset name is the user's own `<module>:<function>`."""
    return ":" in name


def check_user_ref(name: str, what: str, example: str) -> str:
    """`name` when it is a well-formed `<module>:<function>`; else ValueError with the fix."""
    if not USER_REF.fullmatch(name):
        raise ValueError(
            f"{what} {excerpt(name)} is not <module>:<function>: use a Python module path and a function "
            f"name, e.g. {example} (the module lives in the suite's code: folder)"
        )
    return name


# A zoo's model name; timm's may carry a pretrained tag after a dot (resnet50.a1_in1k).
_ZOO_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class ModelRef(NamedTuple):
    """What `model.arch` names: a twin of ARCHS, a zoo's model, or the user's `module:function`."""

    kind: str  # "twin", "zoo" or "user"
    name: str  # the twin, the library's own name (resnet50), or module:function
    zoo: Zoo | None = None

    @property
    def twin(self) -> bool:
        return self.kind == "twin"


def model_ref(arch: str) -> ModelRef:
    """Parse a `model.arch`; ValueError with the fix when it names nothing gridrun can build."""
    if is_user_ref(arch):
        return ModelRef("user", check_user_ref(arch, "model", "mynets:build"))
    if "." in arch:
        prefix, name = arch.split(".", 1)
        if prefix not in ZOOS:
            close = difflib.get_close_matches(prefix, list(ZOOS), n=1)
            hint = f" (did you mean {close[0]}.{clip(name, 60)}?)" if close else ""
            raise ValueError(
                f"unknown model library {excerpt(prefix)}{hint}: use {plain([f'{z}.<name>' for z in ZOOS])}, "
                f"a gridrun architecture ({plain(list(ARCHS))}) or <module>:<function>"
            )
        if not _ZOO_NAME.fullmatch(name):
            raise ValueError(f"model {excerpt(arch)} is not a {prefix} model name, e.g. {ZOOS[prefix].example}")
        return ModelRef("zoo", name, ZOOS[prefix])
    if arch in ARCHS:
        return ModelRef("twin", arch)
    close = difflib.get_close_matches(arch, list(ARCHS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown architecture {excerpt(arch)}{hint}: use {quoted(list(ARCHS))} (the same network in every "
        f"framework), {plain([f'{z}.<name>' for z in ZOOS])}, or <module>:<function> of your own"
    )


def zoos_of(framework: str) -> list[Zoo]:
    return [z for z in ZOOS.values() if z.framework == framework]


def unknown_zoo_model(ref: ModelRef, names: Sequence[str], tagged: Sequence[str] = ()) -> str:
    """'' when the library offers `ref`'s model (given its `names` and, for timm, its pretrained `tagged`
    names such as resnet50.a1_in1k), else the message with the closest names of that library."""
    assert ref.zoo is not None
    zoo, base, _, tag = ref.zoo, *ref.name.partition(".")
    if base in names and (not tag or ref.name in tagged):
        return ""
    if base in names:  # timm: the model exists, the pretrained tag does not
        own = [t for t in tagged if t.startswith(base + ".")]
        close = difflib.get_close_matches(ref.name, own, n=3) or own[:3]
        hint = f" (did you mean {', '.join(f'{zoo.prefix}.{c}' for c in close)}?)" if close else ""
        return (
            f"{zoo.display} has no pretrained tag {excerpt(tag)} for {base}{hint}. "
            f"Fix: `gridrun models --filter {base}` lists its tags, or name {zoo.prefix}.{base} alone"
        )
    close = difflib.get_close_matches(base, list(names), n=3)
    hint = f" (did you mean {', '.join(f'{zoo.prefix}.{c}' for c in close)}?)" if close else ""
    shared = _shared_start(base, close[0]) if close else ""
    text = shared if len(shared) >= 3 else base[:12]
    return (
        f"{zoo.display} has no model {excerpt(base)}{hint}. "
        f"Fix: `gridrun models --framework {zoo.framework} --filter {text}` lists the names"
    )


def _shared_start(a: str, b: str) -> str:
    """The start of `a` that `b` begins with too, case aside."""
    n = 0
    while n < min(len(a), len(b)) and a[n].lower() == b[n].lower():
        n += 1
    return a[:n]


def same_name(arch: str) -> str:
    """The library's model name without its library, case and underscores: torchvision.resnet50 and
    keras.ResNet50 are both 'resnet50' (different networks that share a name); a twin's is its own."""
    return model_ref(arch).name.split(".")[0].replace("_", "").replace("-", "").lower()


# --- datasets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    """An archive the prepare step downloads once into the cache, and the files it holds."""

    url: str
    md5: str
    folder: str  # the folder the archive extracts to
    files: tuple[str, ...]  # what the loader reads inside it


@dataclass(frozen=True)
class Dataset:
    """A dataset: where its images come from and how many classes it has."""

    name: str
    description: str
    loader: str  # "module:function", load(spec: DatasetSpec, cache: Path) -> Splits
    classes: int | None  # None: known once loaded (one per sub-folder of dataset.path, or the user's function's)
    needs_path: bool = False  # dataset.path is required: the images are the user's own
    download: Download | None = None  # None: nothing to download (made in memory, or the user's folder)
    display: str = ""  # as messages say it: CIFAR-10
    # Sets of labels a spec may pick with dataset.labels, each with its classes; the first is the default.
    label_sets: Mapping[str, int] = field(default_factory=dict)
    user: bool = False  # the user's own <module>:<function> (USER_DATASET)

    @property
    def shown(self) -> str:
        return self.display or self.name

    @property
    def offline(self) -> bool:
        """Whether it is always at hand: nothing to download and no folder of the user's."""
        return self.download is None and not self.needs_path


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            "cifar10",
            "CIFAR-10: 50,000 training and 10,000 test images of 32 px, 10 classes",
            "runner.train.data:load_cifar10",
            classes=10,
            download=Download(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py",
                (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
            ),
            display="CIFAR-10",
        ),
        Dataset(
            "cifar100",
            "CIFAR-100: 50,000 training and 10,000 test images of 32 px, 100 classes in 20 superclasses "
            "(dataset.labels: fine or coarse)",
            "runner.train.data:load_cifar100",
            classes=100,
            download=Download(
                "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                "eb9058c3a382ffc7106e4002c42a8d85",
                "cifar-100-python",
                ("train", "test", "meta"),
            ),
            display="CIFAR-100",
            label_sets={"fine": 100, "coarse": 20},
        ),
        Dataset(
            "digits", "scikit-learn's 1,797 handwritten digits of 8 px", "runner.train.data:load_digits", classes=10
        ),
        Dataset("synthetic", "seeded CIFAR-shaped images, learnable", "runner.train.data:load_synthetic", classes=10),
        Dataset(
            "imagefolder",
            "the user's folder of images, one sub-folder per class",
            "runner.train.data:load_imagefolder",
            classes=None,
            needs_path=True,
        ),
    )
}


# What a spec's `dataset.name: <module>:<function>` stands for: the images the user's function returns
# (runner.train.userdata calls it), their classes known once it has run.
USER_DATASET = Dataset(
    "<module>:<function>",
    "your own function's images, from the suite's code: folder",
    "runner.train.userdata:load",
    classes=None,
    user=True,
)


def dataset_of(name: str) -> Dataset:
    """The entry of a dataset name a spec accepted: a registered dataset, or USER_DATASET for <module>:<function>."""
    return USER_DATASET if is_user_ref(name) else DATASETS[name]


# --- executors ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Executor:
    """A way of starting a run's worker."""

    name: str
    description: str
    implementation: str  # "module:Class", an Executor subclass


AUTO_EXECUTOR = "auto"  # docker where it works, else process; not an executor of its own

EXECUTORS: dict[str, Executor] = {
    e.name: e
    for e in (
        Executor("process", "a child process with the host's Python", "runner.execute.process:ProcessExecutor"),
        Executor("docker", "a container of the framework's image", "runner.execute.docker:DockerExecutor"),
    )
}


# --- names in specs ----------------------------------------------------------------------------------


def quoted(names: list[str] | tuple[str, ...], conjunction: str = "or") -> str:
    """'a', 'b' or 'c' (as pydantic lists choices)."""
    items = [repr(n) for n in names]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def plain(names: list[str] | tuple[str, ...], conjunction: str = "or") -> str:
    """a, b or c: for field descriptions."""
    items = list(names)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


@dataclass(frozen=True, eq=False)  # hashed by identity: typing hashes Annotated metadata, the table is a dict
class Registered:
    """Field metadata: `Annotated[str, Registered(ARCHS, "architecture")]` is a name declared in that table.

    Checked when a value is validated, not when the model class is made, so an entry added later (a
    test's) is known; the JSON schema lists the names as an enum. An unknown name gets the known ones
    and the closest of them.
    """

    table: Mapping[str, Any]
    kind: str
    extra: tuple[str, ...] = ()  # names that are not entries, e.g. executor "auto"
    own: str = ""  # an example `<module>:<function>`: the user's own names are accepted too (USER_REF)

    def choices(self) -> list[str]:
        return [*self.extra, *self.table]

    def check(self, value: str) -> str:
        if value in self.table or value in self.extra:
            return value
        if self.own and is_user_ref(value):
            return check_user_ref(value, self.kind, self.own)
        close = difflib.get_close_matches(value, self.choices(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        mine = f", or <module>:<function> of your own (e.g. {self.own})" if self.own else ""
        raise ValueError(f"unknown {self.kind} {excerpt(value)}{hint}: use {quoted(self.choices())}{mine}")

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        out = handler(schema)
        if self.own:
            out["anyOf"] = [{"enum": self.choices()}, {"pattern": f"^{USER_REF.pattern}$"}]
        else:
            out["enum"] = self.choices()
        return out
