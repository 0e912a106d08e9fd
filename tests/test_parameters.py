"""Parameter counts by arithmetic (schemas.registry) equal those of the models the trainers build.

The driver sizes checkpoints from the arithmetic, without importing a framework; a change to either
the arithmetic or torch_models (a layer, a head, what freeze_backbone leaves trainable) fails here.
"""

import itertools
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from runner.train import torch_models
from schemas import ModelSpec
from schemas.registry import ARCHS

CASES = [
    (arch, classes, width, frozen)
    for arch, classes, width, frozen in itertools.product(ARCHS, (10, 100), (None, 256), (False, True))
    if width is None or ARCHS[arch].default_width is not None  # resnet18 has no hidden layers to resize
]


def meta_counts(spec: ModelSpec, classes: int) -> tuple[int, int]:
    """(total, trainable) of the real torch model, built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = torch_models.build(spec, classes)
    if spec.freeze_backbone:
        torch_models.freeze_backbone(model, spec.arch)
    trainable, total = torch_models.parameter_counts(model)
    return total, trainable


@pytest.mark.parametrize(("arch", "classes", "width", "frozen"), CASES)
def test_arithmetic_equals_the_torch_model(arch: str, classes: int, width: int | None, frozen: bool) -> None:
    spec = ModelSpec(arch=arch, classifier_width=width, freeze_backbone=frozen)
    counted = spec.parameters(classes)
    assert (counted.total, counted.trainable) == meta_counts(spec, classes)
    if frozen:
        assert counted.trainable < counted.total


def test_every_architecture_is_covered() -> None:
    assert {c[0] for c in CASES} == set(ARCHS)
    assert ModelSpec(arch="alexnet").parameters(10) == (57_044_810, 57_044_810)  # torchvision's own figure


def test_sizing_a_plan_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "import runner.plan.disk as disk\n"
        "from schemas import JobSpec\n"
        "from schemas.registry import ARCHS\n"
        "for arch in ARCHS:\n"
        "    spec = JobSpec.model_validate({'name': arch, 'framework': 'torch', 'model': {'arch': arch},\n"
        "                                   'train': {'optimizer': {'name': 'adam'}}})\n"
        "    assert disk.need(spec).last > 0\n"
        "bad = [m for m in ('torch', 'torchvision', 'tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
