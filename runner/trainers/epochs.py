"""Epoch bookkeeping both trainers share, so their files stay the same and in the same order."""

from collections.abc import Callable

from runner.tbwriter import TBWriter
from runner.trainers.common import History, TrainContext, hparams, report_epoch
from schemas import EpochRecord


def open_tensorboard(ctx: TrainContext, start: int) -> TBWriter:
    """The run's TensorBoard writer; a fresh start (epoch 1) drops an abandoned attempt's events,
    which would otherwise show twice next to this run's, and records the hyper-parameters."""
    if start == 1:
        for stale in ctx.paths.tb.glob("events.out.tfevents.*"):
            stale.unlink()
    tb = TBWriter(ctx.paths.tb)
    if start == 1:
        tb.hparams(hparams(ctx.spec))
    return tb


def close_epoch(
    ctx: TrainContext, history: History, tb: TBWriter, record: EpochRecord, save: Callable[[int, bool], None]
) -> None:
    """Record an epoch: checkpoint, then TensorBoard, then progress.json and the log line. Once
    progress shows epoch k, the checkpoint and the event file hold epoch k too: a kill loses nothing."""
    best = history.add(record)
    save(record.epoch, best)
    tb.epoch(record)
    report_epoch(ctx, record)
