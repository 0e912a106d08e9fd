"""The zoo catalogue: the model libraries asked in a child process (runner.train.catalog), their answers
cached, and what validate, plan, models and prepare make of them.

The libraries are asked once for the whole module (one torch and one TensorFlow process); every test
after reads the same cache, as a second `gridrun validate` would. Counts are checked against the
libraries' own, built here; Keras' in a process of its own (TensorFlow and torchvision cannot share one).
"""

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, gridrun
from rich.console import Console

from runner.plan import disk, make_plan, models, plan_table
from runner.plan.nodes import Node
from runner.prepare import Preparer
from runner.store import ResultsStore
from runner.suite import load_suite
from runner.train.probe import Catalog, Request
from runner.train.weights import zoo_weights_path
from schemas import JobSpec
from schemas.registry import ZOOS, model_ref

MNV3 = Request("torchvision.mobilenet_v3_small", 10, None, False, 32)
MNV3_FROZEN = MNV3._replace(frozen=True)
MNV3_NARROW = MNV3._replace(classifier_width=64)
TIMM = Request("timm.mobilenetv3_small_050", 10, None, False, 32)
KERAS = Request("keras.MobileNetV3Small", 10, None, True, 32)
VIT_32 = Request("torchvision.vit_b_16", 10, None, False, 32)
INCEPTION_32 = Request("keras.InceptionV3", 10, None, False, 32)
RESNET18_NARROW = Request("torchvision.resnet18", 10, 64, False, 32)
REQUESTS = [MNV3, MNV3_FROZEN, MNV3_NARROW, TIMM, KERAS, VIT_32, INCEPTION_32, RESNET18_NARROW]
HEAD = 1024 * 10 + 10  # MobileNetV3-Small's new final layer: 1024 hidden units -> 10 classes


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding every library's names and the facts of REQUESTS: asked once, in two child processes."""
    folder = tmp_path_factory.mktemp("catalog cache")
    said: list[str] = []
    Catalog(folder, say=said.append).ask(ZOOS.values(), REQUESTS)
    assert said == [], said  # every library is installed here and answered
    return folder


@pytest.fixture(scope="module")
def facts(cache: Path):
    return Catalog(cache).facts(REQUESTS)


def _counts(model) -> tuple[int, int]:
    return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.runs
def test_torch_counts_equal_the_librarys_own(facts) -> None:
    import timm
    import torch
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.get_model("mobilenet_v3_small", num_classes=10)
        tm = timm.create_model("mobilenetv3_small_050", num_classes=10)
    assert (facts[MNV3].total, facts[MNV3].trainable) == _counts(tv)
    assert (facts[TIMM].total, facts[TIMM].trainable) == _counts(tm)
    assert facts[MNV3_FROZEN].total == _counts(tv)[0] and facts[MNV3_FROZEN].trainable == HEAD
    assert facts[MNV3].hidden_width == 1024 and facts[TIMM].problem == "" and facts[MNV3].min_image_size == 8
    # classifier_width rebuilds the hidden layer: 576 -> 64 -> 10 instead of 576 -> 1024 -> 10.
    narrow = _counts(tv)[0] - (576 * 1024 + 1024) - HEAD + (576 * 64 + 64) + (64 * 10 + 10)
    assert (facts[MNV3_NARROW].total, facts[MNV3_NARROW].problem) == (narrow, "")


@pytest.mark.runs
def test_keras_counts_equal_the_librarys_own(facts) -> None:
    """Keras' count_params holds BatchNorm's moving statistics, which PyTorch (and gridrun) call buffers."""
    code = (
        "import keras\n"
        "m = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=10)\n"
        "stats = sum(int(v.shape[0]) for l in m.layers if isinstance(l, keras.layers.BatchNormalization)\n"
        "            for v in (l.moving_mean, l.moving_variance))\n"
        "print(m.count_params() - stats)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert facts[KERAS].total == int(done.stdout.split()[-1])
    assert facts[KERAS].trainable == HEAD  # freeze_backbone: the new final layer alone
    assert facts[KERAS].min_image_size == 32 and facts[KERAS].hidden_width is None


def test_sizes_and_widths_a_model_cannot_take(facts) -> None:
    vit = facts[VIT_32]
    assert vit.min_image_size == 224
    assert vit.problem.startswith("torchvision.vit_b_16 does not take images of 32 px")
    assert "the smallest side it takes is 224 px. Fix: set dataset.image_size" in vit.problem
    inception = facts[INCEPTION_32]
    assert inception.min_image_size == 75 and "the smallest side it takes is 75 px" in inception.problem
    assert facts[RESNET18_NARROW].problem.startswith(
        "classifier_width does not apply to torchvision.resnet18: its classifier has no hidden dense layers"
    )


def test_a_second_catalog_answers_from_the_cache(cache: Path) -> None:
    """What the cache file says is the answer: no child process is asked again (a changed number shows it)."""
    (path,) = (cache / "catalog").glob("torchvision-*.json")
    content = json.loads(path.read_text())
    saved = path.read_text()
    try:
        content["facts"][MNV3.key]["total"] = 123
        content["names"].append("made_up_net")
        path.write_text(json.dumps(content))
        catalog = Catalog(cache)
        assert catalog.facts([MNV3])[MNV3].total == 123
        assert "made_up_net" in catalog.listing(ZOOS["torchvision"]).names
    finally:
        path.write_text(saved)


SUITE = """\
suite: zoo
defaults:
  dataset: {name: synthetic, image_size: 32, synthetic_size: 100}
  resources: {gpus: 0, cpus: 1}
  executor: process
jobs:
"""


def _suite(folder: Path, *jobs: str) -> Path:
    path = folder / "zoo.yaml"
    path.write_text(SUITE + "".join(f"  - {job}\n" for job in jobs))
    return path


def _validate(cache: Path, path: Path, code: int) -> str:
    """`gridrun validate` of the suite at `path` with this cache: its output, whitespace squashed."""
    proc = gridrun("validate", str(path), env={"GRIDRUN_CACHE": str(cache)})
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return " ".join((proc.stdout + proc.stderr).split())


def test_validate_refuses_what_the_libraries_cannot_build(cache: Path, tmp_path: Path) -> None:
    path = _suite(
        tmp_path,
        "{name: typo, framework: torch, model: {arch: torchvision.resnet5}}",
        "{name: keras-typo, framework: tensorflow, model: {arch: keras.Resnet50}}",
        "{name: tag-typo, framework: torch, model: {arch: timm.mobilenetv3_small_050.lamb_in1kk}}",
        "{name: vit-small, framework: torch, model: {arch: torchvision.vit_b_16}}",
        "{name: no-hidden, framework: torch, model: {arch: torchvision.resnet18, classifier_width: 64}}",
        "{name: fine, framework: torch, model: {arch: torchvision.mobilenet_v3_small}}",
    )
    text = _validate(cache, path, 2)
    assert text.startswith(f"error: {path}: 5 jobs name models their library cannot build as asked:")
    assert (
        "job typo: torchvision has no model 'resnet5' (did you mean torchvision.resnet50, torchvision.resnet152, "
        "torchvision.resnet34?). Fix: `gridrun models --framework torch --filter resnet5` lists the names"
    ) in text
    assert "job keras-typo: keras.applications has no model 'Resnet50' (did you mean keras.ResNet50" in text
    assert (
        "job tag-typo: timm has no pretrained tag 'lamb_in1kk' for mobilenetv3_small_050 (did you mean "
        "timm.mobilenetv3_small_050.lamb_in1k?)"
    ) in text
    assert "job vit-small: torchvision.vit_b_16 does not take images of 32 px" in text
    assert "job no-hidden: classifier_width does not apply to torchvision.resnet18" in text
    assert "job fine" not in text


def test_validate_names_the_profile_a_problem_comes_with(cache: Path, tmp_path: Path) -> None:
    path = _suite(tmp_path, "{name: mnv3, framework: torch, model: {arch: torchvision.mobilenet_v3_small}}")
    path.write_text(
        path.read_text().replace("jobs:\n", "profiles:\n  narrow: {model: {arch: torchvision.vit_b_16}}\njobs:\n")
    )
    text = _validate(cache, path, 2)
    assert text.startswith(f"error: {path}: job mnv3 (profile narrow): torchvision.vit_b_16 does not take images of 32")


# Jobs each library builds as asked, with the facts of REQUESTS.
GOOD = (
    "{name: mnv3, framework: torch, model: {arch: torchvision.mobilenet_v3_small}}",
    "{name: frozen, framework: torch, model: {arch: torchvision.mobilenet_v3_small, freeze_backbone: true}}",
    "{name: keras, framework: tensorflow, model: {arch: keras.MobileNetV3Small, freeze_backbone: true}}",
    "{name: timm, framework: torch, model: {arch: timm.mobilenetv3_small_050}}",
    "{name: twin, framework: torch, model: {arch: resnet18}}",
)


def test_a_good_zoo_suite_validates(cache: Path, tmp_path: Path) -> None:
    path = _suite(tmp_path, *GOOD)
    assert _validate(cache, path, 0).startswith(f"ok {path}: suite 'zoo', 5 job(s)")


def test_models_lists_the_names_of_each_library(cache: Path) -> None:
    env = {"GRIDRUN_CACHE": str(cache)}
    proc = gridrun("models", "--filter", "resnet", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in proc.stdout.splitlines() if "│" in line}
    assert rows["resnet18"] == "torch, tensorflow" and rows["torchvision.resnet50"] == "yes"
    assert rows["keras.ResNet50"] == "yes" and rows["timm.resnet50"].startswith("yes: a1_in1k, a1h_in1k, a2_in1k")
    assert all("resnet" in name.lower() for name in rows if name != "model.arch")
    assert "<module>:<function>" in proc.stdout and "code: folder" in proc.stdout
    tf = gridrun("models", "--framework", "tensorflow", "--filter", "ResNet5", env=env)
    assert tf.returncode == 0, tf.stdout + tf.stderr
    assert "keras.ResNet50V2" in tf.stdout and "torchvision." not in tf.stdout and "timm." not in tf.stdout
    bad = gridrun("models", "--framework", "pytorch", env=env)
    assert bad.returncode == 2 and bad.stdout == ""
    assert " ".join(bad.stderr.split()) == (
        "error: --framework: unknown framework 'pytorch' (did you mean 'torch'?): use 'torch' or 'tensorflow'. "
        "Fix: pick one of those, or leave it out for all"
    )
    empty = gridrun("models", "--filter", " ", env=env)
    assert empty.returncode == 2 and "error: --filter ' ' is not a piece of a model name" in empty.stderr


@pytest.fixture
def lean_python(tmp_path: Path) -> Path:
    """A virtual environment of this Python with every package of this one but timm: a real install without it."""
    venv = tmp_path / "lean"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    here = Path(next(p for p in sys.path if p.endswith("site-packages")))
    (there,) = (venv / "lib").glob("python*/site-packages")
    for entry in here.iterdir():
        if not re.match(r"(timm|gridrun)\b|__editable__", entry.name):
            (there / entry.name).symlink_to(entry)
    return venv / "bin" / "python"


def test_a_library_not_installed_is_said_once_and_skipped(lean_python: Path, tmp_path: Path) -> None:
    path = _suite(
        tmp_path,
        "{name: one, framework: torch, model: {arch: timm.not_a_timm_model}}",
        "{name: two, framework: torch, model: {arch: timm.resnet18}}",
    )
    env = {**os.environ, "GRIDRUN_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    args = [str(lean_python), "-m", "runner", "validate", str(path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = " ".join(proc.stdout.split())
    assert text.count("not installed") == 1, text
    assert "note: timm is not installed here (timm missing from" in text
    assert "timm.<name> models are not checked before their jobs run" in text and f"ok {path}" in text
    assert not (tmp_path / "cache" / "catalog").exists()  # nothing was asked


def _table(table) -> tuple[list[str], list[list[str]]]:
    """A rich table as text: its headers, and each printed line of cells (a wrapped cell goes on the next)."""
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(table)
    lines = console.export_text().splitlines()
    header = next(line for line in lines if "┃" in line)
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if "│" in line]
    return [c.strip() for c in header.split("┃")[1:-1]], cells


@pytest.mark.runs
def test_plan_counts_every_job_and_sizes_its_checkpoints(cache: Path, tmp_path: Path) -> None:
    loaded = load_suite(_suite(tmp_path, *GOOD))
    catalog = Catalog(cache)
    specs = loaded.jobs()
    counts = models.counts(specs, catalog)
    facts = catalog.facts([MNV3, KERAS, TIMM])
    assert counts["mnv3"] == (facts[MNV3].total, facts[MNV3].total)
    assert counts["frozen"] == (facts[MNV3].total, HEAD) and counts["keras"] == (facts[KERAS].total, HEAD)
    assert counts["timm"] == (facts[TIMM].total, facts[TIMM].total)
    assert counts["twin"] == specs[4].model.parameters(10)
    prepared = [Preparer(tmp_path / "cache", download=False).prepare(s) for s in specs]
    store = ResultsStore.open(tmp_path / "results", create=True, check=False)
    nodes = [Node("n1", "host1", cpus=4, gpus=0, memory_gb=16)]
    plan = make_plan(loaded, prepared, nodes, store, say=lambda _: None, counts=counts)
    headers, lines = _table(plan_table(plan, "plan"))
    column = headers.index("parameters")
    first = {line[0]: i for i, line in enumerate(lines) if line[0]}
    assert [lines[first[job]][column] for job in ("mnv3", "frozen", "keras", "timm", "twin")] == [
        "1.53 M", "1.53 M", "1.53 M", "578 k", "11.2 M"
    ]  # fmt: skip
    assert lines[first["frozen"] + 1][column] == lines[first["keras"] + 1][column] == "10.2 k trainable"
    line, _ = disk.check(specs, None, counts)
    assert line.startswith("checkpoints: the 5 job(s) to run write up to") and "besides" not in line
    need = disk.need(specs[0], counts["mnv3"])
    assert (need.best, need.last) == (4 * facts[MNV3].total, 4 * 2 * facts[MNV3].total)  # SGD's momentum slot


@pytest.mark.runs
def test_gridrun_plan_shows_the_parameter_column(cache: Path, tmp_path: Path) -> None:
    path = _suite(tmp_path, "{name: mnv3, framework: torch, model: {arch: torchvision.mobilenet_v3_small}}")
    args = ["plan", str(path), "--results", str(tmp_path / "results"), "--cache", str(cache), "--cpus", "2"]
    proc = gridrun(*args, env={"GRIDRUN_CACHE": str(cache)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "parameters" in proc.stdout and "1.53 M" in proc.stdout
    # SGD's momentum: last = 2 x 4 bytes a parameter, best = 4; room for a second `last` while it is rewritten.
    assert "checkpoints: the 1 job(s) to run write up to 29 MB (largest: mnv3, 17 MB)" in proc.stdout, proc.stdout


# --- ImageNet weights of a zoo model -----------------------------------------------------------------


def _imagenet(arch: str, framework: str = "torch", fallback: bool = False) -> JobSpec:
    model = {"arch": arch, "weights": "imagenet"} | ({"weights_fallback": "none"} if fallback else {})
    return JobSpec(name="j", framework=framework, model=model, dataset={"name": "synthetic"})


@pytest.mark.runs
def test_offline_the_fallback_applies_or_the_job_names_the_file(tmp_path: Path) -> None:
    """This machine reaches no model hub: the library's own download, in its child process, fails for real."""
    said: list[str] = []
    preparer = Preparer(tmp_path / "cache", download=True, say=said.append)
    path = zoo_weights_path(model_ref("torchvision.mobilenet_v3_small"), tmp_path / "cache")
    missing = preparer.prepare(_imagenet("torchvision.mobilenet_v3_small")).missing
    assert missing.startswith(f"ImageNet weights for torchvision.mobilenet_v3_small are not at {path} and could not")
    assert "Fix: save the library's own weights there, on a machine with network: torch.save(" in missing
    assert any(f"downloading torchvision's ImageNet weights of torchvision.mobilenet_v3_small into {path}" in m
               for m in said)  # fmt: skip
    assert (tmp_path / "cache" / "torch" / "hub").is_dir()  # torch hub was pointed into gridrun's cache
    substituted = preparer.prepare(_imagenet("torchvision.mobilenet_v3_small", fallback=True))  # memoised: no retry
    assert substituted.missing == "" and substituted.spec.model.weights == "none"
    assert [(s.kind, s.wanted, s.used) for s in substituted.substitutions] == [("weights", "imagenet", "none")]
    assert substituted.substitutions[0].reason == missing and not path.exists()
    # `plan` downloads nothing: it asks whether the library's weights host answers.
    keras = _imagenet("keras.MobileNetV3Small", "tensorflow")
    planned = Preparer(tmp_path / "plan cache", download=False).prepare(keras)
    assert "could not be downloaded (https://storage.googleapis.com/tensorflow/keras-applications/ does not" in (
        planned.missing
    )
    assert not (tmp_path / "plan cache").exists()


def test_weights_already_in_the_cache_are_used_without_a_download(tmp_path: Path) -> None:
    import torch
    import torchvision

    from runner.train import torch_models

    cache = tmp_path / "cache"
    path = zoo_weights_path(model_ref("torchvision.mobilenet_v3_small"), cache)
    path.parent.mkdir(parents=True)
    torch.manual_seed(5)
    library = torchvision.models.get_model("mobilenet_v3_small", num_classes=1000)
    torch.save(library.state_dict(), path)
    said: list[str] = []
    ready = Preparer(cache, download=True, say=said.append).prepare(_imagenet("torchvision.mobilenet_v3_small"))
    assert (ready.missing, ready.substitutions, said) == ("", [], [])
    assert sorted(p.name for p in cache.iterdir()) == ["weights"]  # no library was started to download
    built = torch_models.make(ready.spec, 10, cache, lambda _: None)
    first = next(m for m in built.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(first.weight, library.features[0][0].weight)


def test_the_catalog_is_run_with_the_driver_free_of_frameworks() -> None:
    """The driver's side imports no framework: the catalogue's probe, its cache and the CLI's models verb."""
    code = (
        "import sys\n"
        "import runner.train.probe, runner.plan.models, runner.cli.models\n"
        "bad = [m for m in ('torch', 'torchvision', 'tensorflow', 'keras', 'timm') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
