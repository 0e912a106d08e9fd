"""Suite files: every file in jobs/ validates; every bad input is one clear message, exit 2."""

from pathlib import Path

import pytest
from conftest import REPO, gridrun
from jobhelp import GOOD

from runner.errors import UserError
from runner.suite import load_suite

JOB_FILES = sorted((REPO / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_file_validates(path: Path) -> None:
    loaded = load_suite(path)
    for profile in [None, *loaded.suite.profiles]:
        assert loaded.jobs(profile), f"{path} has no jobs under profile {profile}"


def test_study_suite_holds_the_study() -> None:
    jobs = {j.name: j for j in load_suite(REPO / "jobs/alexnet-challenge.yaml").jobs()}
    assert len(jobs) == 5
    assert all(
        j.train.batch_size == 64 and j.dataset.image_size == 224 and j.dataset.name == "cifar10" for j in jobs.values()
    )
    torch_scratch, tf_scratch = jobs["alexnet-torch-scratch"], jobs["alexnet-tf-scratch"]
    assert (torch_scratch.framework, torch_scratch.model.weights, torch_scratch.train.epochs) == ("torch", "none", 30)
    assert (tf_scratch.framework, tf_scratch.model.weights, tf_scratch.train.epochs) == ("tensorflow", "none", 30)
    pre = jobs["alexnet-torch-pretrained"]
    assert (pre.model.weights, pre.model.freeze_backbone, pre.train.epochs) == ("imagenet", False, 10)
    vgg = jobs["vgg16-tf-pretrained"]
    assert (vgg.framework, vgg.model.arch, vgg.model.freeze_backbone, vgg.train.epochs) == (
        "tensorflow",
        "vgg16",
        True,
        10,
    )
    small = jobs["alexnet-tf-small-dense"]
    assert small.model.classifier_width and small.model.classifier_width < 4096 and small.train.epochs == 15
    cpu = load_suite(REPO / "jobs/alexnet-challenge.yaml").jobs("cpu")
    assert all(
        j.resources.gpus == 0 and j.dataset.fallback == "digits" and j.model.weights_fallback == "none" for j in cpu
    )


def test_matrix_expands_with_names_and_excludes(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("""\
suite: m
defaults: {dataset: {name: digits, image_size: 64}}
matrix:
  name: "{arch}-{framework}-{weights}"
  axes:
    model.arch: [alexnet, vgg16]
    framework: [torch, tensorflow]
    model.weights: [none, imagenet]
  exclude:
    - {model.arch: vgg16, framework: torch}
    - {model.arch: alexnet, framework: tensorflow, model.weights: imagenet}  # keras.applications has none
""")
    names = [j.name for j in load_suite(path).jobs()]
    assert len(names) == 5
    assert "alexnet-torch-imagenet" in names and "vgg16-tensorflow-none" in names
    assert not any(n.startswith("vgg16-torch") for n in names)


def test_profile_overrides_every_job_and_relative_paths_resolve(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        GOOD.replace("model: {arch: alexnet}", "model: {arch: alexnet, weights: w/a.pth}")
        + "profiles:\n  quick: {train: {epochs: 1}}\n"
    )
    loaded = load_suite(path)
    (job,) = loaded.jobs("quick")
    assert job.train.epochs == 1
    assert job.model.weights == str(tmp_path / "w" / "a.pth")
    with pytest.raises(UserError, match="no profile 'nope'"):
        loaded.jobs("nope")


# (file content, expected fragments of the message)
BAD = {
    "malformed": ("suite: s\njobs: [\n  {name: a\n", ["malformed YAML", "bad.yaml:"]),
    "empty": ("", ["is empty"]),
    "python_tag": (
        "suite: !!python/object/apply:os.system ['echo hi']\njobs: []\n",
        ["python/object", "not allowed", "remove the tag"],
    ),
    "unknown_top_key": (GOOD + "jbos: []\n", ["unknown key 'jbos'", "did you mean 'jobs'"]),
    "unknown_job_key": (
        GOOD.replace("framework: torch", "framework: torch\n    trian: {epochs: 2}"),
        ["jobs[0]", "unknown key 'trian'", "did you mean 'train'"],
    ),
    "unknown_nested_key": (
        GOOD.replace("model: {arch: alexnet}", "model: {arch: alexnet, wieghts: none}"),
        ["model.wieghts", "did you mean 'weights'"],
    ),
    "wrong_type": (
        GOOD.replace("framework: torch", "framework: torch\n    train: {epochs: many}"),
        ["train.epochs", "valid integer", "'many'"],
    ),
    "epochs_zero": (
        GOOD.replace("framework: torch", "framework: torch\n    train: {epochs: 0}"),
        ["train.epochs", "greater than or equal to 1"],
    ),
    "batch_negative": (
        GOOD.replace("framework: torch", "framework: torch\n    train: {batch_size: -1}"),
        ["train.batch_size", "greater than or equal to 1"],
    ),
    "image_too_small": (
        GOOD.replace("image_size: 64", "image_size: 32"),
        ["image_size 32 is too small for alexnet", "at least 63"],
    ),
    "unknown_arch": (GOOD.replace("arch: alexnet", "arch: lenet"), ["model.arch", "'alexnet', 'vgg16' or 'resnet18'"]),
    "unknown_dataset": (GOOD.replace("name: digits", "name: mnist"), ["dataset.name", "'cifar10'"]),
    "name_slash": (GOOD.replace("name: a", "name: a/b"), ["'a/b' is not a safe name"]),
    "name_dotdot": (GOOD.replace("name: a", "name: '..'"), ["'..' is not a safe name"]),
    "duplicate": (
        GOOD + "  - {name: a, framework: torch, model: {arch: alexnet}}\n",
        ["jobs[0] and jobs[1] are both named 'a'", "unique"],
    ),
    "missing_field": (GOOD.replace("    framework: torch\n", ""), ["framework: required but missing"]),
    "not_mapping": ("- a\n- b\n", ["not a mapping"]),
    "no_jobs": ("suite: s\n", ["no jobs"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_message(case: str, tmp_path: Path) -> None:
    text, fragments = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_suite(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize("case", ["malformed", "python_tag", "unknown_job_key", "image_too_small", "duplicate"])
def test_bad_input_cli_exit_2_no_traceback_nothing_written(case: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD[case][0])
    results = tmp_path / "results"
    proc = gridrun("run", str(path), "--results", str(results))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "error:" in proc.stderr and str(path) in proc.stderr
    assert not results.exists()


def test_missing_suite_file(tmp_path: Path) -> None:
    proc = gridrun("run", str(tmp_path / "nope.yaml"), "--results", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert "suite file" in proc.stderr and "not found" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_unreachable_address(tmp_path: Path) -> None:
    proc = gridrun("run", str(REPO / "jobs/smoke.yaml"), "--results", str(tmp_path / "r"), "--address", "127.0.0.1:9")
    assert proc.returncode == 2, proc.stderr
    assert "cannot reach a Ray cluster at 127.0.0.1:9" in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_bad_executor_option(tmp_path: Path) -> None:
    proc = gridrun("run", str(REPO / "jobs/smoke.yaml"), "--results", str(tmp_path / "r"), "--executor", "slurm")
    assert proc.returncode == 2 and "'slurm' is not one of auto, process, docker" in proc.stderr


def test_validate_and_schema_commands() -> None:
    proc = gridrun("validate", *map(str, JOB_FILES))
    assert proc.returncode == 0 and proc.stdout.count("ok ") == len(JOB_FILES)
    import json

    schema = json.loads(gridrun("schema").stdout)
    job = schema["$defs"]["PartialJob"]
    assert schema["properties"]["jobs"]["items"] == {"$ref": "#/$defs/PartialJob"}
    assert "epochs" in schema["$defs"]["TrainSpec"]["properties"]
    assert job["additionalProperties"] is False and "required" not in job
    assert all("description" in f for f in schema["$defs"]["TrainSpec"]["properties"].values())


def test_every_schema_field_has_a_description() -> None:
    import inspect

    from pydantic import BaseModel

    import schemas

    for name, model in inspect.getmembers(schemas, inspect.isclass):
        if issubclass(model, BaseModel):
            missing = [f for f, info in model.model_fields.items() if not info.description]
            assert not missing, f"{name}: {missing}"
