"""TensorFlow against PyTorch: the same network, input pipeline, optimizer, schedule, loss and files.

PyTorch runs in this process; TensorFlow runs in subprocesses only (the worker, or one probe
script per module), because importing torchvision after TensorFlow in one process crashes it.
"""

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from jobhelp import REPO, job_spec, make_job, run_worker, scalars, worker_env

from runner.train import torch_models
from runner.train.common import TAGS
from runner.train.torch_trainer import Pipeline, make_optimizer, make_scheduler
from schemas import ModelSpec, RunResult, TrainSpec

pytestmark = pytest.mark.tensorflow

# The TensorFlow side of every comparison below, run once in a subprocess:
# python -c PROBE request.json arrays.npz out.npz
PROBE = r"""
import json, sys
import numpy as np
from runner.train import tf_models, tf_trainer
import keras, tensorflow as tf
from schemas import ModelSpec, TrainSpec

req = json.load(open(sys.argv[1]))
arr = dict(np.load(sys.argv[2]))
out = {}

for key, c in req["counts"].items():
    spec = ModelSpec.model_validate(c["model"])
    model = tf_models.build(spec, c["classes"], c["size"])
    if spec.freeze_backbone:
        tf_models.freeze_backbone(model)
    out[f"counts/{key}"] = np.array(tf_models.parameter_counts(model))

pre = req["preprocess"]
layer = tf_models.Preprocess(pre["size"])
out["pre/out"] = layer([arr["pre/images"], arr["pre/shift"], arr["pre/flip"]]).numpy()
caffe = tf_models.Preprocess(pre["size"], caffe=True)
zero = np.zeros_like(arr["pre/shift"]), np.zeros_like(arr["pre/flip"])
out["pre/caffe"] = caffe([arr["pre/images"], *zero]).numpy()
reference = keras.applications.vgg16.preprocess_input(arr["pre/images"].astype("float32"))
out["pre/caffe_ref"] = tf.image.resize(reference, (pre["size"], pre["size"]), method="bilinear").numpy()

for key, size in req["pools"].items():
    out[f"pool/{key}"] = tf_models.AdaptiveAvgPool2D(size)(arr[f"pool/{key}"]).numpy()

for key, s in req["schedules"].items():
    sched = tf_trainer.Schedule(TrainSpec.model_validate(s["train"]), s["steps"])
    steps = range(sched.total + 1)
    out[f"lr/{key}"] = np.array([float(sched(k)) for k in steps])
    out[f"mom/{key}"] = np.array([float(sched.momentum(k)) for k in steps])

A, b = arr["opt/A"], arr["opt/b"]
for key, s in req["optimizers"].items():
    opt = tf_trainer.make_optimizer(TrainSpec.model_validate(s["train"]), s["steps"])
    p = keras.Variable(arr["opt/p0"])
    opt.build([p])
    for _ in range(opt.schedule.total):
        grad = A.T @ (A @ p.numpy() - b)  # of 0.5 * |A p - b|^2
        opt.apply([tf.constant(grad)], [p])
    out[f"opt/{key}"] = p.numpy()

for key, smoothing in req["losses"].items():
    out[f"loss/{key}"] = np.array(float(tf_trainer.cross_entropy(arr["loss/y"], arr["loss/logits"], smoothing)))

for key, f in req["forward"].items():
    spec = ModelSpec.model_validate(f["model"])
    model = tf_models.build(spec, f["classes"], f["size"], tuple(f["source"]))
    for path, name in f["map"].items():
        layer = model
        for part in path.split("/"):
            layer = layer.get_layer(part)
        values = [arr[f"fw/{key}/{name}.{w}"] for w in f["kinds"][path]]
        layer.set_weights(values)
    x = arr[f"fw/{key}/images"]
    n = len(x)
    logits = model([x, np.zeros((n, 2), "int32"), np.zeros(n, bool)], training=False)
    out[f"fw/{key}"] = np.asarray(logits)

np.savez(sys.argv[3], **out)
"""


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


ALEXNET_FEATURES = 2_469_696  # torchvision alexnet.features
VGG16_FEATURES = 14_714_688  # torchvision vgg16.features = keras.applications VGG16 without top

# (model spec, classes, image size): sizes other than 224 exercise the adaptive pools' emulation.
COUNT_CASES: dict[str, tuple[dict[str, Any], int, int]] = {
    "alexnet": ({"arch": "alexnet"}, 10, 224),
    "alexnet-63px": ({"arch": "alexnet"}, 10, 63),
    "alexnet-frozen": ({"arch": "alexnet", "weights": "imagenet", "freeze_backbone": True}, 10, 224),
    "alexnet-width": ({"arch": "alexnet", "classifier_width": 1024}, 10, 100),
    "alexnet-width-frozen": (
        {"arch": "alexnet", "classifier_width": 256, "weights": "a.h5", "freeze_backbone": True},
        7,
        64,
    ),
    "vgg16-32px": ({"arch": "vgg16"}, 10, 32),
    "vgg16-width-frozen": (
        {"arch": "vgg16", "classifier_width": 512, "weights": "imagenet", "freeze_backbone": True},
        10,
        80,
    ),
    "resnet18": ({"arch": "resnet18"}, 10, 64),
    "resnet18-frozen": ({"arch": "resnet18", "weights": "r.h5", "freeze_backbone": True}, 5, 32),
}

SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {"optimizer": {"name": "sgd", "lr": 0.05}},
    "cosine-warmup": {"optimizer": {"name": "sgd", "lr": 0.1}, "schedule": {"name": "cosine", "warmup_epochs": 1.5}},
    "cosine": {"optimizer": {"name": "adam", "lr": 0.001}, "schedule": {"name": "cosine"}},
    "onecycle-sgd": {"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}, "schedule": {"name": "onecycle"}},
    "onecycle-adam": {"optimizer": {"name": "adam", "lr": 0.003}, "schedule": {"name": "onecycle"}},
    "onecycle-sgd-no-momentum": {
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0},
        "schedule": {"name": "onecycle"},
    },
}

OPTIMIZERS: dict[str, dict[str, Any]] = {
    "sgd-momentum-l2-onecycle": {
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.01},
        "schedule": {"name": "onecycle"},
    },
    "sgd-nesterov-cosine": {
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.8, "nesterov": True},
        "schedule": {"name": "cosine", "warmup_epochs": 1},
    },
    "sgd-plain": {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0, "weight_decay": 0.1}},
    "adam-l2-cosine": {"optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 0.1}, "schedule": {"name": "cosine"}},
    "adamw-onecycle": {
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.1},
        "schedule": {"name": "onecycle"},
    },
}
STEPS_PER_EPOCH, EPOCHS = 4, 3
SMOOTHING = {"none": 0.0, "smooth": 0.1}
POOLS = {"up-5-to-7": ((2, 5, 5, 3), 7), "down-13-to-6": ((2, 13, 13, 3), 6), "down-9x11-to-6": ((1, 9, 11, 4), 6)}


def train_spec(overrides: dict[str, Any]) -> TrainSpec:
    return TrainSpec.model_validate({"epochs": EPOCHS, **overrides})


def torchvision_forward_case(arch: str, size: int, source: int) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """A torchvision model with random weights, its weights under Keras names and layouts, and its logits
    for a uint8 batch (the torch trainer's eval pipeline, then the model in eval mode)."""
    torch.manual_seed(5)
    spec = ModelSpec(arch=arch, classifier_width=64 if arch == "alexnet" else None)
    model = torch_models.build(spec, 10).eval()
    for m in model.modules():  # BatchNorm with non-trivial statistics, so eval mode is checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    arrays: dict[str, np.ndarray] = {}
    mapping: dict[str, str] = {}
    kinds: dict[str, list[str]] = {}

    def conv(keras_path: str, torch_name: str, bias: bool = True) -> None:
        arrays[f"{torch_name}.weight"] = state[f"{torch_name}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
        kinds[keras_path] = ["weight", "bias"] if bias else ["weight"]
        if bias:
            arrays[f"{torch_name}.bias"] = state[f"{torch_name}.bias"]
        mapping[keras_path] = torch_name

    def dense(keras_path: str, torch_name: str, chw: tuple[int, int, int] | None = None) -> None:
        w = state[f"{torch_name}.weight"]
        if chw is not None:  # PyTorch flattens C,H,W; Keras H,W,C
            c, h, wd = chw
            w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        arrays[f"{torch_name}.weight"], arrays[f"{torch_name}.bias"] = w.T, state[f"{torch_name}.bias"]
        mapping[keras_path], kinds[keras_path] = torch_name, ["weight", "bias"]

    def bn(keras_path: str, torch_name: str) -> None:
        names = ["weight", "bias", "running_mean", "running_var"]
        for n in names:
            arrays[f"{torch_name}.{n}"] = state[f"{torch_name}.{n}"]
        mapping[keras_path], kinds[keras_path] = torch_name, names

    if arch == "alexnet":
        for i, k in zip((0, 3, 6, 8, 10), range(1, 6), strict=True):
            conv(f"features/conv{k}", f"features.{i}")
        dense("classifier/fc1", "classifier.1", chw=(256, 6, 6))
        dense("classifier/fc2", "classifier.4")
        dense("classifier/fc3", "classifier.6")
    else:
        conv("features/conv1", "conv1", bias=False)
        bn("features/bn1", "bn1")
        for stage in range(1, 5):
            for block in range(2):
                t, k = f"layer{stage}.{block}", f"features/layer{stage}_{block}"
                conv(f"{k}_conv1", f"{t}.conv1", bias=False)
                bn(f"{k}_bn1", f"{t}.bn1")
                conv(f"{k}_conv2", f"{t}.conv2", bias=False)
                bn(f"{k}_bn2", f"{t}.bn2")
                if f"{t}.downsample.0.weight" in state:
                    conv(f"{k}_down_conv", f"{t}.downsample.0", bias=False)
                    bn(f"{k}_down_bn", f"{t}.downsample.1")
        dense("fc", "fc")
    images = np.random.default_rng(1).integers(0, 256, (3, source, source, 3), dtype=np.uint8)
    pipeline = Pipeline(job_spec(arch=arch, dataset={"image_size": size}), torch.device("cpu"), channels_last=False)
    with torch.no_grad():
        logits = model(pipeline.eval_batch(torch.from_numpy(images))).numpy()
    arrays["images"] = images
    request = {"model": spec.model_dump(), "classes": 10, "size": size, "source": [source, source],
               "map": mapping, "kinds": kinds}  # fmt: skip
    return request, arrays, logits


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every TensorFlow-side value, from one subprocess; the inputs and torch-side references alongside."""
    tmp = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {
        "pre/images": rng.integers(0, 256, (6, 12, 10, 3), dtype=np.uint8),
        "pre/shift": rng.integers(-3, 4, (6, 2)).astype(np.int32),
        "pre/flip": np.array([True, False, True, False, True, False]),
        "opt/A": rng.normal(size=(6, 5)).astype(np.float32),
        "opt/b": rng.normal(size=6).astype(np.float32),
        "opt/p0": rng.normal(size=5).astype(np.float32),
        "loss/logits": rng.normal(size=(8, 10)).astype(np.float32) * 3,
        "loss/y": rng.integers(0, 10, 8).astype(np.int32),
    }
    arrays["pre/shift"][0] = [12, -15]  # beyond the border: reflection must wrap like grid_sample's
    for key, (shape, _) in POOLS.items():
        arrays[f"pool/{key}"] = rng.normal(size=shape).astype(np.float32)
    forward, torch_logits = {}, {}
    for key, (arch, size, source) in {"alexnet": ("alexnet", 70, 16), "resnet18": ("resnet18", 40, 20)}.items():
        request, case_arrays, torch_logits[key] = torchvision_forward_case(arch, size, source)
        forward[key] = request
        arrays.update({f"fw/{key}/{name}": a for name, a in case_arrays.items()})
    request = {
        "counts": {k: {"model": m, "classes": c, "size": s} for k, (m, c, s) in COUNT_CASES.items()},
        "preprocess": {"size": 36},
        "pools": {k: size for k, (_, size) in POOLS.items()},
        "schedules": {k: {"train": train_spec(t).model_dump(), "steps": STEPS_PER_EPOCH} for k, t in SCHEDULES.items()},
        "optimizers": {
            k: {"train": train_spec(t).model_dump(), "steps": STEPS_PER_EPOCH} for k, t in OPTIMIZERS.items()
        },
        "losses": SMOOTHING,
        "forward": forward,
    }
    (tmp / "request.json").write_text(json.dumps(request))
    np.savez(tmp / "arrays.npz", **arrays)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp / "request.json"), str(tmp / "arrays.npz"), str(tmp / "out.npz")],
        cwd=REPO, env=worker_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"TensorFlow probe: {time.monotonic() - started:.0f}s")
    return {"tf": dict(np.load(tmp / "out.npz")), "in": arrays, "torch_logits": torch_logits}


# --- the same network ------------------------------------------------------------------------------


def torch_counts(model_spec: dict[str, Any], classes: int) -> tuple[int, int]:
    spec = ModelSpec.model_validate(model_spec)
    model = torch_models.build(spec, classes)
    if spec.freeze_backbone:
        torch_models.freeze_backbone(model, spec.arch)
    return torch_models.parameter_counts(model)


@pytest.mark.runs
@pytest.mark.parametrize("case", list(COUNT_CASES))
def test_parameter_counts_equal_torchvision(probe: dict[str, Any], case: str) -> None:
    model_spec, classes, _ = COUNT_CASES[case]
    assert tuple(probe["tf"][f"counts/{case}"]) == torch_counts(model_spec, classes)


def test_parameter_counts_are_the_known_figures(probe: dict[str, Any]) -> None:
    counts = {k[len("counts/") :]: tuple(int(n) for n in v) for k, v in probe["tf"].items() if k.startswith("counts/")}
    assert counts["alexnet"] == counts["alexnet-63px"] == (57_044_810, 57_044_810)
    head = linear(9216, 4096) + linear(4096, 4096) + linear(4096, 10)
    assert counts["alexnet-frozen"] == (head, 57_044_810)
    assert counts["alexnet-width"][0] == ALEXNET_FEATURES + linear(9216, 1024) + linear(1024, 1024) + linear(1024, 10)
    vgg_head = linear(25088, 512) + linear(512, 512) + linear(512, 10)
    assert counts["vgg16-width-frozen"] == (vgg_head, VGG16_FEATURES + vgg_head)
    assert counts["vgg16-32px"][1] == sum(p.numel() for p in torchvision.models.vgg16(num_classes=10).parameters())
    assert counts["resnet18-frozen"][0] == linear(512, 5)


def test_same_logits_as_torchvision_with_the_same_weights(probe: dict[str, Any]) -> None:
    """torchvision's weights copied into the Keras model give the same logits: same layers, padding,
    pooling (incl. the adaptive pools at a size that is not 224) and input pipeline."""
    for key, expected in probe["torch_logits"].items():
        got = probe["tf"][f"fw/{key}"]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max(), err_msg=key)


def test_adaptive_pooling_is_torchs(probe: dict[str, Any]) -> None:
    for key, (_, size) in POOLS.items():
        x = torch.from_numpy(probe["in"][f"pool/{key}"]).permute(0, 3, 1, 2)
        expected = F.adaptive_avg_pool2d(x, size).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(probe["tf"][f"pool/{key}"], expected, rtol=1e-5, atol=1e-6, err_msg=key)


# --- the same input pipeline -----------------------------------------------------------------------


def test_crop_flip_resize_and_normalisation_match_the_torch_pipeline(probe: dict[str, Any]) -> None:
    data = probe["in"]
    pipeline = Pipeline(job_spec(arch="vgg16", dataset={"image_size": 36}), torch.device("cpu"), channels_last=False)
    images = torch.from_numpy(data["pre/images"])
    expected = pipeline.train_batch(
        images, torch.from_numpy(data["pre/shift"]).float(), torch.from_numpy(data["pre/flip"])
    )
    got = probe["tf"]["pre/out"]
    np.testing.assert_allclose(got, expected.permute(0, 2, 3, 1).numpy(), atol=2e-4, rtol=0)


def test_pretrained_vgg16_gets_keras_caffe_preprocessing(probe: dict[str, Any]) -> None:
    np.testing.assert_allclose(probe["tf"]["pre/caffe"], probe["tf"]["pre/caffe_ref"], atol=2e-3, rtol=0)


# --- the same optimizer, schedule and loss ---------------------------------------------------------


def torch_schedule(train: TrainSpec) -> tuple[list[float], list[float]]:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer([param], train)
    sched = make_scheduler(opt, train, STEPS_PER_EPOCH)
    key = "momentum" if train.optimizer.name == "sgd" else "betas"
    lrs, moms = [], []
    for _ in range(STEPS_PER_EPOCH * EPOCHS):  # what step k trains with, then the scheduler moves on
        group = opt.param_groups[0]
        lrs.append(group["lr"])
        moms.append(group[key] if key == "momentum" else group[key][0])
        opt.step()
        sched.step()
    return lrs, moms


@pytest.mark.parametrize("case", list(SCHEDULES))
def test_schedule_matches_torch_at_every_step(probe: dict[str, Any], case: str) -> None:
    lrs, moms = torch_schedule(train_spec(SCHEDULES[case]))
    np.testing.assert_allclose(probe["tf"][f"lr/{case}"][: len(lrs)], lrs, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(probe["tf"][f"mom/{case}"][: len(moms)], moms, rtol=1e-5)


@pytest.mark.parametrize("case", list(OPTIMIZERS))
def test_optimizer_follows_torch_update_rules(probe: dict[str, Any], case: str) -> None:
    """The same least-squares problem, the same steps under a schedule: the same parameters after."""
    data, train = probe["in"], train_spec(OPTIMIZERS[case])
    A, b = torch.from_numpy(data["opt/A"]), torch.from_numpy(data["opt/b"])
    p = torch.nn.Parameter(torch.from_numpy(data["opt/p0"]).clone())
    opt = make_optimizer([p], train)
    sched = make_scheduler(opt, train, STEPS_PER_EPOCH)
    for _ in range(STEPS_PER_EPOCH * EPOCHS):
        opt.zero_grad()
        (0.5 * ((A @ p - b) ** 2).sum()).backward()
        opt.step()
        sched.step()
    moved = np.abs(p.detach().numpy() - data["opt/p0"]).max()
    assert moved > 1e-2  # the comparison below is not between two unmoved vectors
    np.testing.assert_allclose(probe["tf"][f"opt/{case}"], p.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_cross_entropy_with_label_smoothing_is_torchs(probe: dict[str, Any]) -> None:
    logits, y = torch.from_numpy(probe["in"]["loss/logits"]), torch.from_numpy(probe["in"]["loss/y"]).long()
    for key, smoothing in SMOOTHING.items():
        expected = F.cross_entropy(logits, y, label_smoothing=smoothing).item()
        assert float(probe["tf"][f"loss/{key}"]) == pytest.approx(expected, rel=1e-5)


# --- the same run, end to end ----------------------------------------------------------------------


@pytest.mark.slow
def test_same_spec_on_digits_trains_alike_in_both_frameworks(tmp_path: Path) -> None:
    """AlexNet from scratch on digits at 64 px: both learn (>= 90% test accuracy), within 5 points; the same
    result fields, parameter counts, learning rates and TensorBoard tags. (It is also the test that each
    trainer learns at all.)"""
    overrides = {
        "model": {"classifier_width": 256, "dropout": 0.2},
        "dataset": {"name": "digits", "image_size": 64, "limit": None},
        "train": {
            "epochs": 5,
            "batch_size": 32,
            "optimizer": {"name": "adam", "lr": 1e-3},
            "schedule": {"name": "onecycle"},
            "augment": {"random_crop": False, "horizontal_flip": False},  # a mirrored digit is another shape
        },
    }
    results: dict[str, RunResult] = {}
    tags: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for framework in ("tensorflow", "torch"):
        paths = make_job(tmp_path / framework, framework=framework, name=f"digits-{framework}", **overrides)
        started = time.monotonic()
        proc = run_worker(paths, tmp_path / "cache", timeout=900)
        assert proc.returncode == 0, proc.stdout
        results[framework] = RunResult.model_validate_json(paths.result.read_text())
        tags[framework] = scalars(paths.tb)
        print(f"{framework}: {results[framework].final_test_accuracy:.2%} in {time.monotonic() - started:.0f}s")
    tf_run, torch_run = results["tensorflow"], results["torch"]
    assert tf_run.final_test_accuracy >= 0.90 and torch_run.final_test_accuracy >= 0.90
    assert abs(tf_run.final_test_accuracy - torch_run.final_test_accuracy) <= 0.05
    assert tf_run.environment.framework == "tensorflow" and torch_run.environment.framework == "torch"
    assert tf_run.dataset_sizes == torch_run.dataset_sizes and tf_run.class_names == torch_run.class_names
    assert (tf_run.trainable_parameters, tf_run.total_parameters) == (
        torch_run.trainable_parameters,
        torch_run.total_parameters,
    )
    for a, b in zip(tf_run.epochs, torch_run.epochs, strict=True):
        assert a.epoch == b.epoch and a.lr == pytest.approx(b.lr, rel=1e-4)
    assert set(tags["tensorflow"]) == set(tags["torch"]) >= set(TAGS.values())
    for tag in TAGS.values():
        assert [s for s, _ in tags["tensorflow"][tag]] == [s for s, _ in tags["torch"][tag]] == [1, 2, 3, 4, 5]
