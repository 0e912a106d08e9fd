"""The TensorFlow trainer: `train(ctx) -> RunResult`, the torch trainer's twin.

Same data and split, same batches' randomness (a seeded permutation, integer shifts and flips per
epoch, drawn on the CPU), same network (tf_models), same optimizer rules and schedules (PyTorch's,
written out below), same metrics, TensorBoard tags and files. The uint8 images stay in host
memory; tf.data gathers each batch and prefetches it; the model itself normalises, shifts, flips
and resizes, so that work runs on the device inside the compiled step. Imports neither Ray nor Docker.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads

import json
import math
import platform
import shutil
import subprocess
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf
from keras import ops

from runner.errors import UserError
from runner.store.layout import atomic_path
from runner.train import keras_zoo, tf_models
from runner.train.common import (
    NO_DEVICE_FIX,
    History,
    TrainContext,
    build_result,
    collective_timeout_s,
    confusion_matrix,
    environment,
    gpu_unusable,
    nvidia_devices,
)
from runner.train.epochs import run_epochs
from runner.train.weights import imagenet_source, weights_file, zoo_weights_missing
from schemas import AugmentSpec, JobSpec, OptimizerSpec, RunResult, TrainSpec
from schemas.registry import model_ref

# PyTorch's defaults for what the spec does not set, so both frameworks train alike.
ADAM_BETA2, ADAM_EPS = 0.999, 1e-8  # torch.optim.Adam(W); Keras' epsilon is 1e-7
ONECYCLE = {"pct_start": 0.3, "div": 25.0, "final_div": 1e4, "base_momentum": 0.85, "max_momentum": 0.95}
CHECKPOINT_SUFFIX = ".weights.h5"
_META = "gridrun"  # attribute of a checkpoint holding epoch, spec hash and history (JSON)
_OPTIMIZER = "gridrun_optimizer"  # group of a checkpoint holding the optimizer's variables


# --- devices -------------------------------------------------------------------------------------


def _gpu_memory_mb(index: int) -> int | None:
    """Total memory of the index-th visible GPU, from nvidia-smi (TensorFlow reports none before use)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ident = visible[index] if index < len(visible) else str(index)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "-i", ident, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return int(float(out.strip().splitlines()[0]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def configure_devices(ctx: TrainContext) -> tuple[str, str, bool]:
    """Memory growth on every GPU, or a memory limit when the job has a share of one (so two jobs fit
    on it); returns (device, device name, bf16 supported). Must run before TensorFlow touches a GPU.
    A job that reserved GPUs gets one, or the CPU only as its declared fallback."""
    fraction, log = ctx.gpu_fraction, ctx.log
    gpus = tf.config.list_physical_devices("GPU")
    for i, gpu in enumerate(gpus):
        total = _gpu_memory_mb(i) if fraction < 1 else None
        if total:
            limit = int(total * fraction)
            tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
            log(f"gpu {i}: memory limited to {limit} MiB ({fraction:g} of {total} MiB)")
        else:
            if fraction < 1:
                log(f"gpu {i}: total memory unknown (no nvidia-smi): memory growth instead of a {fraction:g} limit")
            tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus:
        if ctx.spec.resources.gpus > 0:
            gpu_unusable(ctx, f"TensorFlow {tf.__version__}", *no_gpu_cause())
        replicas = ctx.spec.resources.per_node
        if replicas > 1:  # CPU replicas: logical devices of the one CPU, for MirroredStrategy to mirror over
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        try:
            with open("/proc/cpuinfo") as f:
                model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
        except OSError:
            model = ""
        return (
            "cpu",
            f"{model or platform.machine()} ({tf.config.threading.get_intra_op_parallelism_threads()} threads)",
            False,
        )
    details = tf.config.experimental.get_device_details(gpus[0])
    bf16 = tuple(details.get("compute_capability", (0, 0))) >= (8, 0)
    return "cuda", str(details.get("device_name", "GPU")), bf16


def no_gpu_cause() -> tuple[str, str]:
    """Why TensorFlow lists no GPU, and the fix."""
    if not tf.test.is_built_with_cuda():
        return "a build of TensorFlow without CUDA", (
            "install TensorFlow with its CUDA libraries here (pip install 'tensorflow[and-cuda]' on Linux x86-64, "
            "as gridrun's host extra does), or run the job in gridrun's tensorflow image (--executor docker)"
        )
    if nvidia_devices():
        return "tf.config.list_physical_devices('GPU') is empty although NVIDIA devices are here", (
            "install the CUDA libraries TensorFlow loads (pip install 'tensorflow[and-cuda]', as gridrun's host "
            "extra does on Linux x86-64) and check that they suit the driver (`nvidia-smi`; TF_CPP_MIN_LOG_LEVEL=0 "
            "shows which library failed to load)"
        )
    return "tf.config.list_physical_devices('GPU') is empty: no NVIDIA device here", NO_DEVICE_FIX


# --- schedule and optimizer, in PyTorch's meaning ------------------------------------------------


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate (and, for onecycle, momentum / Adam's beta1) of each step, as the torch trainer's
    schedulers give them: stepped after every optimizer step, step k trains with lr(k).

    cosine: LambdaLR with linear warm-up (k+1)/warmup, then half a cosine to 0.
    onecycle: torch.optim.lr_scheduler.OneCycleLR with its defaults (two cosine phases, lr from
    max/25 to max to max/25/1e4, momentum cycled 0.95 -> 0.85 -> 0.95 where there is one).
    """

    def __init__(self, train: TrainSpec, steps_per_epoch: int) -> None:
        self.name = train.schedule.name
        self.peak = train.optimizer.lr
        self.total = steps_per_epoch * train.epochs
        self.warmup = min(self.total, round(train.schedule.warmup_epochs * steps_per_epoch))
        opt = train.optimizer
        self.momentum_value = opt.momentum if opt.name == "sgd" else 0.9  # Adam's beta1
        self.cycle_momentum = self.name == "onecycle" and (opt.name != "sgd" or opt.momentum > 0)

    @staticmethod
    def _anneal(start: float, end: float, pct):
        return end + (start - end) / 2.0 * (tf.cos(math.pi * pct) + 1.0)

    def _onecycle_pct(self, step):
        """(whether `step` is in the first phase, progress within its phase), as OneCycleLR computes them."""
        end1 = ONECYCLE["pct_start"] * self.total - 1.0  # never 0 for a whole number of steps
        end2 = self.total - 1.0
        first = step <= end1
        return first, tf.where(first, step / end1, (step - end1) / (end2 - end1))

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.name == "constant":
            return tf.constant(self.peak, tf.float32)
        if self.name == "cosine":
            warm = (step + 1.0) / max(1, self.warmup)
            progress = tf.minimum(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            cos = 0.5 * (1.0 + tf.cos(math.pi * progress))
            return self.peak * tf.where(step < self.warmup, warm, cos)
        first, pct = self._onecycle_pct(step)
        initial = self.peak / ONECYCLE["div"]
        return tf.where(
            first, self._anneal(initial, self.peak, pct), self._anneal(self.peak, initial / ONECYCLE["final_div"], pct)
        )

    def momentum(self, step):
        """SGD momentum or Adam's beta1 at `step`."""
        if not self.cycle_momentum:
            return tf.constant(self.momentum_value, tf.float32)
        first, pct = self._onecycle_pct(tf.cast(step, tf.float32))
        low, high = ONECYCLE["base_momentum"], ONECYCLE["max_momentum"]
        return tf.where(first, self._anneal(high, low, pct), self._anneal(low, high, pct))

    def get_config(self) -> dict:
        return {"name": self.name, "peak": self.peak, "total": self.total, "warmup": self.warmup}


class TorchOptimizer(keras.optimizers.Optimizer):
    """SGD, Adam and AdamW with torch.optim's update rules, which Keras' own optimizers do not follow:

    - SGD momentum. PyTorch: v = m*v + g; p -= lr*v. Keras: v = m*v - lr*g; p += v. The same while
      lr is constant, but Keras folds past learning rates into v, so under a schedule the two
      diverge: here the learning rate multiplies the whole velocity, as in PyTorch.
    - Weight decay. PyTorch's SGD and Adam add wd*p to the gradient (L2, so Adam rescales it);
      AdamW shrinks p by lr*wd before the step (decoupled). Keras' `weight_decay` is always the
      decoupled kind, so it is not used; both kinds are written out below.
    - Adam's epsilon is added to the bias-corrected sqrt(v), with PyTorch's 1e-8 (Keras: 1e-7,
      added before the correction).
    All of it applies to every trainable variable, biases included, as torch.optim does by default.
    """

    def __init__(self, opt: OptimizerSpec, schedule: Schedule) -> None:
        super().__init__(learning_rate=schedule, name=opt.name)
        self.kind = opt.name
        self.decay = opt.weight_decay
        self.nesterov = opt.nesterov
        self.schedule = schedule
        self.use_momentum = opt.name != "sgd" or opt.momentum > 0

    def build(self, variables) -> None:
        if self.built:
            return
        super().build(variables)
        self.slots: list[list] = []
        if self.kind == "sgd":
            if self.use_momentum:
                self.slots = [self.add_optimizer_variables(variables, "momentum_buffer")]
        else:
            self.slots = list(self.add_optimizer_variables(variables, ["exp_avg", "exp_avg_sq"]))

    def update_step(self, gradient, variable, learning_rate) -> None:
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        i = self._get_variable_index(variable)
        beta = ops.cast(self.schedule.momentum(self.iterations), dtype)
        if self.kind == "sgd":
            if self.decay:
                g = g + self.decay * variable
            if self.use_momentum:
                buf = self.slots[0][i]
                self.assign(buf, beta * buf + g)  # step 1: buf = g, as PyTorch's clone (buf starts at 0)
                g = g + beta * buf if self.nesterov else buf
            self.assign_sub(variable, lr * g)
            return
        if self.kind == "adamw":
            self.assign(variable, variable * (1.0 - lr * self.decay))
        elif self.decay:
            g = g + self.decay * variable
        m, v = self.slots[0][i], self.slots[1][i]
        step = ops.cast(self.iterations + 1, dtype)
        self.assign(m, beta * m + (1.0 - beta) * g)
        self.assign(v, ADAM_BETA2 * v + (1.0 - ADAM_BETA2) * g * g)
        denom = ops.sqrt(v) / ops.sqrt(1.0 - ADAM_BETA2**step) + ADAM_EPS
        self.assign_sub(variable, lr / (1.0 - beta**step) * m / denom)


def make_optimizer(train: TrainSpec, steps_per_epoch: int) -> TorchOptimizer:
    """torch.optim's rules under the spec's schedule (the schema refuses nesterov without momentum)."""
    return TorchOptimizer(train.optimizer, Schedule(train, steps_per_epoch))


def cross_entropy(y, logits, smoothing: float):
    """torch.nn.CrossEntropyLoss(label_smoothing=s): (1-s)*NLL + s*mean over classes of -log p, in float32."""
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    loss = -tf.gather(logp, y, batch_dims=1)
    if smoothing:
        loss = (1.0 - smoothing) * loss - smoothing * tf.reduce_mean(logp, axis=-1)
    return tf.reduce_mean(loss)


# --- weights -------------------------------------------------------------------------------------


def initial_weights_path(spec: JobSpec, cache: Path) -> Path | None:
    """The file `spec.model.weights` names, checked before any model is built; None for random weights.
    (The schema has refused a PyTorch file already: what is left to check is that the file is there.)"""
    path = weights_file(spec, cache)
    if path is None:
        return None
    arch = spec.model.arch
    if not path.is_file():
        if spec.model.weights == "imagenet" and not spec.model.twin:
            raise UserError(zoo_weights_missing(arch, path))
        if spec.model.weights == "imagenet":
            source = imagenet_source(spec.framework, arch)
            raise UserError(
                f"ImageNet weights for tensorflow {arch} are not at {path}. Fix: let `gridrun run` "
                f"download {source.url} into the cache on a machine with network, or copy that file to {path}."
            )
        raise UserError(
            f"weights file {path} does not exist. Fix: set model.weights to an existing .weights.h5, "
            ".keras or .h5 file (an absolute path, as the worker sees it), or to none or imagenet."
        )
    return path


def load_initial_weights(model: keras.Model, spec: JobSpec, path: Path, log) -> None:
    """Load the weights file into `model`, keeping its fresh head where the file's does not fit."""
    arch = spec.model.arch
    fix = (
        f"Fix: give the keras.applications {arch} notop .h5 file, or a .weights.h5/.keras file saved from a "
        f"gridrun tensorflow {arch} run, or use weights: none or imagenet."
    )
    try:
        missing, fresh = tf_models.load_file(model, path)
    except (ValueError, OSError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"weights file {path} cannot be loaded into keras {arch}: {first[:300]}. {fix}") from None
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(
            f"weights file {path} does not fit keras {arch}: {len(missing)} backbone variables missing "
            f"or of another shape ({', '.join(missing[:3])}{more}). {fix}"
        )
    log(f"weights: loaded {path}; fresh head variables: {', '.join(fresh) or 'none'}")


# --- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(model: keras.Model, path: Path, meta: dict[str, Any], optimizer: keras.optimizers.Optimizer | None):
    """Model weights (Keras' .weights.h5, for model.load_weights), plus the optimizer's variables and
    `meta`, written to a temp file, fsynced and renamed: a kill never leaves half a checkpoint."""
    variables = [*model.weights, *(optimizer.variables if optimizer is not None else [])]
    size = 4 * sum(math.prod(v.shape) for v in variables)  # float32 (bf16 runs keep float32 variables)
    with atomic_path(path, suffix=".tmp" + CHECKPOINT_SUFFIX, size_hint=size) as tmp:
        model.save_weights(str(tmp))
        with h5py.File(tmp, "a") as f:
            f.attrs[_META] = json.dumps(meta)
            if optimizer is not None:
                group = f.create_group(_OPTIMIZER)
                for i, v in enumerate(optimizer.variables):
                    group.create_dataset(str(i), data=np.asarray(v.numpy()))


def read_checkpoint(path: Path) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The meta and optimizer arrays of a checkpoint; raises OSError/KeyError/ValueError when unreadable."""
    with h5py.File(path, "r") as f:
        meta = json.loads(f.attrs[_META])
        group = f[_OPTIMIZER]
        arrays = [np.asarray(group[str(i)]) for i in range(len(group))]
    return meta, arrays


# --- the run -------------------------------------------------------------------------------------


def epoch_randomness(n: int, side: tuple[int, int], augment: AugmentSpec, seed: int, epoch: int):
    """Permutation, shifts (source pixels, x and y) and flips of one epoch, from a (seed, epoch) seed, so
    a resumed run sees the same batches. The torch trainer's law (integer shifts in [-pad, pad] with
    pad = round(crop_padding * side), flips with p = 0.5), drawn with numpy: the same law, other numbers."""
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**32, epoch]))
    perm = rng.permutation(n)
    shift = np.zeros((n, 2), dtype=np.int32)
    if augment.random_crop and augment.crop_padding > 0:
        pad = np.array([round(augment.crop_padding * side[1]), round(augment.crop_padding * side[0])])
        shift = rng.integers(-pad, pad + 1, size=(n, 2)).astype(np.int32)
    flip = rng.random(n) < 0.5 if augment.horizontal_flip else np.zeros(n, dtype=bool)
    return perm, shift, flip


def make_strategy(ctx: TrainContext, device: str) -> tf.distribute.Strategy | None:
    """The tf.distribute strategy of a data-parallel job (None for one replica): MirroredStrategy over this node's
    GPUs or logical CPU devices; MultiWorkerMirroredStrategy across nodes (TF_CONFIG names them)."""
    res = ctx.spec.resources
    if res.world == 1:
        return None
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout_s())
    if res.nodes > 1:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    kind = "GPU" if device == "cuda" else "CPU"
    devices = [d.name for d in tf.config.list_logical_devices(kind)][: res.per_node]
    # NCCL between GPUs; on CPU devices, a sum on one of them (the default picks NCCL, absent there).
    ops = None if kind == "GPU" else tf.distribute.ReductionToOneDevice(reduce_to_device=devices[0])
    return tf.distribute.MirroredStrategy(devices, cross_device_ops=ops)


class Run:
    """One training run's state: model, data, optimizer, schedule and history."""

    def __init__(self, ctx: TrainContext) -> None:
        self.ctx = ctx
        spec = self.spec = ctx.spec
        # One process holds all of this node's replicas: its pools get all of their threads.
        threads = spec.resources.threads * spec.resources.per_node
        # Before TensorFlow starts its runtime: its pools would otherwise take every core, whatever was reserved.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.device, self.device_name, bf16_ok = configure_devices(ctx)
        self.strategy = make_strategy(ctx, self.device)
        # (MultiWorkerMirroredStrategy's class is named CollectiveAllReduceStrategy: the names users know.)
        self.parallel = ""
        if self.strategy is not None:
            self.parallel = "MultiWorkerMirroredStrategy" if spec.resources.nodes > 1 else "MirroredStrategy"
        self.world = spec.resources.world
        scope = self.strategy.scope() if self.strategy is not None else nullcontext()
        scope.__enter__()  # model, optimizer and sums are made in it: mirrored over the replicas
        self.limits = ctx.limits(
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
            self.device == "cuda",
        )
        # bf16 needs no loss scaling; only on a GPU that has it (on the CPU it is slower than fp32).
        self.bf16 = spec.train.mixed_precision and bf16_ok
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if self.bf16 else "float32")

        # A missing weights file fails here, before the model takes seconds to build.
        weights = initial_weights_path(spec, ctx.cache)
        s = ctx.splits
        n = len(s.train_y)
        self.steps_per_epoch = max(1, n // spec.train.batch_size)
        self.optimizer = make_optimizer(spec.train, self.steps_per_epoch)

        keras.utils.set_random_seed(spec.train.seed)
        if spec.model.twin:
            self.model = tf_models.build(spec.model, s.num_classes, spec.dataset.image_size, s.train_x.shape[1:3])
            if weights is not None:
                load_initial_weights(self.model, spec, weights, ctx.log)
            if spec.model.freeze_backbone:
                tf_models.freeze_backbone(self.model)
        else:
            own = model_ref(spec.model.arch).kind == "user"
            zoo = (keras_zoo.user if own else keras_zoo.build)(
                spec.model, s.num_classes, spec.dataset.image_size, weights
            )
            for note in zoo.notes:
                ctx.log(note)
            if spec.model.freeze_backbone:
                keras_zoo.freeze(zoo.model, zoo.head)
            self.model = tf_models.build(
                spec.model, s.num_classes, spec.dataset.image_size, s.train_x.shape[1:3], zoo=zoo
            )
        self.trainable, self.total = tf_models.parameter_counts(self.model)
        self.caffe = tf_models.caffe_preprocessing(spec.model)
        if not spec.model.twin and model_ref(spec.model.arch).zoo is not None:
            self.input_note = f"keras.applications {spec.model.arch.split('.', 1)[1]} preprocess_input"
        else:
            self.input_note = "keras vgg16 preprocess_input (caffe)" if self.caffe else "ImageNet mean/std"
        self.variables = self.model.trainable_variables

        # Full batches only, as in the torch trainer: the last partial one is dropped (a fresh one each
        # epoch), so every step has one shape and XLA compiles once.
        self.batch = min(spec.train.batch_size, n)
        self.optimizer.build(self.variables)
        with tf.device("/CPU:0"):  # host memory: tf.data gathers batches there
            self.data = {
                name: (tf.constant(x), tf.constant(y.astype(np.int32)))
                for name, x, y in (
                    ("train", s.train_x, s.train_y),
                    ("val", s.val_x, s.val_y),
                    ("test", s.test_x, s.test_y),
                )
            }
        self.labels = {"train": s.train_y, "val": s.val_y, "test": s.test_y}
        # Each replica adds to its own copy; reading them sums the copies.
        on_read = {"synchronization": tf.VariableSynchronization.ON_READ, "aggregation": tf.VariableAggregation.SUM}
        self.loss_sum = tf.Variable(0.0, dtype=tf.float32, trainable=False, **on_read)
        self.correct = tf.Variable(0, dtype=tf.int32, trainable=False, **on_read)
        scope.__exit__(None, None, None)
        jit = spec.train.compile
        self._train_step = tf.function(self._train_step_fn, jit_compile=jit, reduce_retracing=True)
        if self.strategy is not None:
            step, strategy = self._train_step, self.strategy
            self._train_step = tf.function(lambda *batch: strategy.run(step, args=batch), reduce_retracing=True)
        self._predict_step = tf.function(self._predict_step_fn, jit_compile=jit, reduce_retracing=True)
        self.history = History()

    # --- checkpoints -------------------------------------------------------------------------

    def save(self, epoch: int, best: bool) -> None:
        paths, spec_hash = self.ctx.paths, self.ctx.spec_file.spec_hash
        meta = {"epoch": epoch, "spec_hash": spec_hash, "history": self.history.state()}
        save_checkpoint(self.model, paths.checkpoint("last", CHECKPOINT_SUFFIX), meta, self.optimizer)
        if best:
            save_checkpoint(
                self.model, paths.checkpoint("best", CHECKPOINT_SUFFIX), {"epoch": epoch, "spec_hash": spec_hash}, None
            )

    def resume(self) -> int:
        """Load last.weights.h5 when it belongs to this spec; the first epoch to run."""
        path = self.ctx.paths.checkpoint("last", CHECKPOINT_SUFFIX)
        if not path.is_file():
            return 1
        try:
            meta, arrays = read_checkpoint(path)
        except (OSError, KeyError, ValueError) as e:  # an unreadable checkpoint costs the epochs, not the run
            self.ctx.log(f"checkpoint {path} is unreadable ({type(e).__name__}): starting fresh")
            return 1
        if meta.get("spec_hash") != self.ctx.spec_file.spec_hash:
            self.ctx.log(f"checkpoint {path} is from another spec: starting fresh")
            return 1
        own = self.optimizer.variables
        if len(arrays) != len(own) or any(tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, own, strict=False)):
            self.ctx.log(f"checkpoint {path} holds another optimizer state: starting fresh")
            return 1
        self.model.load_weights(str(path))
        for v, a in zip(own, arrays, strict=True):
            v.assign(a)
        self.history = History.from_state(meta["history"])
        start = len(self.history.epochs) + 1
        self.ctx.log(f"resuming from epoch {start} (checkpoint {path})")
        return start

    # --- training and evaluation -------------------------------------------------------------

    def _train_step_fn(self, x, shift, flip, y):
        with tf.GradientTape() as tape:
            logits = self.model([x, shift, flip], training=True)
            loss = cross_entropy(y, logits, self.spec.train.label_smoothing)
            # The optimizer sums the replicas' gradients: each replica's mean over its slice, over the replicas,
            # is the gradient of the mean over the whole batch.
            share = loss / self.world
        grads = tape.gradient(share, self.variables)
        self.optimizer.apply(grads, self.variables)
        # Sums stay on the device: reading them every step would stall the GPU.
        self.loss_sum.assign_add(loss * tf.cast(tf.shape(y)[0], tf.float32))
        self.correct.assign_add(tf.reduce_sum(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == y, tf.int32)))

    def _predict_step_fn(self, x):
        n = tf.shape(x)[0]
        shift, flip = tf.zeros([n, 2], tf.int32), tf.zeros([n], tf.bool)
        return tf.argmax(self.model([x, shift, flip], training=False), -1, output_type=tf.int32)

    def train_batches(self, epoch: int) -> tf.data.Dataset:
        x_all, y_all = self.data["train"]
        n = len(self.labels["train"])
        perm, shift, flip = epoch_randomness(
            n, tuple(x_all.shape[1:3]), self.spec.train.augment, self.spec.train.seed, epoch
        )
        idx = perm[: self.steps_per_epoch * self.batch].reshape(self.steps_per_epoch, self.batch)

        def slices(pipeline: int = 0, pipelines: int = 1) -> tf.data.Dataset:
            # Replica r of each step takes the r-th slice of its global batch, as in the torch trainer; the
            # strategy hands a pipeline's elements to its replicas in turn.
            local = self.world // pipelines
            rows = idx.reshape(self.steps_per_epoch, self.world, -1)[:, pipeline * local : (pipeline + 1) * local]
            rows = rows.reshape(-1, rows.shape[-1])
            ds = tf.data.Dataset.from_tensor_slices((rows, shift[rows], flip[rows]))
            ds = ds.map(
                lambda i, s, f: (tf.gather(x_all, i), s, f, tf.gather(y_all, i)), num_parallel_calls=tf.data.AUTOTUNE
            )
            return ds.prefetch(tf.data.AUTOTUNE)

        if self.strategy is None:
            return slices()
        options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
        return self.strategy.distribute_datasets_from_function(
            lambda context: slices(context.input_pipeline_id, context.num_input_pipelines), options
        )

    def train_epoch(self, epoch: int) -> tuple[float, float, int, float]:
        """One pass over the training set: (mean loss, accuracy, images, last step's lr). Reading the
        sums at the end waits for the device."""
        self.loss_sum.assign(0.0)
        self.correct.assign(0)
        for x, shift, flip, y in self.train_batches(epoch):
            self._train_step(x, shift, flip, y)
        seen = self.steps_per_epoch * self.batch
        return float(self.loss_sum.numpy()) / seen, int(self.correct.numpy()) / seen, seen, self.last_lr()

    def predict(self, split: str) -> np.ndarray:
        """Predicted classes of a whole split. Every batch is padded to one size (one compilation)."""
        x_all, _ = self.data[split]
        n = len(self.labels[split])
        bs = min(self.spec.train.eval_batch_size, n)

        def batch(start):
            x = x_all[start : start + bs]
            return tf.pad(x, [[0, bs - tf.shape(x)[0]], [0, 0], [0, 0], [0, 0]])

        ds = tf.data.Dataset.range(0, n, bs).map(batch).prefetch(tf.data.AUTOTUNE)
        preds = np.concatenate([self._predict_step(x).numpy() for x in ds])
        return preds[:n]

    def last_lr(self) -> float:
        """The learning rate the epoch's last step trained with (the torch trainer reports the same)."""
        return float(self.optimizer.schedule(max(0, int(self.optimizer.iterations.numpy()) - 1)))

    def fit(self) -> RunResult:
        ctx, spec = self.ctx, self.spec
        start = self.resume()
        ctx.log(
            f"tensorflow {tf.__version__} (keras {keras.__version__}) on {self.device} ({self.device_name}), "
            f"bf16 {'on' if self.bf16 else 'off'}, XLA {'on' if spec.train.compile else 'off'}, "
            f"{self.trainable:,} trainable of {self.total:,} parameters, {self.steps_per_epoch} steps/epoch, "
            f"input {self.input_note}"
        )
        if self.strategy is not None:
            ctx.log(
                f"data parallel: {self.world} replicas ({self.parallel}) on {spec.resources.nodes} "
                f"node(s), {spec.train.batch_size // self.world} images of each batch per replica"
            )
        test_preds = run_epochs(ctx, self.history, start, self.train_epoch, self.predict, self.save)
        cm = confusion_matrix(self.labels["test"], test_preds, ctx.splits.num_classes)
        env = environment(
            "tensorflow",
            tf.__version__,
            self.device,
            self.device_name,
            self.bf16,
            {"keras": keras.__version__},
            self.limits,
            replicas=self.world,
            nodes=spec.resources.nodes,
            parallel=self.parallel,
        )
        return build_result(ctx, self.history, cm, self.trainable, self.total, env)


def train(ctx: TrainContext) -> RunResult:
    """Train the run `ctx` describes and return its result (the worker writes result.json)."""
    return Run(ctx).fit()
