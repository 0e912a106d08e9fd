"""The architectures gridrun knows, each declared once with what a spec's checks need to know.

Pure data and arithmetic: nothing here imports a framework, so the driver can validate a spec and
size its checkpoints without PyTorch or TensorFlow.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


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

    def count(self, classes: int, width: int | None = None, frozen: bool = False) -> Parameters:
        """Total and trainable parameters with a `classes` head (and `width` hidden layers, default width)."""
        backbone, head = self.parameters(classes, width or self.default_width or 0)
        return Parameters(backbone + head, head if frozen else backbone + head)


# --- parameter arithmetic: torchvision's layers, counted --------------------------------------------


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


ARCHS: dict[str, Arch] = {
    a.name: a
    for a in (
        # AlexNet's strided convolution and three max-pools need 63 px; VGG16's and ResNet18's five halvings 32.
        Arch("alexnet", "torchvision AlexNet", 63, _alexnet, default_width=4096),
        Arch("vgg16", "torchvision VGG16 (configuration D, no BatchNorm)", 32, _vgg16, default_width=4096),
        Arch("resnet18", "torchvision ResNet18", 32, _resnet18),
    )
}
