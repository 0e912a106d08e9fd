"""The PyTorch trainer: `train(ctx) -> RunResult`.

Airbench-style data path: each split's uint8 images are moved to the device once; a batch is an
index slice of a per-epoch seeded permutation; crop, flip, resize and normalisation are batched
tensor ops on the device. Imports neither Ray nor Docker.
"""

import math
import platform
from contextlib import AbstractContextManager, nullcontext, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runner.store.layout import atomic_path
from runner.train import torch_models, torch_zoo
from runner.train.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NO_DEVICE_FIX,
    History,
    TrainContext,
    build_result,
    collective_timeout_s,
    confusion_matrix,
    environment,
    gpu_unusable,
)
from runner.train.epochs import run_epochs
from schemas import JobSpec, RunResult, TrainSpec


def pick_device(ctx: TrainContext) -> torch.device:
    """cuda > mps > cpu; a job that reserved GPUs gets one, or the CPU only as its declared fallback."""
    if torch.cuda.is_available():
        # An explicit index: set_per_process_memory_fraction refuses a bare "cuda". The executor
        # makes the GPUs the scheduler assigned the only visible ones, so 0 is the first of them;
        # a data-parallel replica takes the one of its rank on the node.
        return torch.device("cuda", ctx.replica.local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    if ctx.spec.resources.gpus > 0:
        gpu_unusable(ctx, f"torch {torch.__version__}", *no_cuda_cause())
    return torch.device("cpu")


def no_cuda_cause() -> tuple[str, str]:
    """Why torch has no CUDA device, in torch's own words, and the fix."""
    try:
        torch.cuda.init()  # raises with the reason: no driver, no device visible, a build without CUDA
        said = "torch.cuda.is_available() is false"
    except (RuntimeError, AssertionError) as e:
        # Its first sentence: "Found no NVIDIA driver on your system", "No CUDA GPUs are available", ...
        said = str(e).strip().split(". ")[0].rstrip(".") or type(e).__name__
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"a CPU-only build of torch ({said})", (
            "install a CUDA build of torch here (PyPI's Linux x86-64 wheels are one: pip install torch), "
            "or run the job in gridrun's torch image (--executor docker)"
        )
    return f"CUDA {torch.version.cuda} build: {said}", NO_DEVICE_FIX


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = ""
    return f"{model or platform.machine()} ({torch.get_num_threads()} threads)"


class Pipeline:
    """uint8 NHWC images on the device -> normalised float NCHW batches of the model's input size."""

    def __init__(
        self, spec: JobSpec, device: torch.device, channels_last: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD
    ) -> None:
        self.size = spec.dataset.image_size
        self.augment = spec.train.augment
        self.channels_last = channels_last
        # ImageNet's statistics unless the model's weights were trained on others (some timm models).
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # Normalising at the source resolution (e.g. 32 px) is cheaper than after the resize, and
        # bilinear resampling is linear, so the order does not change the result.
        return (x.permute(0, 3, 1, 2).float() - self.mean) / self.std

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def eval_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Resize only; bilinear without antialias, as TensorFlow's resize does by default."""
        x = self._normalise(x)
        if x.shape[2:] != (self.size, self.size):  # at its own size, bilinear resampling is the identity
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
        return self._layout(x)

    def train_batch(self, x: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Random crop (as a translation by `shift` source pixels), flip and resize in one grid_sample.

        One affine grid does all three, so the upscaled image is never materialised twice. With
        'reflection' padding and align_corners=False, a zero shift without flip gives exactly
        eval_batch's F.interpolate result: train and eval see the same geometry.
        """
        if not (self.augment.random_crop and self.augment.crop_padding > 0) and not self.augment.horizontal_flip:
            return self.eval_batch(x)  # the same geometry by interpolate, much cheaper than grid_sample on a CPU
        x = self._normalise(x)
        n, _, h, w = x.shape
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
        theta[:, 1, 1] = 1.0
        # Normalised coordinates span 2 over the side: a shift of d pixels is 2d / side.
        theta[:, 0, 2] = shift[:, 0] * (2.0 / w)
        theta[:, 1, 2] = shift[:, 1] * (2.0 / h)
        grid = F.affine_grid(theta, [n, 3, self.size, self.size], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return self._layout(x)

    def epoch_randomness(
        self, n: int, side: tuple[int, int], seed: int, epoch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Permutation, shifts (pixels, x and y) and flips of one epoch, from a (seed, epoch) seed.

        Drawn on the CPU so that a resumed run and a run on another device see the same batches.
        """
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed % 2**32, epoch]).generate_state(1)[0]))
        perm = torch.randperm(n, generator=g)
        shift = torch.zeros(n, 2)
        if self.augment.random_crop and self.augment.crop_padding > 0:
            pad = torch.tensor([round(self.augment.crop_padding * side[1]), round(self.augment.crop_padding * side[0])])
            shift = (torch.rand(n, 2, generator=g) * (2 * pad + 1)).floor() - pad  # integers in [-pad, pad]
        flip = torch.zeros(n, dtype=torch.bool)
        if self.augment.horizontal_flip:
            flip = torch.rand(n, generator=g) < 0.5
        return perm.to(device), shift.to(device), flip.to(device)


def make_optimizer(params: list[nn.Parameter], train: TrainSpec, fused: bool = False) -> torch.optim.Optimizer:
    """SGD, Adam or AdamW; `fused` (CUDA only) updates all parameters in one kernel."""
    opt = train.optimizer
    if opt.name == "sgd":  # the schema refuses nesterov without momentum, which torch.optim.SGD would raise on
        return torch.optim.SGD(
            params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay, fused=fused
        )
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(params, lr=opt.lr, weight_decay=opt.weight_decay, fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, train: TrainSpec, steps_per_epoch: int):
    """Per-step schedule: stepped after every optimizer step."""
    total = steps_per_epoch * train.epochs
    name = train.schedule.name
    if name == "onecycle":
        # Cycling momentum needs a momentum to cycle: SGD without momentum has none.
        cycle = train.optimizer.name != "sgd" or train.optimizer.momentum > 0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=train.optimizer.lr, total_steps=total, cycle_momentum=cycle
        )
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = min(total, round(train.schedule.warmup_epochs * steps_per_epoch))

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested checkpoint dict: about its size on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save, atomically: a kill never leaves half a checkpoint; a full disk is said before writing."""
    with atomic_path(path, size_hint=tensor_bytes(obj)) as tmp:
        torch.save(obj, tmp)


class Run:
    """One training run's state: model, data on the device, optimizer, schedule and history."""

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        spec = self.spec = ctx.spec
        self.device = pick_device(ctx)
        cuda = self.device.type == "cuda"
        self.replica = ctx.replica
        if self.replica.world > 1:
            self.backend = "nccl" if cuda else "gloo"
            if cuda:
                torch.cuda.set_device(self.device)
            # A replica that died leaves the others waiting in a collective: the timeout fails the attempt.
            dist.init_process_group(self.backend, timeout=timedelta(seconds=collective_timeout_s()))
        torch.set_num_threads(spec.resources.threads)
        with suppress(RuntimeError):  # allowed once, before torch's first parallel work
            torch.set_num_interop_threads(spec.resources.threads)
        self.limits = ctx.limits(torch.get_num_threads(), torch.get_num_interop_threads(), cuda)
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
            if ctx.gpu_fraction < 1:
                torch.cuda.set_per_process_memory_fraction(ctx.gpu_fraction, self.device)
                total = torch.cuda.get_device_properties(self.device).total_memory // 2**20
                limit = int(total * ctx.gpu_fraction)
                ctx.log(f"gpu 0: memory limited to {limit} MiB ({ctx.gpu_fraction:g} of {total} MiB)")
        # bf16 needs no loss scaling; autocast only on CUDA (CPU autocast is slower than fp32 here).
        self.bf16 = cuda and spec.train.mixed_precision and torch.cuda.is_bf16_supported()

        torch.manual_seed(spec.train.seed)
        self.built = torch_models.make(spec, ctx.splits.num_classes, ctx.cache, ctx.log)
        self.model = self.built.model
        self.trainable, self.total = torch_models.parameter_counts(self.model)
        self.model.to(self.device, memory_format=torch.channels_last if cuda else torch.preserve_format)
        self.eval_net: nn.Module = self.model
        if spec.train.compile:
            if cuda:
                self.eval_net = torch.compile(self.model)
            else:
                ctx.log(f"compile: skipped on {self.device.type}; torch.compile is used on CUDA only")
        self.net = self.eval_net
        if self.replica.world > 1:
            # Gradients are averaged over the replicas in every step; evaluation runs on the bare model (a DDP
            # forward is itself a collective, and each replica evaluates its own slice of a split).
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)
            if spec.train.compile and cuda:
                self.net = torch.compile(self.net)

        # The whole dataset lives on the device as uint8 NHWC: one transfer, no loader workers.
        s = ctx.splits
        self.data = {
            name: (torch.from_numpy(np.ascontiguousarray(x)).to(self.device), torch.from_numpy(y).to(self.device))
            for name, x, y in (("train", s.train_x, s.train_y), ("val", s.val_x, s.val_y), ("test", s.test_x, s.test_y))
        }
        self.pipeline = Pipeline(
            spec,
            self.device,
            channels_last=cuda,
            mean=self.built.mean or IMAGENET_MEAN,
            std=self.built.std or IMAGENET_STD,
        )
        n, bs = len(s.train_y), spec.train.batch_size
        # Full batches only (the last partial one is dropped): a batch of one breaks BatchNorm and
        # changing shapes would recompile; each epoch's permutation drops different images.
        self.steps_per_epoch = max(1, n // bs)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, spec.train, fused=cuda)
        self.scheduler = make_scheduler(self.optimizer, spec.train, self.steps_per_epoch)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=spec.train.label_smoothing)
        self.history = History()

    def autocast(self) -> AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else nullcontext()

    # --- checkpoints -------------------------------------------------------------------------

    def save(self, epoch: int, best: bool) -> None:
        paths = self.ctx.paths
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        save_atomic(
            {
                "epoch": epoch,
                "spec_hash": self.ctx.spec_file.spec_hash,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "history": self.history.state(),
                "rng": rng,
            },
            paths.checkpoint("last", ".pt"),
        )
        if best:
            save_atomic({"model": self.model.state_dict(), "epoch": epoch}, paths.checkpoint("best", ".pt"))

    def _checkpoint(self) -> dict | None:
        """last.pt when it belongs to this spec, else None."""
        path = self.ctx.paths.checkpoint("last", ".pt")
        if not path.is_file():
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # an unreadable checkpoint costs the epochs, not the run
            self.ctx.log(f"checkpoint {path} is unreadable ({type(e).__name__}): starting fresh")
            return None
        if ckpt.get("spec_hash") != self.ctx.spec_file.spec_hash:
            self.ctx.log(f"checkpoint {path} is from another spec: starting fresh")
            return None
        return ckpt

    def resume(self) -> int:
        """Load last.pt when it belongs to this spec; the first epoch to run. Every replica resumes from the
        checkpoint the first one read (the others' nodes may not hold the job's files)."""
        ckpt = self._checkpoint() if self.replica.primary else None
        if self.replica.world > 1:
            box = [ckpt]
            dist.broadcast_object_list(box, src=0)
            ckpt = box[0]
        if ckpt is None:
            return 1
        path = self.ctx.paths.checkpoint("last", ".pt")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.history = History.from_state(ckpt["history"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        start = len(self.history.epochs) + 1
        self.ctx.log(f"resuming from epoch {start} (checkpoint {path})")
        return start

    # --- training and evaluation -------------------------------------------------------------

    def train_epoch(self, epoch: int) -> tuple[float, float, int, float]:
        """One pass over the training set: (mean loss, accuracy, images, learning rate of the last step)."""
        x_all, y_all = self.data["train"]
        bs = self.spec.train.batch_size
        # Each replica trains on its slice of every global batch; DDP averages the gradients, so the step is the
        # one a single replica would take on the whole batch.
        part, rank = bs // self.replica.world, self.replica.rank
        side = (x_all.shape[1], x_all.shape[2])
        perm, shift, flip = self.pipeline.epoch_randomness(len(y_all), side, self.spec.train.seed, epoch, self.device)
        torch_zoo.train_mode(self.model, self.built.head, self.spec.model.freeze_backbone)
        # Sums stay on the device: reading them every step would stall the GPU.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, lr = 0, self.optimizer.param_groups[0]["lr"]
        for i in range(self.steps_per_epoch):
            idx = perm[i * bs + rank * part : i * bs + (rank + 1) * part]
            x = self.pipeline.train_batch(x_all[idx], shift[idx], flip[idx])
            y = y_all[idx]
            with self.autocast():
                out = self.net(x)
                loss = self.criterion(out, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            lr = self.optimizer.param_groups[0]["lr"]  # before the scheduler moves on to the next step's
            self.scheduler.step()
            loss_sum += loss.detach().float() * len(idx)
            correct += (out.argmax(1) == y).sum()
            seen += len(idx)
        if self.replica.world > 1:
            sums = torch.stack([loss_sum, correct.to(loss_sum.dtype), torch.tensor(float(seen), device=self.device)])
            dist.all_reduce(sums)
            loss_sum, correct, seen = sums[0], sums[1], int(sums[2].item())
        # .item() waits for the device, so the epoch's wall time covers its work.
        return loss_sum.item() / seen, correct.item() / seen, seen, lr

    @torch.inference_mode()
    def predict(self, split: str) -> np.ndarray:
        """Predicted classes of a whole split; replicas predict a slice each and share them."""
        self.model.eval()
        x_all, _ = self.data[split]
        rank, world = self.replica.rank, self.replica.world
        x_all = x_all[len(x_all) * rank // world : len(x_all) * (rank + 1) // world]
        bs = self.spec.train.eval_batch_size
        preds = [torch.zeros(0, dtype=torch.long, device=self.device)]
        for i in range(0, len(x_all), bs):
            with self.autocast():
                preds.append(self.eval_net(self.pipeline.eval_batch(x_all[i : i + bs])).argmax(1))
        mine = torch.cat(preds).cpu().numpy()
        if world == 1:
            return mine
        slices: list = [None] * world
        dist.all_gather_object(slices, mine)
        return np.concatenate(slices)

    def fit(self) -> RunResult:
        ctx = self.ctx
        start = self.resume()
        ctx.log(
            f"torch {torch.__version__} on {self.device.type} ({device_name(self.device)}), "
            f"bf16 {'on' if self.bf16 else 'off'}, {self.trainable:,} trainable of {self.total:,} parameters, "
            f"{self.steps_per_epoch} steps/epoch"
        )
        if self.replica.world > 1:
            ctx.log(
                f"data parallel: {self.replica.world} replicas (DDP over {self.backend}) on "
                f"{self.spec.resources.nodes} node(s), {self.spec.train.batch_size // self.replica.world} images "
                "of each batch per replica"
            )
        test_preds = run_epochs(ctx, self.history, start, self.train_epoch, self.predict, self.save)
        if self.device.type == "cuda":  # what a share of a GPU must hold: two jobs at gpus 0.5 need each below half
            ctx.log(f"gpu 0: peak memory {torch.cuda.max_memory_reserved(self.device) // 2**20} MiB reserved")
        cm = confusion_matrix(ctx.splits.test_y, test_preds, ctx.splits.num_classes)
        env = environment(
            "torch",
            torch.__version__,
            self.device.type,
            device_name(self.device),
            self.bf16,
            {"torchvision": torchvision.__version__},
            self.limits,
            replicas=self.replica.world,
            nodes=self.spec.resources.nodes,
            parallel=f"DDP over {self.backend}" if self.replica.world > 1 else "",
        )
        return build_result(ctx, self.history, cm, self.trainable, self.total, env)


def train(ctx: TrainContext) -> RunResult:
    """Train the run `ctx` describes and return its result (the worker writes result.json)."""
    try:
        return Run(ctx).fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
