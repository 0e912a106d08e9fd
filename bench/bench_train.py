"""Training throughput: the study's original data path against gridrun's PyTorch trainer.

Both train torchvision AlexNet on the same CIFAR-shaped synthetic images resized to --size:
  study   : per-image PIL resize in DataLoader workers, float32, batch 64 (how the study ran);
  gridrun : the real worker (`python -m runner.train.worker`) on a synthetic job: uint8 data on the
            device, batched crop/flip/resize there, bf16 autocast on CUDA, --batch.
Prints images/s of each and the ratio. On a CPU the figures are small; run it on a GPU for the
numbers DESIGN.md quotes (study style ~3,800 img/s, GPU-resident bf16 ~39,000 on one H200).

    python bench/bench_train.py [--size 224] [--batch 512] [--images 4096] [--workers 8]
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

from runner.store.layout import JobPaths, write_json  # noqa: E402
from schemas import JobSpec, SpecFile  # noqa: E402


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
    for step, (x, y) in enumerate(loader):
        if step == 2:  # leave out start-up: worker spawn, cuDNN autotune
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


def gridrun_trainer(size: int, images: int, batch: int) -> tuple[float, str]:
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "framework": "torch",
            "model": {"arch": "alexnet"},
            "dataset": {"name": "synthetic", "image_size": size, "synthetic_size": images + 400, "limit": images},
            "train": {"epochs": 2, "batch_size": batch, "eval_batch_size": 1024, "mixed_precision": True},
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


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=224 if cuda else 96, help="image side in pixels")
    p.add_argument("--images", type=int, default=8192 if cuda else 320, help="training images per epoch")
    p.add_argument("--batch", type=int, default=512 if cuda else 64, help="gridrun's batch size")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="study-style loader workers")
    args = p.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    study = study_style(args.size, args.images, args.workers, device)
    ours, name = gridrun_trainer(args.size, args.images, args.batch)
    print(f"device: {name}; AlexNet at {args.size}px, {args.images} images/epoch")
    print(f"study-style (PIL resize in {args.workers} workers, fp32, batch 64): {study:10,.0f} images/s")
    print(f"gridrun torch trainer (on-device data, bf16 on CUDA, batch {args.batch}):  {ours:10,.0f} images/s")
    print(f"ratio gridrun / study-style: {ours / study:.2f}x")


if __name__ == "__main__":
    main()
