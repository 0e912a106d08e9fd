"""Training throughput, each as a ratio measured side by side in one run:

  torch   : gridrun's PyTorch worker against a bare training loop on the same preloaded tensors (same network,
            batch, threads, optimizer; augmentation off in both), bench/gpu_check.py's loop;
  keras   : gridrun's TensorFlow worker against a bare Keras `fit` of the same network on the same images;
  data    : the study's original data path (per-image PIL resize in DataLoader workers, float32, batch 64) against
            gridrun's PyTorch worker (uint8 data on the device, batched crop/flip/resize there, bf16 on CUDA).
A ratio near 1 says gridrun's trainer costs nothing beyond the framework; the data ratio says what its data path
gains. On a CPU the figures are small (AlexNet at 64 px); on a GPU they are the study's (224 px).

    python bench/bench_train.py [--only torch|keras|data] [--size 224] [--batch 512] [--images 4096]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gpu_check  # noqa: E402

from runner.store.layout import JobPaths, write_json  # noqa: E402
from schemas import JobSpec, RunResult, SpecFile  # noqa: E402


class PilImages(Dataset):
    """CIFAR-shaped uint8 images served one at a time as PIL images, as torchvision's CIFAR10 does."""

    def __init__(self, n: int, transform) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        self.y = rng.integers(0, 10, n)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def study_style(size: int, images: int, workers: int, device: torch.device) -> float:
    tf = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    loader = DataLoader(PilImages(images, tf), batch_size=64, shuffle=True, num_workers=workers, drop_last=True)
    model = torchvision.models.alexnet(num_classes=10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    seen, t0 = 0, None
    skip = min(2, len(loader) - 1)
    if skip < 0:
        raise SystemExit(f"--images {images}: the study-style loader needs one batch of 64 at least")
    for step, (x, y) in enumerate(loader):
        if step == skip:  # leave out start-up: worker spawn, cuDNN autotune
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, seen = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def gridrun_trainer(size: int, images: int, batch: int, threads: int) -> tuple[float, str]:
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "framework": "torch",
            "model": {"arch": "alexnet"},
            "dataset": {"name": "synthetic", "image_size": size, "synthetic_size": images + 400, "limit": images},
            "train": {"epochs": 2, "batch_size": batch, "eval_batch_size": 1024, "mixed_precision": True},
            "resources": {"cpus": threads},  # as many threads as the study's loader has workers and torch cores
            "executor": "process",
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        paths = JobPaths.of(Path(tmp), "bench", "bench")
        write_json(
            paths.spec,
            SpecFile(suite="bench", job="bench", spec_hash="bench", code_version="bench", declared=spec, spec=spec),
        )
        proc = subprocess.run(
            [sys.executable, "-m", "runner.train.worker", str(paths.dir), "--cache", tmp],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stdout + proc.stderr)
        result = json.loads(paths.result.read_text())
    # The second epoch: the first pays for cuDNN autotuning and allocator warm-up.
    return result["epochs"][-1]["images_per_second"], result["environment"]["device_name"]


def data_paths(args: argparse.Namespace, device: torch.device) -> None:
    study = study_style(args.size, args.images, args.workers, device)
    ours, name = gridrun_trainer(args.size, args.images, args.batch, args.threads)
    print(f"data: device {name}; AlexNet at {args.size}px, {args.images} images/epoch")
    print(f"  study-style (PIL resize in {args.workers} workers, fp32, batch 64): {study:10,.0f} images/s")
    print(f"  gridrun torch worker (on-device data, bf16 on CUDA, batch {args.batch}): {ours:10,.0f} images/s")
    print(f"  ratio gridrun / study-style data path: {ours / study:.2f}x")


def same_job(framework: str, args: argparse.Namespace) -> JobSpec:
    """The job both sides train: the twin AlexNet on synthetic images, no augmentation, every core's thread."""
    return JobSpec.model_validate({
        "name": f"bench-{framework}", "framework": framework,
        "model": {"arch": "alexnet", "classifier_width": args.width},
        "dataset": {"name": "synthetic", "image_size": args.size, "synthetic_size": args.images + 200,
                    "limit": args.images, "val_fraction": 0.02, "test_fraction": 0.02},
        "train": {"epochs": args.epochs, "batch_size": args.batch, "eval_batch_size": 256, "optimizer": gpu_check.SGD,
                  "augment": {"random_crop": False, "horizontal_flip": False}, "mixed_precision": True},
        "resources": {"gpus": 1 if torch.cuda.is_available() else 0, "cpus": args.threads},
        "executor": "process",
    })  # fmt: skip


def worker_speed(spec: JobSpec, root: Path) -> tuple[float, RunResult]:
    run = gpu_check.start_worker(gpu_check.write_job(root, spec), root / "cache")
    result = gpu_check.finish_worker(run, timeout=1800)
    return gpu_check.steady([e.images_per_second for e in result.epochs]), result


def torch_ratio(args: argparse.Namespace, device: torch.device) -> None:
    spec = same_job("torch", args)
    with tempfile.TemporaryDirectory() as tmp:
        ours, result = worker_speed(spec, Path(tmp))
        torch.set_num_threads(spec.resources.threads)  # the worker's own
        bare = gpu_check.bare_loop(spec, gpu_check.splits_of(spec, Path(tmp) / "cache"), args.epochs, device)
    if bare["trainable_parameters"] != result.trainable_parameters:
        raise SystemExit(f"the bare loop's network is not the worker's: {bare} against {result.trainable_parameters}")
    plain = bare["images_per_second"]
    print(f"torch: AlexNet {args.size}px, batch {args.batch}, {args.images} images, "
          f"{spec.resources.threads} thread(s), {result.environment.device}: worker {ours:,.0f} images/s, "
          f"bare loop {plain:,.0f}: ratio {ours / plain:.2f}")  # fmt: skip


def keras_ratio(args: argparse.Namespace) -> None:
    """In a process of its own: TensorFlow's runtime, once started, keeps its threads and devices."""
    import numpy as np
    import tensorflow as tf

    from runner.train import data as gridrun_data
    from runner.train import tf_models

    spec = same_job("tensorflow", args)
    threads = spec.resources.threads
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        ours, result = worker_speed(spec, Path(tmp))
        splits = gridrun_data.load(spec.dataset, Path(tmp) / "cache")
    keras = tf.keras
    bf16 = bool(tf.config.list_physical_devices("GPU"))
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    keras.utils.set_random_seed(0)
    model = tf_models.build(spec.model, splits.num_classes, spec.dataset.image_size, splits.train_x.shape[1:3])
    trainable, _ = tf_models.parameter_counts(model)
    if trainable != result.trainable_parameters:
        raise SystemExit(
            f"the bare fit's network is not the worker's: {trainable} against {result.trainable_parameters}"
        )
    opt = gpu_check.SGD
    model.compile(
        optimizer=keras.optimizers.SGD(opt["lr"], momentum=opt["momentum"], weight_decay=opt["weight_decay"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    n = (len(splits.train_y) // args.batch) * args.batch
    x = splits.train_x[:n]
    inputs = (x, np.zeros((n, 2), np.int32), np.zeros((n,), bool))  # the model's shift and flip inputs: none
    ds = tf.data.Dataset.from_tensor_slices((inputs, splits.train_y[:n].astype(np.int32))).batch(args.batch)

    class Speed(keras.callbacks.Callback):
        def __init__(self) -> None:
            self.per_epoch: list[float] = []

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None) -> None:
            self.per_epoch.append(n / (time.perf_counter() - self.t0))

    speed = Speed()
    model.fit(ds.prefetch(tf.data.AUTOTUNE), epochs=args.epochs, verbose=0, callbacks=[speed])
    bare = gpu_check.steady(speed.per_epoch)
    print(f"keras: AlexNet {args.size}px, batch {args.batch}, {args.images} images, {threads} thread(s), "
          f"{result.environment.device}: worker {ours:,.0f} images/s, bare fit {bare:,.0f}: "
          f"ratio {ours / bare:.2f}")  # fmt: skip


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("torch", "keras", "data"), help="one of the three (default: each in turn)")
    p.add_argument("--size", type=int, default=224 if cuda else 64, help="image side in pixels (AlexNet: 63 at least)")
    p.add_argument("--images", type=int, default=8192 if cuda else 1024, help="training images per epoch")
    p.add_argument("--batch", type=int, default=512 if cuda else 32, help="gridrun's batch size")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each side; the first is not counted")
    p.add_argument("--width", type=int, default=None if cuda else 256, help="classifier_width (default 4096 on a GPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of both sides")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="study-style loader workers")
    args = p.parse_args()
    if args.size < 63:
        raise SystemExit(f"--size {args.size}: AlexNet takes 63 px at least. Fix: --size 64")
    device = torch.device("cuda" if cuda else "cpu")
    if args.only == "torch":
        torch_ratio(args, device)
    elif args.only == "keras":
        keras_ratio(args)
    elif args.only == "data":
        data_paths(args, device)
    else:  # each in its own process: TensorFlow and PyTorch do not share one well
        for part in ("torch", "keras", "data"):
            subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", part], check=True)


if __name__ == "__main__":
    main()
