"""The cache files a job reads (dataset and pretrained weights), and sending them to a node that lacks them.

The prepare step puts every input into the driver's cache. A node of a remote cluster may not see that
folder. The job's task then says which inputs it misses; the driver sends each of them once per run
through Ray's object store, in pieces, and the node keeps them in its own cache (under the node folder of
transfer.node_root()), where later jobs on that node find them; transfer.send_files and receive_files
carry them. Files the suite names by path (a dataset.path, a weights file) are not sent: they must be at
that path on every node.
"""

from dataclasses import dataclass
from pathlib import Path

from runner.schedule.transfer import node_root
from runner.train import data, weights
from schemas import JobSpec


@dataclass(frozen=True)
class Input:
    """One file a job reads from the cache: its path inside the cache and its size."""

    rel: str
    size: int


def of_job(spec: JobSpec, cache: Path) -> list[Input]:
    """The files the job finds through the cache folder it is given (a dataset without `path`, ImageNet
    weights), as the driver holds them; missing ones are left out."""
    paths = [] if spec.dataset.path else data.input_files(spec.dataset, cache)
    if spec.model.weights == "imagenet":
        paths.append(weights.imagenet_path(spec.framework, spec.model.arch, cache))
    root = Path(cache).resolve()
    out = []
    for path in paths:
        path = path.resolve()
        if path.is_relative_to(root) and path.is_file():
            out.append(Input(path.relative_to(root).as_posix(), path.stat().st_size))
    return out


def missing(cache: Path, wanted: list[Input]) -> list[Input]:
    """The inputs `cache` does not hold (same size counts as held: files in the cache never change)."""
    out = []
    for item in wanted:
        try:
            if (Path(cache) / item.rel).stat().st_size == item.size:
                continue
        except OSError:
            pass
        out.append(item)
    return out


def node_cache() -> Path:
    """This node's own copy of the inputs it was sent."""
    return node_root() / "cache"
