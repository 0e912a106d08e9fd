"""The models a suite names, checked against their libraries before anything runs, and counted.

A twin is counted by arithmetic (schemas.registry.Arch.count). A zoo model is asked of its library through
runner.train.probe (a child process; the answers are cached): an unknown name (with the library's closest),
classifier_width on a model without hidden dense layers, or an image size the model cannot take is refused
by `validate`, `plan` and `run` alike, one message naming each job.
"""

from pathlib import Path

from runner.errors import UserError
from runner.suite import LoadedSuite
from runner.train import data
from runner.train.probe import Catalog, Request
from schemas import JobSpec
from schemas.registry import Parameters, model_ref, unknown_zoo_model

__all__ = ["Catalog", "arithmetic", "check", "classes", "counts", "problems"]


def classes(spec: JobSpec) -> int | None:
    """The dataset's classes as declared; for a folder of the user's, its class sub-folders (10 while absent);
    None for the user's own dataset function, whose classes only running it tells (the worker does)."""
    ds = spec.dataset
    declared = ds.classes
    if declared is not None or ds.user:
        return declared
    root = Path(ds.path or "").expanduser()
    return max(1, len(data.class_folders(root))) if ds.path and root.is_dir() else 10


def arithmetic(spec: JobSpec) -> Parameters | None:
    """A twin's parameters, by its declaration's arithmetic; None for any other model, or unknown classes."""
    n = classes(spec)
    return spec.model.parameters(n) if n is not None else None


# A head for the checks of a job whose classes only its data tells: what a model takes does not depend on it.
CHECK_CLASSES = 10


def request(spec: JobSpec) -> Request:
    m = spec.model
    n = classes(spec) or CHECK_CLASSES
    return Request(m.arch, n, m.classifier_width, m.freeze_backbone, spec.dataset.image_size)


def problems(specs: list[JobSpec], catalog: Catalog) -> list[tuple[JobSpec, str]]:
    """(job, message) for each zoo model its library cannot build as the job asks; the libraries not
    installed here are skipped (said once by the catalog)."""
    out: list[tuple[JobSpec, str]] = []
    named: list[JobSpec] = []
    zoo = [s for s in specs if model_ref(s.model.arch).zoo is not None]
    libraries = [z for s in zoo if (z := model_ref(s.model.arch).zoo) is not None]
    if not all(catalog.has_names(z) for z in libraries):
        # A cold cache: names and facts in one question per framework (those of an unknown name go unused).
        catalog.ask(libraries, [request(s) for s in zoo])
    for spec in zoo:
        ref = model_ref(spec.model.arch)
        assert ref.zoo is not None
        listing = catalog.listing(ref.zoo)
        if listing is None:
            continue
        unknown = unknown_zoo_model(ref, listing.names, listing.tagged)
        if unknown:
            out.append((spec, unknown))
        else:
            named.append(spec)
    facts = catalog.facts(request(s) for s in named)
    for spec in named:
        found = facts.get(request(spec))
        if found is not None and found.problem:
            out.append((spec, found.problem))
    return out


def check(loaded: LoadedSuite, catalog: Catalog) -> None:
    """Every job under every profile: one UserError naming each job whose model cannot be built as asked."""
    lines: list[str] = []
    base: set[tuple[str, str]] = set()
    for profile in [None, *loaded.suite.profiles]:
        for spec, message in problems(loaded.jobs(profile), catalog):
            if (spec.name, message) in base:
                continue
            base.add((spec.name, message))
            lines.append(f"job {spec.name}" + (f" (profile {profile})" if profile else "") + f": {message}")
    if len(lines) == 1:
        raise UserError(f"{loaded.path}: {lines[0]}")
    if lines:
        body = "\n  ".join(lines)
        raise UserError(f"{loaded.path}: {len(lines)} jobs name models their library cannot build as asked:\n  {body}")


def counts(specs: list[JobSpec], catalog: Catalog) -> dict[str, Parameters]:
    """Total and trainable parameters of each job that can be counted here (the name of a job maps to its
    counts): a twin, and a zoo model whose library is installed, on a dataset whose classes are declared; a
    user's model only its code counts, when it runs."""
    out: dict[str, Parameters] = {}
    counted = [s for s in specs if classes(s) is not None]
    facts = catalog.facts(request(s) for s in counted if model_ref(s.model.arch).zoo is not None)
    for spec in counted:
        if spec.model.twin:
            out[spec.name] = arithmetic(spec)  # type: ignore[assignment]
        elif (found := facts.get(request(spec))) is not None and found.parameters is not None:
            out[spec.name] = found.parameters
    return out
