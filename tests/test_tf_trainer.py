"""The TensorFlow trainer, run for real: `python -m runner.train.worker` on job folders built by jobhelp.

TensorFlow itself runs only in the worker subprocesses: importing torchvision after TensorFlow in
one process crashes it, and other test modules import torchvision.
"""

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from jobhelp import kill_after_first_epoch, make_job, resume_and_check, run_worker, scalars, spec_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from runner.store.layout import JobPaths, write_json
from runner.train.common import TAGS
from runner.train.weights import imagenet_path
from schemas import RunResult

pytestmark = [pytest.mark.tensorflow, pytest.mark.runs]

LAST, BEST = ("last", ".weights.h5"), ("best", ".weights.h5")
ALEXNET_FEATURES = 2_469_696
VGG16_CONVS = [  # keras.applications VGG16 without top: (layer, in channels, out channels)
    ("block1_conv1", 3, 64), ("block1_conv2", 64, 64),
    ("block2_conv1", 64, 128), ("block2_conv2", 128, 128),
    ("block3_conv1", 128, 256), ("block3_conv2", 256, 256), ("block3_conv3", 256, 256),
    ("block4_conv1", 256, 512), ("block4_conv2", 512, 512), ("block4_conv3", 512, 512),
    ("block5_conv1", 512, 512), ("block5_conv2", 512, 512), ("block5_conv3", 512, 512),
]  # fmt: skip
VGG16_FEATURES = sum(3 * 3 * i * o + o for _, i, o in VGG16_CONVS)


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def classifier(flat: int, width: int, classes: int = 10) -> int:
    return linear(flat, width) + linear(width, width) + linear(width, classes)


def checkpoint_meta(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["gridrun"])


def datasets(path: Path) -> dict[str, np.ndarray]:
    """Every array of an HDF5 file by its path."""
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj)

        f.visititems(visit)
    return out


def write_keras_applications_vgg16_notop(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A file laid out like keras-applications' vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (Keras 2
    HDF5: layer names at the root, each layer's weight names and arrays in its group), random values."""
    rng = np.random.default_rng(seed)
    layers: list[str] = ["input_1"]
    for block in range(1, 6):
        layers += [name for name, _, _ in VGG16_CONVS if name.startswith(f"block{block}_")] + [f"block{block}_pool"]
    shapes = {name: (i, o) for name, i, o in VGG16_CONVS}
    arrays = {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layers])
        f.attrs["backend"], f.attrs["keras_version"] = b"tensorflow", b"2.2.4"
        for name in layers:
            group = f.create_group(name)
            names = [f"{name}/kernel:0", f"{name}/bias:0"] if name in shapes else []
            group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            if names:
                i, o = shapes[name]
                arrays[names[0]] = rng.normal(0, 0.05, (3, 3, i, o)).astype(np.float32)
                arrays[names[1]] = rng.normal(0, 0.05, o).astype(np.float32)
                for n in names:
                    group.create_dataset(n, data=arrays[n])
    return arrays


def assert_user_error(proc, paths: JobPaths, *fragments: str) -> None:
    """Exit code 2, one `error:` line holding every fragment, no traceback, nothing half-written."""
    assert proc.returncode == 2, proc.stdout
    assert "Traceback" not in proc.stdout
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stdout
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert not paths.result.exists() and not paths.checkpoints.exists() and not paths.tb.exists()


# --- whole runs ------------------------------------------------------------------------------------


def test_run_writes_the_torch_trainers_files_and_its_weights_load_into_another_run(tmp_path: Path) -> None:
    paths = make_job(
        tmp_path,
        framework="tensorflow",
        name="tf-run",
        model={"classifier_width": 64},
        train={
            "epochs": 2,
            "compile": True,
            "label_smoothing": 0.1,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "cosine", "warmup_epochs": 1},
        },
    )
    proc = run_worker(paths, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout
    assert "XLA on" in proc.stdout and "input ImageNet mean/std" in proc.stdout and "epoch 2/2" in proc.stdout

    result = RunResult.model_validate_json(paths.result.read_text())
    assert (result.suite, result.job, result.dataset_sizes["train"]) == ("test-suite", "tf-run", 200)
    assert [e.epoch for e in result.epochs] == [1, 2]
    for e in result.epochs:
        assert e.train_loss > 0 and 0 <= e.train_accuracy <= 1 and e.epoch_seconds > 0 and e.images_per_second > 0
    steps = 200 // 32
    # The lr of each epoch's last step: warm-up reaches the peak at the end of epoch 1, then the cosine.
    assert result.epochs[0].lr == pytest.approx(0.05, rel=1e-5)
    assert result.epochs[1].lr == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps)), rel=1e-4)
    expected = ALEXNET_FEATURES + classifier(9216, 64)
    assert result.trainable_parameters == result.total_parameters == expected
    assert sum(map(sum, result.confusion_matrix)) == result.dataset_sizes["test"]
    diagonal = sum(result.confusion_matrix[i][i] for i in range(10))
    assert diagonal / result.dataset_sizes["test"] == pytest.approx(result.final_test_accuracy)
    assert result.best_epoch in (1, 2) and result.resumed_from_epoch is None
    assert result.timing.total_seconds >= result.timing.train_seconds + result.timing.eval_seconds > 0
    env = result.environment
    # resources.cpus 1: one compute and one inter-op thread, whatever the machine has; no cgroup quota as a process.
    assert (env.limits.cpu_threads, env.limits.interop_threads, env.limits.gpu_memory_fraction) == (1, 1, None)
    assert "limits: 1 compute thread(s), 1 inter-op" in proc.stdout
    assert (env.framework, env.device, env.mixed_precision) == ("tensorflow", "cpu", "off")  # bf16 on GPUs only
    assert env.framework_version and env.libraries["keras"].startswith("3.")

    progress = json.loads(paths.progress.read_text())
    assert (progress["epoch"], progress["epochs"]) == (2, 2)
    meta = checkpoint_meta(paths.checkpoint(*LAST))
    assert (meta["epoch"], meta["spec_hash"], len(meta["history"]["epochs"])) == (2, result.spec_hash, 2)
    assert checkpoint_meta(paths.checkpoint(*BEST))["epoch"] == result.best_epoch
    assert not list(paths.checkpoints.glob(".*tmp*"))  # no temp file left behind

    values = scalars(paths.tb)
    assert set(TAGS.values()) <= set(values)
    for key, tag in TAGS.items():
        assert [s for s, _ in values[tag]] == [1, 2]
        assert values[tag][1][1] == pytest.approx(getattr(result.epochs[1], key), rel=1e-5)
    acc = EventAccumulator(str(paths.tb))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hp["framework"].string_value == "tensorflow" and hp["arch"].string_value == "alexnet"

    # This run's checkpoint as the initial weights of a narrower, frozen one: the backbone loads, the
    # head (another classifier_width) stays fresh.
    again = make_job(
        tmp_path,
        framework="tensorflow",
        name="from-checkpoint",
        model={"classifier_width": 32, "weights": str(paths.checkpoint(*LAST)), "freeze_backbone": True},
        dataset={"limit": 64},
    )
    proc = run_worker(again, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout
    assert f"weights: loaded {paths.checkpoint(*LAST)}; fresh head variables: " in proc.stdout
    fresh = proc.stdout.split("fresh head variables: ")[1].splitlines()[0].split(", ")
    assert len(fresh) == 6 and all(name.startswith("classifier/fc") for name in fresh)
    first, second = datasets(paths.checkpoint(*LAST)), datasets(again.checkpoint(*LAST))
    same = [k for k in second if k in first and np.array_equal(first[k], second[k])]
    assert sorted(first[k].ndim for k in same) == [1] * 5 + [4] * 5  # the five frozen convolutions, exactly
    assert RunResult.model_validate_json(again.result.read_text()).trainable_parameters == classifier(9216, 32)


def test_kill_and_resume_records_every_epoch(tmp_path: Path) -> None:
    epochs = 4
    paths = make_job(tmp_path, framework="tensorflow", model={"classifier_width": 256}, dataset={"limit": 160},
                     train={"epochs": epochs})  # fmt: skip
    kill_after_first_epoch(paths, tmp_path / "cache", tmp_path / "first.log")
    k = checkpoint_meta(paths.checkpoint(*LAST))["epoch"]
    assert 1 <= k < epochs
    assert not paths.result.exists()

    resume_and_check(paths, tmp_path / "cache", k, epochs)
    assert checkpoint_meta(paths.checkpoint(*LAST))["epoch"] == epochs


def test_a_checkpoint_of_another_spec_is_not_resumed(tmp_path: Path) -> None:
    paths = make_job(tmp_path, framework="tensorflow", model={"classifier_width": 64}, dataset={"limit": 64},
                     spec_hash="old-hash")  # fmt: skip
    assert run_worker(paths, tmp_path / "cache").returncode == 0
    write_json(paths.spec, spec_file(paths.read_spec().spec, spec_hash="new-hash"))
    proc = run_worker(paths, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout
    assert "is from another spec: starting fresh" in proc.stdout
    result = RunResult.model_validate_json(paths.result.read_text())
    assert result.resumed_from_epoch is None and result.spec_hash == "new-hash"
    assert checkpoint_meta(paths.checkpoint(*LAST))["spec_hash"] == "new-hash"
    assert len(scalars(paths.tb)[TAGS["val_accuracy"]]) == 1


def test_imagenet_vgg16_loads_the_keras_applications_file_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    arrays = write_keras_applications_vgg16_notop(imagenet_path("tensorflow", "vgg16", cache))
    paths = make_job(
        tmp_path,
        framework="tensorflow",
        arch="vgg16",
        model={"weights": "imagenet", "freeze_backbone": True, "classifier_width": 64},
        dataset={"image_size": 32, "limit": 64},
    )
    proc = run_worker(paths, cache)
    assert proc.returncode == 0, proc.stdout
    assert f"weights: loaded {imagenet_path('tensorflow', 'vgg16', cache)}" in proc.stdout
    assert "input keras vgg16 preprocess_input (caffe)" in proc.stdout
    result = RunResult.model_validate_json(paths.result.read_text())
    head = classifier(512 * 7 * 7, 64)
    assert (result.trainable_parameters, result.total_parameters) == (head, VGG16_FEATURES + head)
    # Frozen: after training, the checkpoint holds every array of the file, unchanged.
    saved = list(datasets(paths.checkpoint(*LAST)).values())
    for name, value in arrays.items():
        assert any(s.shape == value.shape and np.array_equal(s, value) for s in saved), name


# --- a user's mistakes -------------------------------------------------------------------------------
# Those the spec alone shows (ImageNet weights tensorflow lacks, a PyTorch weights file, nesterov
# without momentum) are refused when the suite is loaded: tests/test_spec_checks.py.


def test_missing_imagenet_vgg16_names_the_path_to_fill(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paths = make_job(tmp_path, framework="tensorflow", arch="vgg16", model={"weights": "imagenet"},
                     dataset={"image_size": 32})  # fmt: skip
    assert_user_error(
        run_worker(paths, cache),
        paths,
        f"ImageNet weights for tensorflow vgg16 are not at {imagenet_path('tensorflow', 'vgg16', cache)}",
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "Fix:",
    )


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("notes.h5", "not weights", "cannot be loaded into keras alexnet"),
        ("gone.weights.h5", None, "does not exist"),
        ("vgg16_notop.h5", "vgg16", "cannot be loaded into keras alexnet"),
    ],
)
def test_weights_it_cannot_load_are_refused(tmp_path: Path, file: str, content: str | None, message: str) -> None:
    path = tmp_path / "my weights" / file
    if content == "vgg16":
        write_keras_applications_vgg16_notop(path)
    elif content is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    paths = make_job(tmp_path, framework="tensorflow", model={"weights": str(path), "classifier_width": 64})
    assert_user_error(run_worker(paths, tmp_path / "cache"), paths, f"weights file {path} {message}", "Fix:")
