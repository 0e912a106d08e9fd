"""Where pretrained weights come from (each architecture's declaration) and where they live in the cache.
Framework-neutral."""

from pathlib import Path

from runner.errors import UserError
from schemas import JobSpec
from schemas.registry import ARCHS, ModelRef, WeightsSource, model_ref, with_imagenet

__all__ = ["WeightsSource", "imagenet_path", "imagenet_source", "weights_file", "zoo_weights_path"]


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


def zoo_weights_path(ref: ModelRef, cache: Path) -> Path:
    """Where a zoo model's ImageNet weights live in the cache: the library's own weights, saved by the
    prepare step as that framework's weights file (a state dict; Keras' .weights.h5) of its ImageNet model."""
    assert ref.zoo is not None
    return Path(cache) / "weights" / ref.zoo.prefix / f"{ref.name}{ref.zoo.weights_suffix}"


# How to save a zoo model's ImageNet weights where gridrun reads them, on a machine with network.
_SAVE = {
    "torchvision": "torch.save(torchvision.models.get_model({name!r}, weights='DEFAULT').state_dict(), path)",
    "timm": "torch.save(timm.create_model({name!r}, pretrained=True).state_dict(), path)",
    "keras": "keras.applications.{name}(weights='imagenet').save_weights(path)",
}


def zoo_weights_missing(arch: str, path: Path, reason: str = "") -> str:
    """A zoo model's ImageNet weights are not in the cache (and could not be downloaded, `reason`): the
    message, with the file to provide."""
    ref = model_ref(arch)
    assert ref.zoo is not None
    why = f" and could not be downloaded ({reason})" if reason else ""
    return (
        f"ImageNet weights for {arch} are not at {path}{why}. Fix: save the library's own weights there, on a machine "
        f"with network: {_SAVE[ref.zoo.prefix].format(name=ref.name)}; "
        "or use weights: none"
    )


def weights_file(spec: JobSpec, cache: Path) -> Path | None:
    """The file the job's initial weights load from; None for random initial weights."""
    weights = spec.model.weights
    if weights == "none":
        return None
    if weights == "imagenet":
        ref = model_ref(spec.model.arch)
        if ref.zoo is not None:
            return zoo_weights_path(ref, cache)
        return imagenet_path(spec.framework, spec.model.arch, cache)
    return Path(weights).expanduser()
