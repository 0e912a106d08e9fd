"""spec.json: the job as declared, the job as run, and the hash that decides re-runs."""

import hashlib
import json
from typing import Any

from pydantic import Field

from schemas.base import Strict
from schemas.job import JobSpec
from schemas.registry import EXECUTORS, plain
from schemas.result import Substitution


class Identity(Strict):
    """What a run's result depends on, part by part, so that a later plan can say which part changed."""

    spec: str = Field(description="Hash of the resolved spec (the job as it runs).")
    code: str = Field(description="Hash of the worker's own modules: each one's path and bytes.")
    versions: dict[str, str] = Field(
        default_factory=dict,
        description="Versions the run depends on: framework packages, numpy, python (process); "
        "those the image's labels declare (docker).",
    )
    image: str = Field("", description="Docker image id or digest; '' for a local process.")
    user_code: str = Field(
        "",
        description="Hash of the suite's code: folder (each file's relative path and bytes) for a job that uses "
        "it; '' for one that does not.",
    )

    def digest(self) -> str:
        """The run's identity hash: all the parts together (a job without code of the user's hashes as before)."""
        fields = self.model_dump(mode="json", exclude=set() if self.user_code else {"user_code"})
        parts = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(parts.encode()).hexdigest()[:16]


class TrialInfo(Strict):
    """What makes a job a trial of a search: the search, its number, and the values drawn for it."""

    search: str = Field(description="The search's name (its folder under the suite's).")
    number: int = Field(ge=1, description="The trial's number in its search, from 1.")
    values: dict[str, Any] = Field(description="Dotted job field -> the value drawn for this trial.")


class SpecFile(Strict):
    """What the driver hands the worker, and what a re-run compares against."""

    suite: str = Field(description="Suite name.")
    job: str = Field(description="Job name.")
    spec_hash: str = Field(description="The run's identity hash: of `identity`'s parts.")
    code_version: str = Field(description="gridrun version that planned the run.")
    profile: str | None = Field(None, description="Profile applied, if any.")
    declared: JobSpec = Field(description="The job as the suite declares it (after defaults and profile).")
    spec: JobSpec = Field(description="The job as it runs: declared, with any declared substitute applied.")
    substitutions: list[Substitution] = Field(default_factory=list, description="Declared substitutes in use.")
    executor: str = Field("", description=f"Executor chosen for it: {plain(list(EXECUTORS))}.")
    image: str = Field("", description="Docker image, when run in one.")
    code: str = Field(
        "",
        description="The suite's code: folder on the driver's machine, for a job that imports from it; '' otherwise.",
    )
    identity: Identity | None = Field(
        None, description="The parts of `spec_hash`; absent in spec.json files written before they were kept."
    )
    trial: TrialInfo | None = Field(None, description="For a trial of a search: the search and the values drawn.")
