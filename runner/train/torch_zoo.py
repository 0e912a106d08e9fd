"""torchvision's and timm's models for a PyTorch job, and the user's own (`user`).

A zoo model is the library's own network: built as the library builds it (with the dataset's classes
when it starts from random weights; with the library's classes, its ImageNet weights loaded, then a
fresh final layer when it is pretrained). The final layer is found, whatever it is called, as the last
Linear or 1x1 Conv2d of the network; that layer, and the hidden dense layers that classifier_width
rebuilds, are the head: what trains under freeze_backbone.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from runner.errors import UserError
from runner.train import usercode
from schemas import ModelSpec
from schemas.registry import ModelRef, model_ref, unknown_zoo_model

IMAGENET_CLASSES = 1000
# Built without their auxiliary classifiers: a training step wants one output (their weights load without them).
_NO_AUX = {"googlenet": {"aux_logits": False, "init_weights": True}, "inception_v3": {"aux_logits": False}}
_AUX_KEYS = ("aux", "AuxLogits")


@dataclass
class Built:
    """A network ready to train, and what the trainer needs to know of it."""

    model: nn.Module
    head: list[str]  # the sub-modules (dotted names) that train under freeze_backbone
    hidden_width: int | None  # width of its hidden dense layers; None: it has none
    mean: tuple[float, float, float] | None = None  # input normalisation its weights expect; None: ImageNet's
    std: tuple[float, float, float] | None = None
    notes: list[str] = field(default_factory=list)  # what the log should say (weights loaded, fresh layers)


def names(prefix: str) -> list[str]:
    """Every model name the library offers."""
    if prefix == "torchvision":
        import torchvision

        return sorted(torchvision.models.list_models(module=torchvision.models))
    import timm

    return sorted(timm.list_models())


def timm_tagged() -> list[str]:
    """timm's names with a pretrained tag (resnet50.a1_in1k): the weights timm can download."""
    import timm

    return sorted(timm.list_models(pretrained=True))


def known(ref: ModelRef) -> bool:
    assert ref.zoo is not None
    if ref.zoo.prefix == "timm":
        import timm

        base, _, tag = ref.name.partition(".")
        return timm.is_model(base) and (not tag or ref.name in timm_tagged())
    return ref.name in names(ref.zoo.prefix)


def _torchvision(name: str, classes: int, pretrained: bool = False) -> nn.Module:
    import torchvision

    kwargs = dict(_NO_AUX.get(name, {}))
    if pretrained and name in _NO_AUX:
        # Their ImageNet weights were trained on inputs normalised another way; torchvision's own builders
        # turn the conversion on whenever they load them.
        kwargs["transform_input"] = True
    return torchvision.models.get_model(name, weights=None, num_classes=classes, **kwargs)


def _timm(name: str, classes: int | None) -> nn.Module:
    import timm

    kwargs = {} if classes is None else {"num_classes": classes}
    return timm.create_model(name, pretrained=False, **kwargs)


def _final_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The classification layer: the last Linear or Conv2d the network registers."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and name:
            last = (name, module)
    if last is None:
        raise UserError("the model has no Linear or Conv2d layer to put a head on")
    return last


def _out(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _hidden(model: nn.Module, final: str) -> list[str]:
    """The hidden dense layers: the Linear layers before the final one in the same Sequential, with nothing
    that has parameters of its own between them (a LayerNorm would need the old width)."""
    parent, child = _parent(model, final)
    if not isinstance(parent, nn.Sequential):
        return []
    prefix = final.rpartition(".")[0]
    children = list(parent.named_children())
    before = children[: [key for key, _ in children].index(child)]
    hidden: list[str] = []
    for key, module in reversed(before):
        if isinstance(module, nn.Linear):
            hidden.insert(0, f"{prefix}.{key}" if prefix else key)
        elif any(True for _ in module.parameters()):
            break
    return hidden


def _replace(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, child = _parent(model, name)
    setattr(parent, child, layer)


def _fresh(layer: nn.Module, n_in: int, n_out: int) -> nn.Module:
    """A new layer of the same kind (Linear, or a 1x1 Conv2d as SqueezeNet's), with PyTorch's initialisation."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(n_in, n_out)
    return nn.Conv2d(n_in, n_out, kernel_size=1)


def _n_in(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _set_width(model: nn.Module, hidden: list[str], final: str, width: int) -> None:
    """Rebuild the hidden dense layers as in -> width -> ... -> width, and the final layer width -> classes."""
    chain = [*hidden, final]
    layers = [model.get_submodule(n) for n in chain]
    sizes = [_n_in(layers[0])] + [width] * len(hidden) + [_out(layers[-1])]
    for i, (n, layer) in enumerate(zip(chain, layers, strict=True)):
        _replace(model, n, _fresh(layer, sizes[i], sizes[i + 1]))


def load_state(model: nn.Module, path: Path, what: str) -> int:
    """Load a state dict saved from the library's own model into `model` (same layers); the tensors loaded."""
    from runner.train.torch_models import key_problems, read_state_dict

    state = read_state_dict(path, what)
    own = model.state_dict()
    # An auxiliary classifier gridrun does not build is the only part of the file that may go unused.
    unexpected = sorted(k for k in state if k not in own and not k.startswith(_AUX_KEYS))
    missing = sorted(k for k in own if k not in state)
    wrong = sorted(k for k in own if k in state and state[k].shape != own[k].shape)
    if unexpected or missing or wrong:
        raise UserError(
            f"weights file {path} does not fit {what}: {key_problems(unexpected, missing, wrong)}. Fix: give the "
            "state dict of the "
            f"library's own {what} (torch.save(model.state_dict(), path)), or use weights: none."
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own})
    return len(own)


def build(spec: ModelSpec, classes: int, weights: Path | None) -> Built:
    """The zoo or user model of `spec` with a `classes` head; `weights` (the library's ImageNet weights in
    gridrun's cache, or a file of the user's) loaded into everything but the new head."""
    ref = model_ref(spec.arch)
    assert ref.zoo is not None
    if not known(ref):
        raise UserError(unknown_message(ref))
    timm = ref.zoo.prefix == "timm"
    notes: list[str] = []
    if weights is None:
        model = _timm(ref.name, classes) if timm else _torchvision(ref.name, classes)
    else:
        model = _timm(ref.name, None) if timm else _torchvision(ref.name, IMAGENET_CLASSES, pretrained=True)
        loaded = load_state(model, weights, spec.arch)
        notes.append(f"weights: loaded {loaded} tensors from {weights}")
    final, layer = _final_layer(model)
    if weights is not None:
        if timm:
            model.reset_classifier(classes)  # timm's own way to a new head, whatever the model's head is
            final, layer = _final_layer(model)
        else:
            _replace(model, final, _fresh(layer, _n_in(layer), classes))
        notes.append(f"head: {final} is new, {classes} classes")
    hidden = _hidden(model, final)
    hidden_width = _out(model.get_submodule(hidden[0])) if hidden else None
    head = [final]
    if spec.classifier_width is not None:
        if not hidden:
            raise UserError(no_hidden_message(spec.arch))
        if spec.classifier_width != hidden_width:
            _set_width(model, hidden, final, spec.classifier_width)
            head = [*hidden, final]  # rebuilt, so fresh: they train with the head
            notes.append(f"head: hidden dense layers {', '.join(hidden)} rebuilt at width {spec.classifier_width}")
    mean = std = None
    if timm:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = cfg.get("mean"), cfg.get("std")
    return Built(model, head, hidden_width, mean, std, notes)


def unknown_message(ref: ModelRef) -> str:
    assert ref.zoo is not None
    tagged = timm_tagged() if ref.zoo.prefix == "timm" else ()
    return unknown_zoo_model(ref, names(ref.zoo.prefix), tagged) or f"{ref.zoo.display} cannot build {ref.name!r}"


def no_hidden_message(arch: str) -> str:
    return (
        f"classifier_width does not apply to {arch}: its classifier has no hidden dense layers, only the final "
        "layer. Fix: remove classifier_width"
    )


def freeze(model: nn.Module, head: list[str]) -> None:
    """Only the head keeps requires_grad."""
    for name, param in model.named_parameters():
        param.requires_grad = any(name.startswith(h + ".") for h in head)


def train_mode(model: nn.Module, head: list[str], frozen: bool) -> None:
    """Train mode; a frozen backbone stays in eval mode (its BatchNorm statistics must not drift)."""
    model.train()
    if frozen:
        for name, module in model.named_modules():
            inside_head = any(name == h or name.startswith(h + ".") for h in head)
            if name and not inside_head and not any(h.startswith(name + ".") for h in head):
                module.eval()


def output_problem(model: nn.Module, classes: int, image_size: int, what: str) -> str:
    """'' when a forward pass on meta tensors (no memory, no compute) gives logits of (2, classes) at this
    image size, else the message with the fix."""
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.empty(2, 3, image_size, image_size, device="meta"))
    except NotImplementedError:
        return ""  # an operator without a meta kernel: the first real batch will tell
    except Exception as e:
        line = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
        return (
            f"{what} does not take images of {image_size} px ({type(e).__name__}: {line}). "
            "Fix: set dataset.image_size to a size the model takes (224 fits every ImageNet model)"
        )
    try:
        usercode.check_logits(out, classes, what)
    except UserError as e:
        return str(e)
    return ""


def check_output(model: nn.Module, classes: int, image_size: int, what: str) -> None:
    """The logits' shape at this image size, checked on meta tensors; a UserError with the fix otherwise."""
    problem = output_problem(model, classes, image_size, what)
    if problem:
        raise UserError(problem)


def user(spec: ModelSpec, classes: int, image_size: int, weights: Path | None) -> Built:
    """The user's own network: `function(num_classes, weights_path_or_None)` of the suite's code: folder, which
    must return a torch.nn.Module taking normalised float images (B, 3, image_size, image_size) to logits
    (B, classes). It loads its weights file itself; what it leaves trainable trains (no head of gridrun's)."""
    arch, field = spec.arch, "model.arch"
    model, note = usercode.model(arch, classes, weights, nn.Module, "a torch.nn.Module", "return MyNet(num_classes)")
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()  # as evaluation runs it: BatchNorm statistics stay, dropout is off
    with torch.no_grad():
        out = usercode.run(
            field,
            arch,
            lambda: model(torch.zeros(2, 3, image_size, image_size, device=device)),
            f"its forward pass on 2 images of {image_size} px",
        )
    usercode.check_logits(out, classes, f"{field} {arch}")
    return Built(model, [], None, notes=[note])


__all__ = [
    "Built",
    "build",
    "check_output",
    "freeze",
    "names",
    "output_problem",
    "timm_tagged",
    "train_mode",
    "user",
]
