"""Where pretrained weights come from and where they live in the cache. Framework-neutral."""

from dataclasses import dataclass
from pathlib import Path

from runner.errors import UserError
from schemas import JobSpec


@dataclass(frozen=True)
class WeightsSource:
    """A downloadable weights file and how to verify it."""

    url: str
    sha256_prefix: str = ""  # torchvision files carry the first hex digits of their sha256 in the name
    md5: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# ImageNet weights each trainer can load; torchvision's and keras.applications' own files.
IMAGENET: dict[tuple[str, str], WeightsSource] = {
    ("torch", "alexnet"): WeightsSource("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "7be5be79"),
    ("torch", "vgg16"): WeightsSource("https://download.pytorch.org/models/vgg16-397923af.pth", "397923af"),
    ("torch", "resnet18"): WeightsSource("https://download.pytorch.org/models/resnet18-f37072fd.pth", "f37072fd"),
    ("tensorflow", "vgg16"): WeightsSource(
        "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        md5="6d6bbae143d832006294945121d1f1fc",
    ),
}


def imagenet_source(framework: str, arch: str) -> WeightsSource:
    """The ImageNet weights of (framework, arch), or a clear error naming what exists."""
    try:
        return IMAGENET[(framework, arch)]
    except KeyError:
        offered = ", ".join(a for f, a in IMAGENET if f == framework)
        raise UserError(
            f"{framework} has no ImageNet weights for {arch} (offered: {offered}). "
            "Fix: use weights: none, or weights: <path to a weights file>."
        ) from None


def imagenet_path(framework: str, arch: str, cache: Path) -> Path:
    """Where the ImageNet weights of (framework, arch) live in the cache."""
    return Path(cache) / "weights" / framework / imagenet_source(framework, arch).filename


def weights_file(spec: JobSpec, cache: Path) -> Path | None:
    """The file the job's initial weights load from; None for random initial weights."""
    weights = spec.model.weights
    if weights == "none":
        return None
    if weights == "imagenet":
        return imagenet_path(spec.framework, spec.model.arch, cache)
    return Path(weights).expanduser()
