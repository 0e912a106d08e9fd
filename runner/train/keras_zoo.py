"""keras.applications' models for a TensorFlow job, and the user's own (`user`).

A zoo model is the library's own network, built with `include_top=True` and logits out
(`classifier_activation=None`): with the dataset's classes when it starts from random weights; with
ImageNet's 1000, its ImageNet weights loaded, then a fresh final layer when it is pretrained. Its
input is what the application's own `preprocess_input` makes of 0-255 RGB images. The final layer is
the last Dense or Conv2D (MobileNet's 1x1 "logits") with the classes' outputs; that layer and the hidden
Dense layers classifier_width rebuilds are the head: what trains under freeze_backbone.
"""

import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from runner.errors import UserError
from runner.train import usercode
from schemas import ModelSpec
from schemas.registry import model_ref, unknown_zoo_model

IMAGENET_CLASSES = 1000
# Layers without weights that may sit between the hidden dense layers and the final one.
_PLAIN = (keras.layers.Dropout, keras.layers.Activation, keras.layers.Flatten, keras.layers.Reshape)


@dataclass
class Built:
    """A network ready to wire after the input pipeline, and what the trainer needs to know of it."""

    model: keras.Model  # float images (B, size, size, 3) -> logits
    head: list[str]  # names of the layers that train under freeze_backbone
    hidden_width: int | None
    preprocess: str  # "application": the application's preprocess_input on 0-255 RGB; "imagenet": ImageNet mean/std
    notes: list[str] = field(default_factory=list)


def names() -> list[str]:
    apps = keras.applications
    return sorted(n for n in dir(apps) if n[:1].isupper() and callable(getattr(apps, n)))


def _module_of(name: str):
    """The public keras.applications sub-module whose preprocess_input goes with model `name`."""
    apps = keras.applications
    fn = getattr(apps, name)
    for sub in sorted(n for n in dir(apps) if not n.startswith("_")):
        mod = getattr(apps, sub)
        if inspect.ismodule(mod) and getattr(mod, name, None) is fn and hasattr(mod, "preprocess_input"):
            return mod
    # Some public sub-modules export only preprocess_input (mobilenet_v3): match by where the model is defined.
    mod = getattr(apps, fn.__module__.rsplit(".", 1)[-1], None)
    if inspect.ismodule(mod) and hasattr(mod, "preprocess_input"):
        return mod
    raise UserError(f"keras.applications.{name} has no preprocess_input of its own")  # not in Keras 3.x


@keras.saving.register_keras_serializable(package="gridrun")
class ApplicationInput(keras.layers.Layer):
    """keras.applications.<module>.preprocess_input of one application, as a layer (0-255 RGB in)."""

    def __init__(self, application: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.application = application
        self._fn = _module_of(application).preprocess_input

    def call(self, x):
        return self._fn(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "application": self.application}


def _application(name: str, classes: int, image_size: int) -> keras.Model:
    fn = getattr(keras.applications, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "weights for input shape ... not available": none are loaded here
        return fn(
            include_top=True,
            weights=None,
            input_shape=(image_size, image_size, 3),
            classes=classes,
            classifier_activation=None,
        )


def _final_index(model: keras.Model, classes: int) -> int:
    for i in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[i]
        if isinstance(layer, keras.layers.Dense) and layer.units == classes:
            return i
        if isinstance(layer, keras.layers.Conv2D) and layer.filters == classes:
            return i
    raise UserError(f"{model.name} has no layer of {classes} outputs to replace with the dataset's head")


def _hidden(model: keras.Model, final: int) -> list[int]:
    """Indices of the hidden Dense layers right before the final one (weightless layers may sit between)."""
    hidden: list[int] = []
    for i in range(final - 1, -1, -1):
        layer = model.layers[i]
        if isinstance(layer, keras.layers.Dense):
            hidden.insert(0, i)
        elif not isinstance(layer, _PLAIN):
            break
    return hidden


def _fresh(layer: keras.layers.Layer, units: int) -> keras.layers.Layer:
    """A new layer like `layer` (Dense, or a 1x1 Conv2D) with `units` outputs and Keras' initialisation."""
    config = layer.get_config()
    config["units" if isinstance(layer, keras.layers.Dense) else "filters"] = units
    return type(layer).from_config(config)


def _rewire(model: keras.Model, start: int, replace: dict[int, int]) -> keras.Model:
    """The model with layers `start`.. re-applied in order from the input of layer `start`, those in
    `replace` (index -> units) built fresh with that many outputs. The layers from `start` on form a chain."""
    x = model.layers[start].input
    for i in range(start, len(model.layers)):
        layer = model.layers[i]
        new = _fresh(layer, replace[i]) if i in replace else type(layer).from_config(layer.get_config())
        x = new(x)
    return keras.Model(model.input, x, name=model.name)


def load_weights(model: keras.Model, path: Path, what: str) -> list[str]:
    """Load a .weights.h5 saved from the application's own model; the variables it could not fill (VGG's
    first dense layer after Flatten, at another image size), which keep their fresh values."""
    if not path.is_file():
        raise UserError(f"weights file {path} for {what} does not exist. Fix: give an existing .weights.h5 file")
    fresh = [v.numpy() for v in model.weights]
    # NaN marks what the file did not fill: Keras skips a mismatched layer whole, with only a warning.
    for v in model.weights:
        if "float" in v.dtype:
            v.assign(np.full(v.shape, np.nan, dtype=v.dtype))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(str(path), skip_mismatch=True)
    except (ValueError, OSError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(
            f"weights file {path} cannot be loaded into {what}: {first}. Fix: save it from the application's own "
            f"model: {what.split('.')[-1]}(weights='imagenet').save_weights(path), or use weights: none"
        ) from None
    unfilled = []
    for v, init in zip(model.weights, fresh, strict=True):
        if "float" in v.dtype and bool(np.isnan(v.numpy()).any()):
            unfilled.append(v.path)
            v.assign(init)
    return unfilled


def build(spec: ModelSpec, classes: int, image_size: int, weights: Path | None) -> Built:
    """The zoo or user model of `spec` with a `classes` head."""
    ref = model_ref(spec.arch)
    if ref.name not in names():
        raise UserError(unknown_message(ref.name))
    notes: list[str] = []
    try:
        model = _application(ref.name, IMAGENET_CLASSES if weights is not None else classes, image_size)
    except ValueError as e:
        first = (str(e).strip().splitlines() or ["?"])[0][:200]
        raise UserError(
            f"{spec.arch} cannot be built for images of {image_size} px: {first}. Fix: set dataset.image_size to a "
            "size the model takes (224 fits every ImageNet model)"
        ) from None
    final = _final_index(model, IMAGENET_CLASSES if weights is not None else classes)
    if weights is not None:
        unfilled = load_weights(model, weights, spec.arch)
        hidden_now = {model.layers[i].name for i in _hidden(model, final)}
        stray = [v for v in unfilled if v.split("/")[0] not in hidden_now]
        if stray:
            raise UserError(
                f"weights file {weights} does not fit {spec.arch}: {len(stray)} variables missing or of another "
                f"shape ({', '.join(stray[:3])}). Fix: save it from the application's own model, or use weights: none"
            )
        notes.append(f"weights: loaded {weights}; fresh: {', '.join(unfilled) or 'none'} and the new head")
    hidden = _hidden(model, final)
    hidden_width = model.layers[hidden[0]].units if hidden else None
    head_layers = [final]
    replace = {final: classes} if weights is not None else {}
    if spec.classifier_width is not None:
        if not hidden:
            raise UserError(
                f"classifier_width does not apply to {spec.arch}: its classifier has no hidden dense layers, only "
                "the final layer. Fix: remove classifier_width"
            )
        if spec.classifier_width != hidden_width:
            replace.update({i: spec.classifier_width for i in hidden})
            replace[final] = classes
            head_layers = [*hidden, final]
            notes.append(f"head: hidden dense layers rebuilt at width {spec.classifier_width}")
    if replace:
        start = min(replace)
        names_before = [layer.name for layer in model.layers]
        model = _rewire(model, start, replace)
        head = [names_before[i] for i in head_layers]
    else:
        head = [model.layers[i].name for i in head_layers]
    return Built(model, head, hidden_width, "application", notes)


def user(spec: ModelSpec, classes: int, image_size: int, weights: Path | None) -> Built:
    """The user's own network: `function(num_classes, weights_path_or_None)` of the suite's code: folder, which
    must return a keras.Model taking normalised float images (B, image_size, image_size, 3) (ImageNet's mean and
    std, as the twins get) to logits (B, classes). It loads its weights file itself; what it leaves trainable
    trains."""
    arch, field = spec.arch, "model.arch"
    model, note = usercode.model(
        arch, classes, weights, keras.Model, "a keras.Model", "return keras.Model(inputs, logits)"
    )
    out = usercode.run(
        field,
        arch,
        lambda: model(np.zeros((2, image_size, image_size, 3), np.float32), training=False),
        f"calling it on 2 images of {image_size} px",
    )
    usercode.check_logits(out, classes, f"{field} {arch}")
    return Built(model, [], None, "imagenet", [note])


def unknown_message(name: str) -> str:
    return unknown_zoo_model(model_ref(f"keras.{name}"), names())


def freeze(model: keras.Model, head: list[str]) -> None:
    """Only the head's layers train (a frozen BatchNorm also runs in inference mode, as in torch)."""
    for layer in model.layers:
        layer.trainable = layer.name in head
