"""Epoch bookkeeping both trainers share, so their files stay the same and in the same order."""

import time
from collections.abc import Callable

import numpy as np

from runner.train.common import History, TrainContext, hparams, report_epoch
from runner.train.tbwriter import TBWriter
from schemas import EpochRecord


def open_tensorboard(ctx: TrainContext, start: int) -> TBWriter:
    """The run's TensorBoard writer; a fresh start (epoch 1) drops an abandoned attempt's events,
    which would otherwise show twice next to this run's, and records the hyper-parameters."""
    if start == 1:
        for stale in ctx.paths.tb.glob("events.out.tfevents.*"):
            stale.unlink()
    tb = TBWriter(ctx.paths.tb)
    if start == 1:
        tb.hparams(hparams(ctx.spec, ctx.spec_file.trial))
    return tb


def close_epoch(
    ctx: TrainContext, history: History, tb: TBWriter | None, record: EpochRecord, save: Callable[[int, bool], None]
) -> None:
    """Record an epoch: checkpoint, then TensorBoard, then progress.json and the log line. Once
    progress shows epoch k, the checkpoint and the event file hold epoch k too: a kill loses nothing. Replicas
    other than the first keep the history (the best epoch) and write nothing."""
    best = history.add(record)
    if tb is None:
        return
    save(record.epoch, best)
    tb.epoch(record)
    report_epoch(ctx, record)


def run_epochs(
    ctx: TrainContext,
    history: History,
    start: int,
    train_epoch: Callable[[int], tuple[float, float, int, float]],
    predict: Callable[[str], np.ndarray],
    save: Callable[[int, bool], None],
) -> np.ndarray:
    """Epochs `start`..last: train, evaluate on validation and test, record. Returns the final
    test predictions. `train_epoch(epoch)` gives (mean loss, accuracy, images, last step's lr) and
    returns only once the device is done, so the wall-clock split is true."""
    tb = open_tensorboard(ctx, start) if ctx.replica.primary else None
    labels = {"val": ctx.splits.val_y, "test": ctx.splits.test_y}
    test_preds = None
    for epoch in range(start, ctx.spec.train.epochs + 1):
        t0 = time.perf_counter()
        loss, acc, seen, lr = train_epoch(epoch)
        t1 = time.perf_counter()
        val_preds = predict("val")
        test_preds = predict("test")
        t2 = time.perf_counter()
        history.train_seconds += t1 - t0
        history.eval_seconds += t2 - t1
        record = EpochRecord(
            epoch=epoch,
            train_loss=loss,
            train_accuracy=acc,
            val_accuracy=float((val_preds == labels["val"]).mean()),
            test_accuracy=float((test_preds == labels["test"]).mean()),
            lr=lr,
            epoch_seconds=t2 - t0,
            images_per_second=seen / (t1 - t0),
        )
        close_epoch(ctx, history, tb, record, save)
    if tb is not None:
        tb.close()
    return test_preds if test_preds is not None else predict("test")  # None: all done before a resume
