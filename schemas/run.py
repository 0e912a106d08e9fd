"""spec.json: the job as declared, the job as run, and the hash that decides re-runs."""

from pydantic import Field

from schemas.base import Strict
from schemas.job import JobSpec
from schemas.registry import EXECUTORS, plain
from schemas.result import Substitution


class SpecFile(Strict):
    """What the driver hands the worker, and what a re-run compares against."""

    suite: str = Field(description="Suite name.")
    job: str = Field(description="Job name.")
    spec_hash: str = Field(description="Hash of `spec`, the image and the code version.")
    code_version: str = Field(description="gridrun version that planned the run.")
    profile: str | None = Field(None, description="Profile applied, if any.")
    declared: JobSpec = Field(description="The job as the suite declares it (after defaults and profile).")
    spec: JobSpec = Field(description="The job as it runs: declared, with any declared substitute applied.")
    substitutions: list[Substitution] = Field(default_factory=list, description="Declared substitutes in use.")
    executor: str = Field("", description=f"Executor chosen for it: {plain(list(EXECUTORS))}.")
    image: str = Field("", description="Docker image, when run in one.")
