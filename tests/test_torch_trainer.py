"""The PyTorch trainer, run for real: `python -m runner.train.worker` on job folders built by jobhelp."""

import json
from pathlib import Path

import pytest
import torch
import torchvision
from jobhelp import job_spec, kill_after_first_epoch, make_job, resume_and_check, run_worker, scalars, spec_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from runner.store.layout import write_json
from runner.train import torch_models
from runner.train.common import TAGS
from runner.train.torch_trainer import Pipeline
from runner.train.weights import imagenet_path
from schemas import ModelSpec, RunResult

pytestmark = pytest.mark.runs  # starts Ray or a worker that trains: not in `make test-fast`


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(n_in: int, n_out: int, k: int) -> int:
    return n_in * n_out * k * k + n_out


# torchvision AlexNet, counted by hand: five convolutions, then 256*6*6 -> width -> width -> classes.
ALEXNET_FEATURES = conv(3, 64, 11) + conv(64, 192, 5) + conv(192, 384, 3) + conv(384, 256, 3) + conv(256, 256, 3)


def alexnet_classifier(width: int = 4096, classes: int = 10) -> int:
    return linear(256 * 6 * 6, width) + linear(width, width) + linear(width, classes)


def counts(model: torch.nn.Module) -> tuple[int, int]:
    return torch_models.parameter_counts(model)


# --- models ------------------------------------------------------------------------------------


def test_alexnet_parameter_counts() -> None:
    assert ALEXNET_FEATURES + alexnet_classifier() == 57_044_810
    model = torch_models.build(ModelSpec(arch="alexnet"), 10)
    assert counts(model) == (57_044_810, 57_044_810)

    model = torch_models.build(ModelSpec(arch="alexnet", weights="imagenet", freeze_backbone=True), 10)
    torch_models.freeze_backbone(model, "alexnet")
    assert counts(model) == (alexnet_classifier(), 57_044_810)

    model = torch_models.build(ModelSpec(arch="alexnet", classifier_width=256, dropout=0.3), 7)
    assert counts(model) == (ALEXNET_FEATURES + alexnet_classifier(256, 7),) * 2
    assert [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]


def test_vgg16_and_resnet18_match_torchvision_with_a_new_head() -> None:
    assert counts(torch_models.build(ModelSpec(arch="vgg16"), 10)) == counts(torchvision.models.vgg16(num_classes=10))
    ours = torch_models.build(ModelSpec(arch="resnet18"), 10)
    assert counts(ours) == counts(torchvision.models.resnet18(num_classes=10))
    torch_models.freeze_backbone(ours, "resnet18")
    assert counts(ours)[0] == linear(512, 10)
    vgg = torch_models.build(ModelSpec(arch="vgg16", weights="x.pth", freeze_backbone=True, classifier_width=512), 10)
    torch_models.freeze_backbone(vgg, "vgg16")
    assert counts(vgg)[0] == linear(512 * 7 * 7, 512) + linear(512, 512) + linear(512, 10)


# --- the device data path ------------------------------------------------------------------------


def pipeline() -> Pipeline:
    return Pipeline(job_spec(dataset={"image_size": 64}), torch.device("cpu"), channels_last=False)


def test_train_transform_without_shift_or_flip_is_the_eval_resize() -> None:
    p = pipeline()
    x = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    zero, no = torch.zeros(5, 2), torch.zeros(5, dtype=torch.bool)
    torch.testing.assert_close(p.train_batch(x, zero, no), p.eval_batch(x), atol=1e-4, rtol=0)
    # A flip is the mirror image of the resized batch.
    flipped = p.train_batch(x, zero, torch.ones(5, dtype=torch.bool))
    torch.testing.assert_close(flipped, p.eval_batch(x).flip(3), atol=1e-4, rtol=0)


def test_train_shift_is_a_translation_in_source_pixels() -> None:
    p = Pipeline(job_spec(dataset={"image_size": 32}, model={"arch": "vgg16"}), torch.device("cpu"), False)
    x = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    shift = torch.tensor([[3.0, 0.0], [0.0, -2.0]])
    out, ref = p.train_batch(x, shift, torch.zeros(2, dtype=torch.bool)), p.eval_batch(x)
    torch.testing.assert_close(out[0, :, :, :-3], ref[0, :, :, 3:], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1, :, 2:, :], ref[1, :, :-2, :], atol=1e-4, rtol=0)
    # The border comes from reflection, not from black padding.
    assert not torch.allclose(out[0, :, :, -3:], torch.zeros_like(out[0, :, :, -3:]))


def test_epoch_randomness_is_seeded_and_bounded() -> None:
    p = pipeline()
    a = p.epoch_randomness(1000, (32, 32), seed=0, epoch=3, device=torch.device("cpu"))
    b = p.epoch_randomness(1000, (32, 32), seed=0, epoch=3, device=torch.device("cpu"))
    c = p.epoch_randomness(1000, (32, 32), seed=0, epoch=4, device=torch.device("cpu"))
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    assert sorted(a[0].tolist()) == list(range(1000))
    shifts = a[1]
    assert shifts.min() == -4 and shifts.max() == 4 and torch.equal(shifts, shifts.round())  # 0.125 * 32 px
    assert 400 < int(a[2].sum()) < 600


# --- whole runs through the worker -----------------------------------------------------------------


def hparams_values(tb: Path) -> dict[str, object]:
    acc = EventAccumulator(str(tb))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    data = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    out = {}
    for key, value in data.session_start_info.hparams.items():
        out[key] = value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
    return out


def test_synthetic_run_writes_a_full_result_and_tensorboard(tmp_path: Path) -> None:
    paths = make_job(
        tmp_path,
        dataset={"limit": 300, "synthetic_size": 600},
        train={"epochs": 2, "mixed_precision": True, "compile": True, "schedule": {"name": "onecycle"}},
    )
    proc = run_worker(paths, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout
    assert "compile: skipped on cpu" in proc.stdout
    assert "epoch 2/2" in proc.stdout

    result = RunResult.model_validate_json(paths.result.read_text())
    assert result.job == "job" and result.suite == "test-suite"
    assert result.dataset_sizes["train"] == 300
    assert [e.epoch for e in result.epochs] == [1, 2]
    for e in result.epochs:
        assert e.train_loss > 0 and 0 <= e.train_accuracy <= 1 and 0 <= e.val_accuracy <= 1
        assert e.epoch_seconds > 0 and e.images_per_second > 0
    assert result.epochs[-1].lr < result.spec.train.optimizer.lr / 100  # onecycle anneals to near zero
    assert result.trainable_parameters == result.total_parameters == 57_044_810
    assert len(result.confusion_matrix) == 10 and sum(map(sum, result.confusion_matrix)) == result.dataset_sizes["test"]
    diagonal = sum(result.confusion_matrix[i][i] for i in range(10))
    assert diagonal / result.dataset_sizes["test"] == pytest.approx(result.final_test_accuracy)
    assert sum(c.support for c in result.per_class_accuracy) == result.dataset_sizes["test"]
    assert result.best_epoch in (1, 2) and result.resumed_from_epoch is None
    assert result.timing.train_seconds > 0 and result.timing.eval_seconds > 0
    assert result.timing.total_seconds >= result.timing.train_seconds + result.timing.eval_seconds
    env = result.environment
    # resources.cpus 1: one compute and one inter-op thread, whatever the machine has; no cgroup quota as a process.
    assert (env.limits.cpu_threads, env.limits.interop_threads, env.limits.gpu_memory_fraction) == (1, 1, None)
    assert "limits: 1 compute thread(s), 1 inter-op" in proc.stdout
    assert (env.framework, env.device, env.mixed_precision) == ("torch", "cpu", "off")  # autocast on CUDA only
    assert env.framework_version == torch.__version__ and env.libraries["torchvision"] == torchvision.__version__

    progress = json.loads(paths.progress.read_text())
    assert (progress["epoch"], progress["epochs"]) == (2, 2)
    assert paths.checkpoint("last", ".pt").is_file() and paths.checkpoint("best", ".pt").is_file()

    values = scalars(paths.tb)
    assert set(TAGS.values()) <= set(values)
    for key, tag in TAGS.items():
        assert [s for s, _ in values[tag]] == [1, 2]
        assert values[tag][1][1] == pytest.approx(getattr(result.epochs[1], key), rel=1e-5)
    hp = hparams_values(paths.tb)
    assert hp["arch"] == "alexnet" and hp["framework"] == "torch" and hp["epochs"] == 2


def test_kill_and_resume_records_every_epoch(tmp_path: Path) -> None:
    epochs = 4
    # A narrow classifier keeps each epoch short; the kill lands between epochs 1 and 4 all the same.
    paths = make_job(tmp_path, model={"classifier_width": 256}, dataset={"limit": 160}, train={"epochs": epochs})
    kill_after_first_epoch(paths, tmp_path / "cache", tmp_path / "first.log")
    k = torch.load(paths.checkpoint("last", ".pt"), weights_only=True)["epoch"]
    assert 1 <= k < epochs
    assert not paths.result.exists()

    resume_and_check(paths, tmp_path / "cache", k, epochs)
    assert torch.load(paths.checkpoint("last", ".pt"), weights_only=True)["epoch"] == epochs


def test_a_checkpoint_of_another_spec_is_not_resumed(tmp_path: Path) -> None:
    paths = make_job(tmp_path, model={"classifier_width": 64}, dataset={"limit": 64}, spec_hash="old-hash")
    assert run_worker(paths, tmp_path / "cache").returncode == 0
    write_json(paths.spec, spec_file(paths.read_spec().spec, spec_hash="new-hash"))
    proc = run_worker(paths, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout
    assert "is from another spec: starting fresh" in proc.stdout
    result = RunResult.model_validate_json(paths.result.read_text())
    assert result.resumed_from_epoch is None and result.spec_hash == "new-hash"
    assert torch.load(paths.checkpoint("last", ".pt"), weights_only=True)["spec_hash"] == "new-hash"
    assert len(EventAccumulator(str(paths.tb)).Reload().Scalars(TAGS["val_accuracy"])) == 1


# --- initial weights -------------------------------------------------------------------------------


def saved_alexnet(path: Path, seed: int = 123) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = torchvision.models.alexnet().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def test_weights_from_a_local_file_load_into_a_frozen_backbone(tmp_path: Path) -> None:
    file = tmp_path / "my weights" / "alexnet.pth"
    state = saved_alexnet(file)
    paths = make_job(tmp_path, dataset={"limit": 64}, model={"weights": str(file), "freeze_backbone": True})
    proc = run_worker(paths, tmp_path / "cache")
    assert proc.returncode == 0, proc.stdout
    # All 16 tensors but the 1000-class final layer: the hidden classifier layers fit and load too.
    assert f"loaded 14 tensors from {file}" in proc.stdout
    assert "fresh head tensors: classifier.6.bias, classifier.6.weight" in proc.stdout
    trained = torch.load(paths.checkpoint("last", ".pt"), weights_only=True)["model"]
    for key, value in state.items():
        if key.startswith("features."):
            assert torch.equal(trained[key], value), key  # frozen: exactly the file's tensors
    assert not torch.equal(trained["classifier.1.weight"], state["classifier.1.weight"])  # the head trained
    assert trained["classifier.6.weight"].shape == (10, 4096)
    result = RunResult.model_validate_json(paths.result.read_text())
    assert result.trainable_parameters == alexnet_classifier() and result.total_parameters == 57_044_810


def test_imagenet_weights_load_from_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    state = saved_alexnet(imagenet_path("torch", "alexnet", cache), seed=7)
    paths = make_job(tmp_path, dataset={"limit": 64}, model={"weights": "imagenet", "classifier_width": 64})
    proc = run_worker(paths, cache)
    assert proc.returncode == 0, proc.stdout
    assert "loaded 10 tensors" in proc.stdout  # features only: a 64-wide classifier cannot take 4096-wide layers
    first = torch.load(paths.checkpoint("last", ".pt"), weights_only=True)["model"]["features.0.weight"]
    # Fine-tuned one epoch from the file: close to it, far from a random init.
    assert (first - state["features.0.weight"]).abs().max() < 0.05
    assert RunResult.model_validate_json(paths.result.read_text()).trainable_parameters == (
        ALEXNET_FEATURES + alexnet_classifier(64)
    )


def assert_user_error(proc, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stdout
    assert "Traceback" not in proc.stdout
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stdout
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_missing_imagenet_weights_name_the_path(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    paths = make_job(tmp_path, dataset={"limit": 32}, model={"weights": "imagenet"})
    proc = run_worker(paths, cache)
    assert_user_error(proc, str(imagenet_path("torch", "alexnet", cache)), "alexnet-owt-7be5be79.pth", "Fix:")
    assert not paths.result.exists()


def test_missing_weights_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "weights.pt"
    paths = make_job(tmp_path, dataset={"limit": 32}, model={"weights": str(missing)})
    assert_user_error(run_worker(paths, tmp_path / "cache"), f"weights file {missing} does not exist", "Fix:")


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    file = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), file)
    paths = make_job(tmp_path, dataset={"limit": 32}, model={"weights": str(file)})
    assert_user_error(
        run_worker(paths, tmp_path / "cache"),
        f"weights file {file} does not fit torchvision alexnet",
        "keys unexpected (bn1.bias",
        "Fix: give a state dict saved from torchvision.models.alexnet()",
    )


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "notes.pt"
    file.write_text("not a checkpoint")
    paths = make_job(tmp_path, dataset={"limit": 32}, model={"weights": str(file)})
    assert_user_error(run_worker(paths, tmp_path / "cache"), f"weights file {file} cannot be read", "Fix:")


# --- real data ---------------------------------------------------------------------------------------
