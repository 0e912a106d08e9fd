"""Keras AlexNet, VGG16 and ResNet18, layer for layer the torchvision models of the same spec.

Each model takes the dataset's uint8 images plus the batch's crop shifts and flips, and does the
input pipeline itself (normalise, translate, flip, bilinear resize), so that it runs on the
device inside the compiled step. Parameter counts equal torch_models' for every spec:

- alexnet: torchvision's `features`, AdaptiveAvgPool2d(6), `classifier` (dropout, width, width, classes).
- vgg16: keras.applications' convolutional base (its layers are torchvision's `features`),
  AdaptiveAvgPool2d(7), then torchvision's classifier 25088 -> width -> width -> classes.
- resnet18: torchvision's resnet18 rebuilt from BasicBlocks (keras.applications has none).

The backbone is the sub-model named `features`; everything after it is the head, which is what
trains under freeze_backbone. Initial weights follow torchvision's initialisation too, since a
run from scratch depends on it as much as on the layers. ARCHS maps each architecture
schemas.registry declares to its builder here.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: no C++ info/warning noise

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf

from runner.train import keras_zoo
from runner.train.common import IMAGENET_MEAN, IMAGENET_STD
from schemas import ModelSpec
from schemas.registry import ARCHS as DECLARED

BACKBONE = "features"
# keras.applications.vgg16.preprocess_input ("caffe"): BGR order, ImageNet means on 0..255, no scaling.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# PyTorch's BatchNorm2d defaults, in Keras' terms (Keras momentum = 1 - PyTorch momentum).
_BN = {"momentum": 0.9, "epsilon": 1e-5}


# --- initialisers: PyTorch's, in Keras -----------------------------------------------------------


def _torch_default_kernel() -> keras.initializers.Initializer:
    """nn.Linear / nn.Conv2d default: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(scale=1 / 3, mode="fan_in", distribution="uniform")


def _torch_default_bias(fan_in: int) -> keras.initializers.Initializer:
    bound = 1 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _kaiming_fan_out() -> keras.initializers.Initializer:
    """kaiming_normal_(mode="fan_out", nonlinearity="relu"): torchvision's VGG and ResNet convolutions."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _conv(filters: int, kernel: int, fan_in_channels: int, name: str, stride: int = 1, same: bool = True):
    """A conv with PyTorch's default initialisation (AlexNet)."""
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same" if same else "valid",
        activation="relu",
        name=name,
        kernel_initializer=_torch_default_kernel(),
        bias_initializer=_torch_default_bias(fan_in_channels * kernel**2),
    )


def _dense(units: int, fan_in: int, name: str, relu: bool, vgg: bool) -> keras.layers.Dense:
    """A classifier Linear: torchvision's VGG draws N(0, 0.01) with zero bias, AlexNet keeps PyTorch's default."""
    if vgg:
        init: dict = {"kernel_initializer": keras.initializers.RandomNormal(0.0, 0.01), "bias_initializer": "zeros"}
    else:
        init = {"kernel_initializer": _torch_default_kernel(), "bias_initializer": _torch_default_bias(fan_in)}
    return keras.layers.Dense(units, activation="relu" if relu else None, name=name, **init)


# --- layers ----------------------------------------------------------------------------------------


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Row i averages input cells [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out)): PyTorch's adaptive pooling."""
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        start, end = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool2D(keras.layers.Layer):
    """torch.nn.AdaptiveAvgPool2d, exactly, for any input size (it also upsamples, as PyTorch's does).

    Keras has no adaptive pooling; the cells PyTorch averages are written as two constant
    matrices, so the result is PyTorch's and the flattened size, hence the parameter count of the
    next layer, is the same at every image size. An identity where the size already fits (224 px).
    """

    def __init__(self, size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = size

    def call(self, x):
        h, w = x.shape[1], x.shape[2]
        if (h, w) == (self.size, self.size):
            return x
        rows = tf.constant(_pool_matrix(h, self.size), dtype=x.dtype)
        cols = tf.constant(_pool_matrix(w, self.size), dtype=x.dtype)
        return tf.einsum("oh,bhwc,pw->bopc", rows, x, cols)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.size, self.size, input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size}


def _axis_sampling(out: int, src: int, shift: tf.Tensor, flip: tf.Tensor | None):
    """Per-sample source indices and weights of bilinear sampling along one axis.

    The coordinates are torch's F.affine_grid + F.grid_sample(mode="bilinear",
    padding_mode="reflection", align_corners=False) for a scale, a shift of `shift` source pixels
    and an optional mirror, as the torch trainer's Pipeline.train_batch: half-pixel centres,
    reflection about the image edges, then clamped. With no shift or flip this is
    F.interpolate(bilinear, align_corners=False) = tf.image.resize(bilinear).
    """
    centre = (tf.range(out, dtype=tf.float32) + 0.5) * (src / out) - 0.5  # (out,)
    c = tf.broadcast_to(centre[None], [tf.shape(shift)[0], out])
    if flip is not None:
        c = tf.where(flip[:, None], (src - 1) - c, c)
    c = c + tf.cast(shift, tf.float32)[:, None]
    # reflect_coordinates(c, -1, 2*src - 1) of ATen's grid sampler
    d = tf.abs(c + 0.5)
    flips = tf.floor(d / src)
    extra = d - flips * src
    c = tf.where(tf.math.floormod(flips, 2.0) == 0, extra - 0.5, src - extra - 0.5)
    c = tf.clip_by_value(c, 0.0, src - 1.0)
    i0 = tf.floor(c)
    frac = c - i0
    i0 = tf.cast(i0, tf.int32)
    i1 = tf.minimum(i0 + 1, src - 1)
    return i0, i1, frac


class Preprocess(keras.layers.Layer):
    """uint8 images (B, h, w, 3), shifts (B, 2: x, y source pixels) and flips (B,) -> normalised
    float32 images (B, size, size, 3).

    Normalisation happens at the source resolution, as in the torch trainer: bilinear sampling
    is linear with weights summing to one, so the order does not change the result, and the
    source is the smaller image. Bilinear sampling is separable: rows first, then columns, each
    a gather of two neighbours, so no affine warp of the full image is needed.
    """

    def __init__(self, size: int, caffe: bool = False, raw: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size = size
        self.caffe = caffe
        self.raw = raw  # 0-255 RGB out: a keras.applications model's own preprocess_input follows

    def call(self, inputs):
        images, shift, flip = inputs
        x = tf.cast(images, tf.float32)
        if self.raw:
            pass
        elif self.caffe:
            x = x[..., ::-1] - tf.constant(CAFFE_BGR_MEAN, tf.float32)
        else:
            mean = tf.constant(IMAGENET_MEAN, tf.float32) * 255
            x = (x - mean) / (tf.constant(IMAGENET_STD, tf.float32) * 255)
        h, w = images.shape[1], images.shape[2]
        y0, y1, fy = _axis_sampling(self.size, h, shift[:, 1], None)
        x0, x1, fx = _axis_sampling(self.size, w, shift[:, 0], flip)
        top = tf.gather(x, y0, axis=1, batch_dims=1)
        x = top + fy[:, :, None, None] * (tf.gather(x, y1, axis=1, batch_dims=1) - top)
        left = tf.gather(x, x0, axis=2, batch_dims=1)
        return left + fx[:, None, :, None] * (tf.gather(x, x1, axis=2, batch_dims=1) - left)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.size, self.size, 3)

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size, "caffe": self.caffe, "raw": self.raw}


# --- architectures ---------------------------------------------------------------------------------


def _alexnet_features(size: int) -> keras.Model:
    """torchvision alexnet.features: PyTorch's padding as ZeroPadding (k11 s4 p2) or 'same' (stride 1)."""
    return keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.ZeroPadding2D(2, name="pad1"),
            _conv(64, 11, 3, "conv1", stride=4, same=False),
            keras.layers.MaxPooling2D(3, 2, name="pool1"),
            _conv(192, 5, 64, "conv2"),
            keras.layers.MaxPooling2D(3, 2, name="pool2"),
            _conv(384, 3, 192, "conv3"),
            _conv(256, 3, 384, "conv4"),
            _conv(256, 3, 256, "conv5"),
            keras.layers.MaxPooling2D(3, 2, name="pool5"),
        ],
        name=BACKBONE,
    )


def _vgg16_features(size: int) -> keras.Model:
    """keras.applications' VGG16 base, re-initialised as torchvision's VGG (kaiming fan-out, zero bias)."""
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3), name=BACKBONE)
    for layer in base.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.kernel.assign(_kaiming_fan_out()(layer.kernel.shape))
            layer.bias.assign(tf.zeros_like(layer.bias))
    return base


def _classifier(spec: ModelSpec, num_classes: int, flat: int, vgg: bool) -> keras.Sequential:
    """torchvision's classifier at `classifier_width`: alexnet puts dropout before each hidden Linear,
    vgg16 (`vgg`) after each hidden ReLU and initialises its Linear layers N(0, 0.01)."""
    width = spec.classifier_width or DECLARED[spec.arch].default_width
    drop = [keras.layers.Dropout(spec.dropout, name=f"dropout{i}") for i in (1, 2)]
    fc1 = _dense(width, flat, "fc1", relu=True, vgg=vgg)
    fc2 = _dense(width, width, "fc2", relu=True, vgg=vgg)
    fc3 = _dense(num_classes, width, "fc3", relu=False, vgg=vgg)
    layers = [fc1, drop[0], fc2, drop[1], fc3] if vgg else [drop[0], fc1, drop[1], fc2, fc3]
    return keras.Sequential([keras.Input((flat,)), *layers], name="classifier")


def _basic_block(x, filters: int, stride: int, name: str):
    """torchvision BasicBlock: 3x3 conv (stride), BN, ReLU, 3x3 conv, BN, + shortcut, ReLU."""
    conv = {"use_bias": False, "kernel_initializer": _kaiming_fan_out()}
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_down_conv", **conv)(x)
        shortcut = keras.layers.BatchNormalization(name=f"{name}_down_bn", **_BN)(shortcut)
    # PyTorch pads 1 on every side; Keras' 'same' pads asymmetrically at stride 2, so pad explicitly.
    y = keras.layers.ZeroPadding2D(1, name=f"{name}_pad1")(x)
    y = keras.layers.Conv2D(filters, 3, strides=stride, name=f"{name}_conv1", **conv)(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn1", **_BN)(y)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    y = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2", **conv)(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2", **_BN)(y)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_relu2")(y)


def _resnet18_features(size: int) -> keras.Model:
    """torchvision resnet18 up to its global average pool."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.ZeroPadding2D(3, name="pad1")(inputs)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=False, kernel_initializer=_kaiming_fan_out(), name="conv1")(x)
    x = keras.layers.BatchNormalization(name="bn1", **_BN)(x)
    x = keras.layers.ReLU(name="relu")(x)
    # Zero padding before the max-pool equals PyTorch's -inf padding: the inputs are ReLU outputs, >= 0.
    x = keras.layers.ZeroPadding2D(1, name="pad_pool")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="maxpool")(x)
    for stage, filters in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            x = _basic_block(x, filters, 2 if stage > 1 and block == 0 else 1, f"layer{stage}_{block}")
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inputs, x, name=BACKBONE)


def _pooled_classifier(x, spec: ModelSpec, num_classes: int, pool: int, vgg: bool):
    """AdaptiveAvgPool2d(pool), flatten, torchvision's classifier."""
    x = AdaptiveAvgPool2D(pool, name="avgpool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return _classifier(spec, num_classes, x.shape[-1], vgg)(x)


def _alexnet(x, spec: ModelSpec, num_classes: int, image_size: int):
    return _pooled_classifier(_alexnet_features(image_size)(x), spec, num_classes, 6, vgg=False)


def _vgg16(x, spec: ModelSpec, num_classes: int, image_size: int):
    return _pooled_classifier(_vgg16_features(image_size)(x), spec, num_classes, 7, vgg=True)


def _resnet18(x, spec: ModelSpec, num_classes: int, image_size: int):
    x = _resnet18_features(image_size)(x)
    head = keras.layers.Dense(
        num_classes, name="fc", kernel_initializer=_torch_default_kernel(), bias_initializer=_torch_default_bias(512)
    )
    return head(x)


@dataclass(frozen=True)
class KerasArch:
    """How this framework builds one architecture of schemas.registry.ARCHS."""

    # (preprocessed images, spec, classes, image size) -> logits; the backbone is a sub-model named BACKBONE.
    network: Callable[[Any, ModelSpec, int, int], Any]
    # Its keras.applications ImageNet weights were trained on caffe-style input (BGR, mean only).
    caffe_weights: bool = False


ARCHS: dict[str, KerasArch] = {
    "alexnet": KerasArch(_alexnet),
    "vgg16": KerasArch(_vgg16, caffe_weights=True),
    "resnet18": KerasArch(_resnet18),
}


def caffe_preprocessing(spec: ModelSpec) -> bool:
    """True where the weights are keras.applications' ImageNet weights, trained on caffe-style input."""
    if not spec.twin or not ARCHS[spec.arch].caffe_weights:
        return False
    if spec.weights == "imagenet":
        return True
    return is_legacy_h5(Path(spec.weights).expanduser()) if spec.pretrained else False


def is_legacy_h5(path: Path) -> bool:
    """A Keras 2 / keras-applications HDF5 weights file (layer names at its root), not Keras 3's .weights.h5."""
    if path.name.endswith(".weights.h5") or path.suffix not in (".h5", ".hdf5") or not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return "layer_names" in f.attrs or "model_weights" in f
    except OSError:
        return False


def build(
    spec: ModelSpec,
    num_classes: int,
    image_size: int,
    source: tuple[int, int] | None = None,
    zoo: "keras_zoo.Built | None" = None,
) -> keras.Model:
    """The whole model with random weights (call keras.utils.set_random_seed first); a zoo or user
    model comes built (`zoo`, from keras_zoo.build) and is wired after the same input pipeline.

    Inputs: uint8 images of `source` (h, w) (default: already image_size), int32 shifts (B, 2),
    bool flips (B,). Output: logits (B, num_classes).
    """
    h, w = source or (image_size, image_size)
    images = keras.Input((h, w, 3), dtype="uint8", name="images")
    shift = keras.Input((2,), dtype="int32", name="shift")
    flip = keras.Input((), dtype="bool", name="flip")
    application = zoo is not None and zoo.preprocess == "application"
    x = Preprocess(image_size, caffe=caffe_preprocessing(spec), raw=application, dtype="float32", name="preprocess")(
        [images, shift, flip]
    )
    if zoo is None:
        logits = ARCHS[spec.arch].network(x, spec, num_classes, image_size)
    else:
        if application:
            x = keras_zoo.ApplicationInput(spec.arch.split(".", 1)[1], name="application_input")(x)
        logits = zoo.model(x)
    return keras.Model([images, shift, flip], logits, name=keras_name(spec.arch))


def keras_name(arch: str) -> str:
    """A model name Keras takes (letters, digits, '_' and '-'): module:function and dotted names are not."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in arch)


def backbone(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE)


def freeze_backbone(model: keras.Model) -> None:
    """Only the head trains. A frozen Keras sub-model also runs its BatchNorm in inference mode, as the
    torch trainer keeps a frozen backbone in eval mode."""
    backbone(model).trainable = False


def _walk(layer: keras.layers.Layer):
    yield layer
    for child in getattr(layer, "layers", []):
        yield from _walk(child)


def parameter_counts(model: keras.Model) -> tuple[int, int]:
    """(trainable, total) parameters, as PyTorch counts them: BatchNorm's moving statistics are
    buffers in PyTorch, not parameters, so they do not count."""
    stats = {
        id(v)
        for layer in _walk(model)
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    }
    total = sum(math.prod(v.shape) for v in model.weights if id(v) not in stats)
    trainable = sum(math.prod(v.shape) for v in model.trainable_weights)
    return trainable, total


def load_file(model: keras.Model, path: Path) -> tuple[list[str], list[str]]:
    """Load a Keras weights file into `model`: (backbone variables the file lacks, fresh head variables).

    A legacy .h5 (keras-applications, e.g. VGG16 notop) loads into the backbone, layer by layer in
    order, and raises ValueError on a mismatch. A .weights.h5 or .keras file of a Keras 3 model of
    this architecture loads into the whole model: head variables whose shapes differ (another
    number of classes, another classifier_width) keep their fresh values, as do backbone variables
    the file lacks, which the caller must refuse.
    """
    import warnings

    if is_legacy_h5(path):
        backbone(model).load_weights(str(path))
        return [], []
    fresh = [v.numpy() for v in model.weights]
    # NaN marks what the file did not fill: Keras skips a mismatched layer whole, with only a warning.
    for v in model.weights:
        if "float" in v.dtype:
            v.assign(tf.fill(v.shape, tf.constant(float("nan"), v.dtype)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_weights(str(path), skip_mismatch=True)
    core = {id(v) for v in backbone(model).weights}
    missing, head = [], []
    for v, init in zip(model.weights, fresh, strict=True):
        if "float" in v.dtype and bool(np.isnan(v.numpy()).any()):
            (missing if id(v) in core else head).append(v.path)
            v.assign(init)
    return missing, head
