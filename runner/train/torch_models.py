"""torchvision AlexNet, VGG16 and ResNet18 with a head for the dataset, and their initial weights.

ARCHS maps each architecture schemas.registry declares to its builder here.

The head is what trains when the backbone is frozen: the whole `classifier` Sequential of
alexnet/vgg16 (hidden layers of `classifier_width`, dropout, final layer), `fc` of resnet18.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from runner.errors import UserError
from runner.train import torch_zoo
from runner.train.weights import imagenet_source, weights_file, zoo_weights_missing
from schemas import JobSpec, ModelSpec
from schemas.registry import ARCHS as DECLARED
from schemas.registry import model_ref

# Width of the hidden classifier layers torchvision's alexnet and vgg16 are built with.
TORCHVISION_WIDTH = 4096
# Prefixes a state dict carries when saved from a compiled or DataParallel model.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


@dataclass(frozen=True)
class TorchArch:
    """How this framework builds one architecture of schemas.registry.ARCHS."""

    build: Callable[[ModelSpec, int], nn.Module]  # (spec, classes) -> model with random weights
    head: str  # the sub-module that trains when the backbone is frozen


def _alexnet(spec: ModelSpec, num_classes: int) -> nn.Module:
    model = torchvision.models.alexnet(weights=None, num_classes=num_classes, dropout=spec.dropout)
    _set_classifier_width(model, spec, normal_init=False)  # AlexNet keeps PyTorch's default initialisation
    return model


def _vgg16(spec: ModelSpec, num_classes: int) -> nn.Module:
    model = torchvision.models.vgg16(weights=None, num_classes=num_classes, dropout=spec.dropout)
    _set_classifier_width(model, spec, normal_init=True)  # as torchvision's VGG initialises its Linear layers
    return model


def _resnet18(spec: ModelSpec, num_classes: int) -> nn.Module:
    # torchvision's ResNet has no classifier dropout; the schema refuses classifier_width for it.
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


ARCHS: dict[str, TorchArch] = {
    "alexnet": TorchArch(_alexnet, head="classifier"),
    "vgg16": TorchArch(_vgg16, head="classifier"),
    "resnet18": TorchArch(_resnet18, head="fc"),
}


def head_name(arch: str) -> str:
    """Name of the head sub-module: what trains when the backbone is frozen."""
    return ARCHS[arch].head


def build(spec: ModelSpec, num_classes: int) -> nn.Module:
    """The architecture with a fresh `num_classes` head and random weights (seed torch first)."""
    return ARCHS[spec.arch].build(spec, num_classes)


def _set_classifier_width(model: nn.Module, spec: ModelSpec, normal_init: bool) -> None:
    """Rebuild the classifier's Linear layers as in -> width -> width -> classes, keeping ReLU/Dropout."""
    width = spec.classifier_width or DECLARED[spec.arch].default_width
    if width == TORCHVISION_WIDTH:
        return
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    first, _, last = (model.classifier[i] for i in linears)
    sizes = [(first.in_features, width), (width, width), (width, last.out_features)]
    for i, (n_in, n_out) in zip(linears, sizes, strict=True):
        layer = nn.Linear(n_in, n_out)
        if normal_init:
            nn.init.normal_(layer.weight, 0, 0.01)
            nn.init.zeros_(layer.bias)
        model.classifier[i] = layer


def make(spec: JobSpec, num_classes: int, cache: Path, log: Callable[[str], None]) -> "torch_zoo.Built":
    """Any model a torch job names, its initial weights loaded and, under freeze_backbone, only its head
    trainable: a twin (built here), or a zoo or user model (runner.train.torch_zoo); a user model's errors are
    one message each (runner.train.usercode)."""
    if spec.model.twin:
        model = build(spec.model, num_classes)
        load_initial_weights(model, spec, cache, log)
        width = spec.model.classifier_width or DECLARED[spec.model.arch].default_width
        built = torch_zoo.Built(model, [head_name(spec.model.arch)], width)
    elif model_ref(spec.model.arch).kind == "user":
        built = torch_zoo.user(spec.model, num_classes, spec.dataset.image_size, weights_file(spec, cache))
        log(built.notes[0])
    else:
        path = weights_file(spec, cache)
        if spec.model.weights == "imagenet" and path is not None and not path.is_file():
            raise UserError(zoo_weights_missing(spec.model.arch, path))
        built = torch_zoo.build(spec.model, num_classes, path)
        for note in built.notes:
            log(note)
    if spec.model.freeze_backbone:
        torch_zoo.freeze(built.model, built.head)
    return built


def freeze_backbone(model: nn.Module, arch: str) -> None:
    """Only the twin's head keeps requires_grad."""
    torch_zoo.freeze(model, [head_name(arch)])


def set_train_mode(model: nn.Module, arch: str, frozen: bool) -> None:
    """Train mode, but a frozen backbone stays in eval mode: its BatchNorm statistics must not drift
    (Keras does the same for layers with trainable=False, so both frameworks freeze alike)."""
    torch_zoo.train_mode(model, [head_name(arch)], frozen)


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def load_initial_weights(model: nn.Module, spec: JobSpec, cache: Path, log: Callable[[str], None]) -> None:
    """Load `spec.model.weights` (imagenet or a state-dict file) into `model`, keeping its fresh head.

    The backbone must match the file exactly. Head tensors are taken when their shapes fit (the
    hidden classifier layers at the default width) and stay fresh otherwise: the final layer for the
    dataset's classes, or hidden layers of another classifier_width.
    """
    path = weights_file(spec, cache)
    if path is None:
        return
    state = _read_state_dict(path, spec)
    own = model.state_dict()
    head = head_name(spec.model.arch) + "."
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and not k.startswith(head))
    wrong = sorted(k for k in own if k in state and not k.startswith(head) and state[k].shape != own[k].shape)
    if unexpected or missing or wrong:
        raise UserError(
            f"weights file {path} does not fit torchvision {spec.model.arch}: "
            f"{key_problems(unexpected, missing, wrong)}. "
            f"Fix: give a state dict saved from torchvision.models.{spec.model.arch}() "
            "(torch.save(model.state_dict(), path)), or use weights: none or imagenet."
        )
    fitting = {k: v for k, v in state.items() if v.shape == own[k].shape}
    fresh = sorted(k for k in own if k not in fitting)
    model.load_state_dict(fitting, strict=False)
    log(f"weights: loaded {len(fitting)} tensors from {path}; fresh head tensors: {', '.join(fresh) or 'none'}")


def key_problems(unexpected: list[str], missing: list[str], wrong: list[str]) -> str:
    """How a state dict does not fit a model, in a few words: counts and the first keys of each kind."""
    problems = []
    for label, keys in (("unexpected", unexpected), ("missing", missing), ("of another shape", wrong)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} keys {label} ({', '.join(keys[:3])}{more})")
    return "; ".join(problems)


def _read_state_dict(path: Path, spec: JobSpec) -> dict[str, torch.Tensor]:
    if not path.is_file() and spec.model.weights == "imagenet":
        source = imagenet_source(spec.framework, spec.model.arch)
        raise UserError(
            f"ImageNet weights for torch {spec.model.arch} are not at {path}. Fix: let `gridrun run` "
            f"download {source.url} into the cache on a machine with network, or copy that file to {path}."
        )
    return read_state_dict(path, f"torchvision {spec.model.arch}")


def read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file for `what`: a plain state dict, or gridrun's own checkpoint {'model': ...}."""
    if not path.is_file():
        raise UserError(
            f"weights file {path} does not exist ({what}). Fix: set model.weights to an existing .pth/.pt state "
            "dict (an absolute path, as the worker sees it), or to none or imagenet."
        )
    try:
        # weights_only: a weights file is data, never code to unpickle.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            # torch's own message runs over many lines and suggests weights_only=False: not for a user.
            f"weights file {path} cannot be read as a PyTorch state dict of tensors ({type(e).__name__}). "
            "Fix: save it with torch.save(model.state_dict(), path)."
        ) from None
    if isinstance(loaded, Mapping) and isinstance(loaded.get("model"), Mapping):
        loaded = loaded["model"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(
            f"weights file {path} holds a {type(loaded).__name__}, not a state dict of tensors. "
            "Fix: save it with torch.save(model.state_dict(), path)."
        )
    return {_strip_prefix(k): v for k, v in loaded.items()}


def _strip_prefix(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key
