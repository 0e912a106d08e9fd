"""Zoo models: the library's own network with a new head, counted as the library counts it."""

import json

import numpy as np
import pytest
import torch

from runner.errors import UserError
from schemas import JobSpec, ModelSpec

pytestmark = pytest.mark.slow


def _torch_counts(model: torch.nn.Module) -> tuple[int, int]:
    return (
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


@pytest.mark.parametrize("arch", ["torchvision.mobilenet_v3_small", "torchvision.resnet50", "timm.resnet18"])
def test_torch_zoo_counts_equal_the_library(arch: str) -> None:
    import timm
    import torchvision

    from runner.train import torch_zoo

    prefix, name = arch.split(".", 1)
    with torch.device("meta"):
        built = torch_zoo.build(ModelSpec(arch=arch), 10, None)
        lib = (
            torchvision.models.get_model(name, num_classes=10)
            if prefix == "torchvision"
            else timm.create_model(name, num_classes=10)
        )
    assert _torch_counts(built.model) == _torch_counts(lib)
    torch_zoo.check_output(built.model, 10, 32, arch)


def test_frozen_resnet50_trains_only_its_new_head() -> None:
    from runner.train import torch_zoo

    with torch.device("meta"):
        built = torch_zoo.build(ModelSpec(arch="torchvision.resnet50", freeze_backbone=True), 7, None)
    torch_zoo.freeze(built.model, built.head)
    assert built.head == ["fc"]
    assert _torch_counts(built.model)[1] == 2048 * 7 + 7


def test_imagenet_weights_load_into_the_backbone(tmp_path) -> None:
    """A weights file in the cache (as the prepare step leaves it): the first conv equals the file's."""
    import torchvision

    from runner.train import torch_models
    from runner.train.weights import zoo_weights_path
    from schemas.registry import model_ref

    torch.manual_seed(3)
    library = torchvision.models.get_model("mobilenet_v3_small", num_classes=1000)
    path = zoo_weights_path(model_ref("torchvision.mobilenet_v3_small"), tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(library.state_dict(), path)
    spec = JobSpec(name="j", framework="torch", model={"arch": "torchvision.mobilenet_v3_small", "weights": "imagenet"})
    built = torch_models.make(spec, 10, tmp_path, lambda _: None)
    first = next(m for m in built.model.modules() if isinstance(m, torch.nn.Conv2d))
    theirs = next(m for m in library.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(first.weight, theirs.weight)
    assert built.model.get_submodule(built.head[0]).out_features == 10


def test_missing_imagenet_weights_name_the_file(tmp_path) -> None:
    from runner.train import torch_models

    spec = JobSpec(name="j", framework="torch", model={"arch": "torchvision.resnet18", "weights": "imagenet"})
    with pytest.raises(UserError, match=r"weights/torchvision/resnet18\.pth.*torch\.save"):
        torch_models.make(spec, 10, tmp_path, lambda _: None)


def test_classifier_width_rebuilds_hidden_layers_or_is_refused() -> None:
    from runner.train import torch_zoo

    with torch.device("meta"):
        built = torch_zoo.build(ModelSpec(arch="torchvision.mobilenet_v3_small", classifier_width=64), 10, None)
    assert built.hidden_width == 1024 and len(built.head) == 2
    assert built.model.get_submodule(built.head[0]).out_features == 64
    with pytest.raises(UserError, match="no hidden dense layers"), torch.device("meta"):
        torch_zoo.build(ModelSpec(arch="torchvision.resnet18", classifier_width=64), 10, None)


def test_unknown_zoo_name_suggests_the_closest() -> None:
    from runner.train import torch_zoo

    with pytest.raises(UserError, match=r"did you mean torchvision\.resnet50"):
        torch_zoo.build(ModelSpec(arch="torchvision.resnet5O"), 10, None)


def test_too_small_image_is_one_message() -> None:
    from runner.train import torch_zoo

    with torch.device("meta"):
        built = torch_zoo.build(ModelSpec(arch="torchvision.vit_b_16"), 10, None)
    with pytest.raises(UserError, match="does not take images of 32 px"):
        torch_zoo.check_output(built.model, 10, 32, "torchvision.vit_b_16")


def test_keras_zoo_counts_equal_the_library_less_batchnorm_statistics() -> None:
    """keras' count_params includes BatchNorm's moving statistics, which PyTorch (and gridrun) call buffers."""
    import keras

    from runner.train import keras_zoo, tf_models

    spec = ModelSpec(arch="keras.MobileNetV3Small", freeze_backbone=True)
    built = keras_zoo.build(spec, 10, 32, None)
    keras_zoo.freeze(built.model, built.head)
    full = tf_models.build(spec, 10, 32, (32, 32), zoo=built)
    trainable, total = tf_models.parameter_counts(full)
    library = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=10)
    stats = sum(
        int(np.prod(v.shape))
        for layer in library.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    )
    assert total == library.count_params() - stats
    assert trainable == 1024 * 10 + 10  # the new final layer only
    logits = full([np.zeros((2, 32, 32, 3), np.uint8), np.zeros((2, 2), np.int32), np.zeros((2,), bool)])
    assert tuple(logits.shape) == (2, 10)


def test_schema_refuses_the_other_frameworks_zoo() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"trains in tensorflow, not torch\. Fix: framework: tensorflow"):
        JobSpec(name="j", framework="torch", model={"arch": "keras.ResNet50"})
    with pytest.raises(ValidationError, match=r"did you mean torchvision\.resnet50"):
        JobSpec(name="j", framework="torch", model={"arch": "torchvison.resnet50"})
    json.dumps(JobSpec.model_json_schema())  # the schema still renders
