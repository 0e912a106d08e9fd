"""The state of one run, as kept in status.json."""

import re
from datetime import datetime
from enum import StrEnum

from pydantic import Field, field_validator

from schemas.base import Strict
from schemas.registry import EXECUTORS, plain

# Terminal escapes (colours from Ray's tracebacks, cursor moves) and other control characters but newline and tab.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain_text(text: str) -> str:
    """`text` without terminal escapes or control characters: what a file, a table and a browser show alike."""
    return _CONTROLS.sub("", _ESCAPES.sub("", text))


class JobState(StrEnum):
    """Where a run stands. All but queued and running are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # its driver died (SIGKILL, out of memory, a lost machine) while it ran
    STOPPED = "stopped"  # a search's scheduler (ASHA) stopped the trial early: a result of the search, not a failure

    @property
    def final(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class Owner(Strict):
    """The gridrun driver that holds a suite folder (its lock or lease) and runs its jobs."""

    run_id: str = Field(description="The driver's run id (each `gridrun run` has its own).")
    host: str = Field(description="Host name of the machine the driver runs on.")
    pid: int = Field(ge=0, description="The driver's process id on that host.")
    command: str = Field("", description="What the driver runs, e.g. 'gridrun run jobs/smoke.yaml'.")
    since: datetime = Field(description="When the driver took the suite folder (UTC).")
    expires: datetime | None = Field(None, description="On object storage: when the lease ends unless renewed.")

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, run {self.run_id}, since {self.since:%Y-%m-%d %H:%M:%S} UTC"


class EarlyStop(Strict):
    """Where a search's scheduler stopped a trial, and on what."""

    scheduler: str = Field(description="The scheduler that stopped it (asha).")
    rung: int = Field(ge=1, description="The rung it was stopped at, from 1 (the epochs at which trials compare).")
    epoch: int = Field(ge=1, description="The last epoch it reported.")
    epochs: int = Field(ge=1, description="The epochs it would have run to the end.")
    metric: str = Field(description="The metric compared, e.g. val_accuracy.")
    value: float | None = Field(None, description="Its value of the metric at that epoch.")
    best: float | None = Field(None, description="The best value any trial had reached at that rung by then.")


class RunStatus(Strict):
    """status.json: the run's state, with why it ended so."""

    state: JobState = Field(
        description="queued, running, succeeded, failed, skipped, cancelled, interrupted, or stopped early by a search."
    )
    spec_hash: str = Field(description="Hash of the resolved spec this status belongs to.")
    attempts: int = Field(0, ge=0, description="How many times the run was started.")
    exit_code: int | None = Field(None, description="Exit code of the worker, when it ended.")
    reason: str = Field("", description="Why the run failed, was skipped or was cancelled.")
    log: str = Field("log.txt", description="The run's log file, relative to its folder.")
    executor: str = Field("", description=f"Executor that ran it: {plain(list(EXECUTORS))}.")
    node: str = Field("", description="Host name of the node that ran it.")
    gpu_ids: list[str] = Field(default_factory=list, description="GPU ids the scheduler assigned.")
    queued_at: datetime | None = Field(None, description="When the run was queued (UTC).")
    started_at: datetime | None = Field(None, description="When the run started (UTC).")
    finished_at: datetime | None = Field(None, description="When the run ended (UTC).")
    owner: Owner | None = Field(None, description="The driver that queued this run (a run id, host and pid).")
    early_stop: EarlyStop | None = Field(None, description="A stopped trial: the rung, epoch and metric it stopped at.")

    @field_validator("reason")
    @classmethod
    def _plain_reason(cls, reason: str) -> str:
        """Every reason is kept as plain text, whoever wrote it (Ray's errors come coloured)."""
        return plain_text(reason)
