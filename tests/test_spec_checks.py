"""Mistakes a spec alone shows are refused when the suite is loaded (`gridrun validate`), not by the
worker hours later: each gives one message naming the file, the job, the field and the fix.

Every case goes through the real loader, runner.suite.load_suite, on a suite file written here.
"""

from pathlib import Path

import pytest
from conftest import gridrun

from runner.errors import UserError
from runner.suite import load_suite

SUITE = """\
suite: s
defaults:
  dataset: {{name: digits, image_size: 64}}
  resources: {{gpus: 0, cpus: 1}}
jobs:
  - name: j
{job}
"""


def suite_file(tmp_path: Path, job: str, **extra: str) -> Path:
    path = tmp_path / "suite.yaml"
    text = SUITE.format(job="\n".join(f"    {line}" for line in job.strip().splitlines()))
    for key, value in extra.items():
        text += f"{key}:\n{value}"
    path.write_text(text)
    return path


# (job fields, the field named, fragments of the message)
MISTAKES = {
    "nesterov_without_momentum": (
        "framework: torch\nmodel: {arch: alexnet}\ntrain: {optimizer: {name: sgd, momentum: 0, nesterov: true}}",
        "train.optimizer.nesterov",
        ["nesterov needs momentum above 0", "Fix: set train.optimizer.momentum (e.g. 0.9), or nesterov: false"],
    ),
    "tensorflow_given_a_pytorch_file": (
        "framework: tensorflow\nmodel: {arch: alexnet, weights: /w/model.pth}",
        "model.weights",
        [
            "weights file /w/model.pth is a PyTorch file; a tensorflow job loads Keras weights",
            "Fix: give a .weights.h5",
        ],
    ),
    "torch_given_a_keras_file": (
        "framework: torch\nmodel: {arch: vgg16, weights: /w/best.weights.h5}",
        "model.weights",
        [
            "weights file /w/best.weights.h5 is a TensorFlow file; a torch job loads PyTorch state dicts",
            "Fix: give a .pth/.pt state dict",
        ],
    ),
    "tensorflow_imagenet_alexnet": (
        "framework: tensorflow\nmodel: {arch: alexnet, weights: imagenet, weights_fallback: none}",
        "model.weights",
        ["tensorflow has no ImageNet weights for alexnet (offered: vgg16)", "Fix: use weights: none"],
    ),
    "tensorflow_imagenet_resnet18": (
        "framework: tensorflow\nmodel: {arch: resnet18, weights: imagenet}",
        "model.weights",
        ["tensorflow has no ImageNet weights for resnet18 (offered: vgg16)", "Fix: use weights: none"],
    ),
    "classifier_width_without_hidden_layers": (
        "framework: torch\nmodel: {arch: resnet18, classifier_width: 256}",
        "model.classifier_width",
        ["classifier_width applies to alexnet and vgg16; resnet18 has a single linear head", "Fix: remove"],
    ),
    "image_too_small": (
        "framework: tensorflow\nmodel: {arch: alexnet}\ndataset: {image_size: 32}",
        "dataset.image_size",
        ["image_size 32 is too small for alexnet: use at least 63"],
    ),
    "imagefolder_without_path": (
        "framework: torch\nmodel: {arch: alexnet}\ndataset: {name: imagefolder}",
        "dataset.path",
        ["dataset imagefolder needs 'path'"],
    ),
    "fallback_that_needs_a_folder": (
        "framework: torch\nmodel: {arch: alexnet}\ndataset: {name: cifar10, fallback: imagefolder}",
        "dataset.fallback",
        ["fallback 'imagefolder' needs a folder of its own", "Fix: name a dataset that is always at hand (digits or"],
    ),
    "fallback_is_the_dataset": (
        "framework: torch\nmodel: {arch: alexnet}\ndataset: {fallback: digits}",
        "dataset.fallback",
        ["fallback 'digits' is the dataset itself"],
    ),
    "weights_neither_none_imagenet_nor_a_file": (
        "framework: torch\nmodel: {arch: alexnet, weights: pretrained}",
        "model.weights",
        ["weights 'pretrained' is not none, imagenet, or a weights file (a path ending in .pth, .pt, .h5, .keras)"],
    ),
    "unknown_framework": (
        "framework: pytorch\nmodel: {arch: alexnet}",
        "framework",
        ["unknown framework 'pytorch' (did you mean 'torch'?): use 'torch' or 'tensorflow'"],
    ),
    "unknown_executor": (
        "framework: torch\nmodel: {arch: alexnet}\nexecutor: dockr",
        "executor",
        ["unknown executor 'dockr' (did you mean 'docker'?): use 'auto', 'process' or 'docker'"],
    ),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_each_mistake_is_one_message_naming_the_job_and_field(case: str, tmp_path: Path) -> None:
    job, field, fragments = MISTAKES[case]
    path = suite_file(tmp_path, job)
    with pytest.raises(UserError) as info:
        load_suite(path)
    message = str(info.value)
    assert message.startswith(f"{path}: jobs[0] 'j' (after defaults) is invalid: {field}: "), message
    assert "\n" not in message, "one problem, one line"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("name", ["plots", "Report.HTML", "summary.json"])
def test_a_job_named_like_the_suites_own_files_is_refused(name: str, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"suite: s\njobs:\n  - {{name: {name}, framework: torch, model: {{arch: alexnet}}}}\n")
    with pytest.raises(UserError) as info:
        load_suite(path)
    message = str(info.value)
    assert f"name: {name!r} is taken by the suite's own files beside its job folders" in message, message
    assert "Fix: give the job another name" in message


def test_the_reserved_names_are_those_the_store_and_the_report_write(tmp_path: Path) -> None:
    from runner.report import PLOTS, REPORT_HTML, REPORT_MD
    from runner.store.layout import SuitePaths
    from schemas.job import SUITE_ENTRIES

    suite = SuitePaths.of(tmp_path, "s")
    assert {REPORT_MD, REPORT_HTML, PLOTS, suite.suite_file.name, suite.summary.name} == SUITE_ENTRIES


def test_two_mistakes_of_one_job_are_both_named(tmp_path: Path) -> None:
    path = suite_file(
        tmp_path, "framework: tensorflow\nmodel: {arch: resnet18, weights: imagenet}\ndataset: {image_size: 16}"
    )
    with pytest.raises(UserError) as info:
        load_suite(path)
    lines = str(info.value).splitlines()
    assert lines[0].endswith("jobs[0] 'j' (after defaults) is invalid:")
    assert sorted(line.split(":")[0].strip() for line in lines[1:]) == ["dataset.image_size", "model.weights"]


def test_a_mistake_a_profile_makes_names_the_profile(tmp_path: Path) -> None:
    """Every profile is validated at load: a profile turning a torch job into a tensorflow one with a .pth."""
    path = suite_file(
        tmp_path,
        "framework: torch\nmodel: {arch: alexnet, weights: /w/a.pth}",
        profiles="  tf: {framework: tensorflow}\n",
    )
    with pytest.raises(
        UserError, match=r"jobs\[0\] 'j' \(after defaults and profile 'tf'\) is invalid: model\.weights"
    ):
        load_suite(path)


def test_what_the_checks_allow(tmp_path: Path) -> None:
    """The legitimate neighbours of each mistake load."""
    ok = [
        "framework: tensorflow\nmodel: {arch: vgg16, weights: imagenet}",
        "framework: torch\nmodel: {arch: resnet18, weights: imagenet}",
        "framework: tensorflow\nmodel: {arch: alexnet, weights: /w/best.weights.h5, classifier_width: 64}",
        "framework: torch\nmodel: {arch: alexnet, weights: /w/best.pt}",
        "framework: torch\nmodel: {arch: alexnet, freeze_backbone: true}",  # a random backbone: a baseline
        "framework: torch\nmodel: {arch: alexnet}\ntrain: {optimizer: {name: sgd, momentum: 0.9, nesterov: true}}",
        "framework: torch\nmodel: {arch: alexnet}\ntrain: {optimizer: {name: sgd, momentum: 0}}",
        "framework: torch\nmodel: {arch: vgg16}\ndataset: {name: cifar10, image_size: 32, fallback: synthetic}",
    ]
    for job in ok:
        (spec,) = load_suite(suite_file(tmp_path, job)).jobs()
        assert spec.name == "j"


def test_validate_catches_it_with_exit_2(tmp_path: Path) -> None:
    path = suite_file(tmp_path, MISTAKES["tensorflow_imagenet_alexnet"][0])
    proc = gridrun("validate", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())  # the terminal wraps long lines
    assert "Traceback" not in text
    assert "jobs[0] 'j' (after defaults) is invalid: model.weights: tensorflow has no ImageNet weights" in text
