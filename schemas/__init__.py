"""Pydantic models of gridrun: job specs, suites, run status and run results.

Only pydantic is imported here, so the models load inside framework images.
"""

from schemas.job import (
    AugmentSpec,
    DatasetSpec,
    JobSpec,
    ModelSpec,
    OptimizerSpec,
    ResourcesSpec,
    ScheduleSpec,
    TrainSpec,
)
from schemas.result import ClassAccuracy, Environment, EpochRecord, Limits, RunResult, Substitution, Timing
from schemas.run import Identity, SpecFile, TrialInfo
from schemas.search import SearchSpec
from schemas.status import EarlyStop, JobState, Owner, RunStatus
from schemas.suite import MatrixSpec, Suite

__all__ = [
    "AugmentSpec",
    "ClassAccuracy",
    "DatasetSpec",
    "EarlyStop",
    "Environment",
    "EpochRecord",
    "Identity",
    "JobSpec",
    "JobState",
    "Limits",
    "MatrixSpec",
    "ModelSpec",
    "OptimizerSpec",
    "Owner",
    "ResourcesSpec",
    "RunResult",
    "RunStatus",
    "ScheduleSpec",
    "SearchSpec",
    "SpecFile",
    "Substitution",
    "Suite",
    "Timing",
    "TrainSpec",
    "TrialInfo",
]
