"""What the plan knows of a cluster: its alive nodes and what each offers (filled by runner.schedule)."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Node:
    """One alive node and what it offers."""

    node_id: str
    host: str
    cpus: float
    gpus: float
    memory_gb: float
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
