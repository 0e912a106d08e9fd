"""Where pretrained weights come from (each architecture's declaration) and where they live in the cache.
Framework-neutral."""

from pathlib import Path

from runner.errors import UserError
from schemas import JobSpec
from schemas.registry import ARCHS, WeightsSource, with_imagenet

__all__ = ["WeightsSource", "imagenet_path", "imagenet_source", "weights_file"]


def imagenet_source(framework: str, arch: str) -> WeightsSource:
    """The ImageNet weights of (framework, arch), as the architecture declares them, or a clear error."""
    source = ARCHS[arch].imagenet.get(framework)
    if source is None:
        raise UserError(
            f"{framework} has no ImageNet weights for {arch} (offered: {', '.join(with_imagenet(framework))}). "
            "Fix: use weights: none, or weights: <path to a weights file>."
        )
    return source


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
