"""The report's framework comparison, over results folders written here by hand: the study's two
frameworks give the same tables as ever; a third framework, registered by this test only, gets its
own columns, bars and sentence.

Expected cells are formatted here from the numbers each run was given, not through the report's code.
"""

from pathlib import Path

import pytest
from test_report import md_sections, plain, png_ok

from runner.report import tables, write_report
from runner.report.runs import load_suite
from runner.store.layout import JobPaths, write_json
from schemas import (
    ClassAccuracy,
    Environment,
    EpochRecord,
    JobSpec,
    Limits,
    RunResult,
    RunStatus,
    SpecFile,
    Timing,
)
from schemas.registry import FRAMEWORKS, Framework

SUITE = "cmp"
CLASSES = [f"class_{i}" for i in range(10)]
JAX = Framework(
    "jax",
    "JAX",
    image="gridrun-jax",
    dockerfile="docker/jax.Dockerfile",
    trainer="tests.no_such_trainer",
    models="tests.no_such_models",
    weights_suffixes=(".msgpack",),
    weights_kind="Flax weights",
    weights_fix="give a .msgpack file",
)


def write_run(
    suite: Path,
    job: str,
    framework: str,
    acc: float,
    seconds: float,
    speed: float,
    parameters: tuple[int, int] | None = None,
    limits: Limits | None = None,
    replicas: int = 1,
    **model,
) -> None:
    """A succeeded job folder: spec.json, status.json and a one-epoch result.json with these numbers;
    `parameters` (total, trainable) for a zoo model, which only its library counts."""
    spec = JobSpec.model_validate(
        {"name": job, "framework": framework, "model": {"arch": "alexnet", **model},
         "dataset": {"name": "synthetic", "image_size": 64}, "executor": "process"}
    )  # fmt: skip
    paths = JobPaths(suite / job)
    write_json(paths.spec, SpecFile(suite=SUITE, job=job, spec_hash="h", code_version="t", declared=spec, spec=spec))
    write_json(paths.status, RunStatus(state="succeeded", spec_hash="h"))
    epoch = EpochRecord(
        epoch=1, train_loss=1.0, train_accuracy=acc, val_accuracy=acc, test_accuracy=acc, lr=0.01,
        epoch_seconds=seconds, images_per_second=speed,
    )  # fmt: skip
    cm = [[10 if i == j else 0 for j in range(10)] for i in range(10)]
    total, trainable = parameters or spec.model.parameters(len(CLASSES))
    result = RunResult(
        suite=SUITE, job=job, spec_hash="h", spec=spec, dataset_sizes={"train": 100, "val": 10, "test": 100},
        class_names=CLASSES, epochs=[epoch], final_test_accuracy=acc, final_val_accuracy=acc, best_epoch=1,
        best_val_accuracy=acc, best_test_accuracy=acc,
        per_class_accuracy=[ClassAccuracy(name=n, accuracy=acc, support=10) for n in CLASSES],
        confusion_matrix=cm, trainable_parameters=trainable, total_parameters=total,
        timing=Timing(data_seconds=1, train_seconds=seconds - 2, eval_seconds=1, total_seconds=seconds),
        images_per_second=speed,
        environment=Environment(framework=framework, framework_version="1", python_version="3.11", device="cpu",
                                device_name="cpu", mixed_precision="off", hostname="h", limits=limits or Limits(),
                                replicas=replicas),
    )  # fmt: skip
    write_json(paths.result, result)


def cells(acc: float, seconds: float, speed: float) -> tuple[str, str, str]:
    minutes, secs = divmod(round(seconds), 60)
    return f"{acc:.2%}", f"{minutes} min {secs:02d} s", f"{speed:,.0f}"


def framework_tables(report: str) -> list[list[dict[str, str]]]:
    return [t for ts in md_sections(report).values() for t in ts if t and "Model" in t[0] and "PyTorch run" in t[0]]


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """The study's shape: alexnet in both frameworks (the faster one less accurate), a wider alexnet in torch only."""
    suite = tmp_path / "results" / SUITE
    write_run(suite, "alexnet-torch", "torch", 0.61, 125, 1500)
    write_run(suite, "alexnet-tf", "tensorflow", 0.58, 95, 2100)
    write_run(suite, "alexnet-torch-narrow", "torch", 0.55, 70, 3000, classifier_width=64)
    return suite


def test_two_frameworks_give_the_same_table_as_ever(study: Path) -> None:
    comparisons = tables.framework_pairs(load_suite(study))
    assert tables.framework_section(comparisons) == (
        "PyTorch and TensorFlow",
        "The same model with the same weights and data in both frameworks (the best run of each side).",
    )
    write_report(study)
    report = (study / "report.md").read_text()
    (table,) = framework_tables(report)
    assert list(table[0]) == [
        "Model", "Weights", "Dataset", "PyTorch run", "TensorFlow run", "PyTorch acc", "TensorFlow acc",
        "PyTorch time", "TensorFlow time", "PyTorch img/s", "TensorFlow img/s",
    ]  # fmt: skip
    (t_acc, t_time, t_speed), (f_acc, f_time, f_speed) = cells(0.61, 125, 1500), cells(0.58, 95, 2100)
    assert table == [{
        "Model": "alexnet", "Weights": "scratch", "Dataset": "synthetic 64px",
        "PyTorch run": "alexnet-torch", "TensorFlow run": "alexnet-tf",
        "PyTorch acc": f"**{t_acc}**", "TensorFlow acc": f_acc,
        "PyTorch time": t_time, "TensorFlow time": f"**{f_time}**",
        "PyTorch img/s": t_speed, "TensorFlow img/s": f"**{f_speed}**",
    }]  # fmt: skip
    assert "Accuracy: test accuracy at the best epoch. Bold: the better framework." in report
    assert "not the same limits" not in report
    assert (
        f"Both frameworks, alexnet (scratch, synthetic 64px): PyTorch {t_acc} in {t_time} ({t_speed} images/s), "
        f"TensorFlow {f_acc} in {f_time} ({f_speed} images/s)."
    ) in report
    assert "![The same model in both frameworks](plots/frameworks.png)" in report
    png_ok((study / "plots" / "frameworks.png").read_bytes())


def test_runs_of_unequal_threads_are_said_not_comparable_in_speed(tmp_path: Path) -> None:
    suite = tmp_path / SUITE
    write_run(suite, "alexnet-torch", "torch", 0.61, 125, 1500, limits=Limits(cpu_threads=1, interop_threads=1))
    write_run(suite, "alexnet-tf", "tensorflow", 0.58, 95, 2100, limits=Limits(cpu_threads=2, interop_threads=1))
    write_report(suite)
    report = " ".join((suite / "report.md").read_text().split())
    assert (
        "alexnet: not the same limits, so its speeds are not comparable (cpu threads: PyTorch 1, TensorFlow 2)."
    ) in report, report


def test_a_run_on_several_replicas_shows_its_speed_per_replica_and_is_not_compared_for_speed(tmp_path: Path) -> None:
    suite = tmp_path / SUITE
    write_run(suite, "alexnet-torch", "torch", 0.61, 125, 3000, replicas=2)
    write_run(suite, "alexnet-tf", "tensorflow", 0.58, 95, 2100)
    write_report(suite)
    report = " ".join((suite / "report.md").read_text().split())
    assert "3,000 (1,500 a replica, 2)" in report, report
    assert (
        "alexnet: not the same limits, so its speeds are not comparable (replicas: PyTorch 2, TensorFlow 1)." in report
    )


def test_a_third_framework_gets_its_columns_bars_and_sentence(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FRAMEWORKS, JAX.name, JAX)
    write_run(study, "alexnet-jax", "jax", 0.64, 80, 2600)
    write_run(study, "alexnet-jax-narrow", "jax", 0.50, 60, 3500, classifier_width=64)  # beside torch's only
    comparisons = tables.framework_pairs(load_suite(study))
    assert [list(c.runs) for c in comparisons] == [["torch", "tensorflow", "jax"], ["torch", "jax"]]
    assert tables.framework_section(comparisons)[0] == "PyTorch, TensorFlow and JAX"

    write_report(study)
    report = (study / "report.md").read_text()
    (table,) = framework_tables(report)
    names = ["PyTorch", "TensorFlow", "JAX"]
    assert list(table[0]) == ["Model", "Weights", "Dataset"] + [
        f"{n} {what}" for what in ("run", "acc", "time", "img/s") for n in names
    ]
    full, narrow = table
    numbers = {"PyTorch": cells(0.61, 125, 1500), "TensorFlow": cells(0.58, 95, 2100), "JAX": cells(0.64, 80, 2600)}
    assert [full[f"{n} run"] for n in names] == ["alexnet-torch", "alexnet-tf", "alexnet-jax"]
    for n, (acc, time, speed) in numbers.items():
        assert (plain(full[f"{n} acc"]), plain(full[f"{n} time"]), plain(full[f"{n} img/s"])) == (acc, time, speed)
    bold = {column for column, cell in full.items() if cell.startswith("**")}
    assert bold == {"JAX acc", "JAX time", "JAX img/s"}
    assert narrow["Model"] == "alexnet (dense 64)" and narrow["TensorFlow run"] == "—"
    assert (narrow["TensorFlow acc"], narrow["TensorFlow time"], narrow["TensorFlow img/s"]) == ("—",) * 3
    assert narrow["PyTorch acc"] == f"**{cells(0.55, 70, 3000)[0]}**" and narrow["JAX time"].startswith("**")
    assert "Bold: the best framework for each measure." in report

    acc, time, speed = numbers["JAX"]
    assert f"3 frameworks, alexnet (scratch, synthetic 64px): PyTorch {numbers['PyTorch'][0]} in" in report
    assert f", JAX {acc} in {time} ({speed} images/s)." in report
    assert "Both frameworks, alexnet (dense 64) (scratch, synthetic 64px): PyTorch" in report
    assert "![The same model in each framework](plots/frameworks.png)" in report
    png_ok((study / "plots" / "frameworks.png").read_bytes())
    summary = {r["Job"]: r["Framework"] for r in md_sections(report)["Summary"][0]}
    assert summary["alexnet-jax"] == "JAX" and summary["alexnet-tf"] == "TensorFlow"


# Parameter counts of the two ResNet-50s with a 10-class head, as their libraries build them (the catalog's
# numbers; Keras' BatchNorm statistics are buffers here, as in PyTorch): different networks.
TORCHVISION_R50 = (23_528_522, 23_528_522)
KERAS_R50 = (23_555_082, 20_490)  # frozen backbone: the new head alone trains


def same_name_tables(report: str) -> list[list[dict[str, str]]]:
    return md_sections(report).get("Same name, different networks", [])


def test_zoo_models_of_one_name_are_side_by_side_not_paired(study: Path) -> None:
    """torchvision.resnet50 and keras.ResNet50 ran in both frameworks, but they are different networks: the
    framework comparison keeps to the twins; the two are shown side by side with their parameter counts."""
    write_run(study, "r50-torch", "torch", 0.71, 300, 800, TORCHVISION_R50, arch="torchvision.resnet50")
    write_run(study, "r50-torch-worse", "torch", 0.40, 200, 900, TORCHVISION_R50, arch="torchvision.resnet50")
    write_run(study, "r50-keras", "tensorflow", 0.64, 250, 950, KERAS_R50, arch="keras.ResNet50", freeze_backbone=True)
    # Same name, other weights: a group of its own, which needs a second library to be shown.
    write_run(study, "mnv3", "torch", 0.5, 60, 4000, (1_528_106, 1_528_106), arch="torchvision.mobilenet_v3_small")
    runs = load_suite(study)
    assert [c.model for c in tables.framework_pairs(runs)] == ["alexnet"]
    (group,) = tables.same_names(runs)
    assert (group.name, group.archs()) == ("resnet50", ["torchvision.resnet50", "keras.ResNet50"])
    assert group.runs["torchvision"].job == "r50-torch"  # the better of the two torchvision runs

    write_report(study)
    report = (study / "report.md").read_text()
    (pairs,) = framework_tables(report)
    assert [row["Model"] for row in pairs] == ["alexnet"]
    (table,) = same_name_tables(report)
    (t_acc, t_time, _), (k_acc, k_time, _) = cells(0.71, 300, 800), cells(0.64, 250, 950)
    assert table == [{
        "Name": "resnet50", "Networks": "different: torchvision.resnet50, keras.ResNet50",
        "Weights": "scratch", "Dataset": "synthetic 64px",
        "torchvision run": "r50-torch", "keras.applications run": "r50-keras",
        "torchvision parameters": "23,528,522", "keras.applications parameters": "23,555,082 (20,490 trainable)",
        "torchvision acc": t_acc, "keras.applications acc": k_acc,
        "torchvision time": t_time, "keras.applications time": k_time,
    }]  # fmt: skip
    assert "not a comparison of frameworks: only gridrun's twins compare frameworks" in report
    assert (
        f"Same name, different networks (scratch, synthetic 64px): torchvision.resnet50 {t_acc} with 23,528,522 "
        f"parameters, keras.ResNet50 {k_acc} with 23,555,082 parameters."
    ) in report


def test_same_name_with_other_weights_is_not_side_by_side(study: Path) -> None:
    """Scratch against pretrained is no pair even of one name: the report shows no such section."""
    write_run(study, "mnv3", "torch", 0.5, 60, 4000, (1_528_106, 1_528_106), arch="torchvision.mobilenet_v3_small")
    write_run(study, "mnv3-keras", "tensorflow", 0.6, 70, 3000, (1_528_106, 1_528_106), arch="keras.MobileNetV3Small",
              weights="imagenet")  # fmt: skip
    assert tables.same_names(load_suite(study)) == []
    write_report(study)
    report = (study / "report.md").read_text()
    assert "Same name, different networks" not in report
    assert [row["Model"] for row in framework_tables(report)[0]] == ["alexnet"]
