"""The packages of runner/ follow the path of a job, and a lower layer never imports a higher one.

Ranks, lowest first: a module may import gridrun modules of its own package or of a lower rank only.
`train` (the worker) sees only the store and the schemas; the scheduler sees no framework; nothing but
the CLI imports the CLI. And gridrun uses Ray's public API only: no `ray._*` module, no generated stubs.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RANKS = {
    "schemas": 0,
    "runner": 0,  # runner/__init__.py and runner/errors.py: the version and the error type
    "runner.errors": 0,
    "runner.store": 1,
    "runner.suite": 1,
    "runner.train": 2,
    "runner.execute": 3,
    "runner.prepare": 4,
    "runner.report": 4,
    "runner.plan": 5,
    "runner.schedule": 6,
    "runner.cli": 9,
}
FRAMEWORKS = ("torch", "torchvision", "tensorflow", "keras", "timm")


def _package(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "schemas":
        return "schemas"
    if len(parts) == 1 or parts[1] in ("__init__", "__main__", "__version__"):
        return "runner"
    return ".".join(parts[:2])


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every gridrun import in a file, at module level or inside functions."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "runner" else [node.module]
            out += [(node.lineno, n) for n in names]
    return [(line, m) for line, m in out if m.split(".")[0] in ("runner", "schemas")]


def layer_violations() -> list[str]:
    problems = []
    for path in sorted([*(ROOT / "runner").rglob("*.py"), *(ROOT / "schemas").rglob("*.py")]):
        if path.name == "__main__.py":
            continue
        here = _package(_module_name(path))
        if here not in RANKS:
            problems.append(f"{path.relative_to(ROOT)}: package {here} has no rank in tests/test_layers.py")
            continue
        for line, target in _imports(path):
            there = _package(target)
            if there == here or there not in RANKS:
                continue
            if RANKS[there] >= RANKS[here] and there not in ("runner", "runner.errors"):
                problems.append(f"{path.relative_to(ROOT)}:{line} ({here}) imports {target} ({there})")
    return problems


def test_no_layer_imports_a_higher_one() -> None:
    assert layer_violations() == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself works: a trainer importing the scheduler is caught."""
    bad = ROOT / "runner" / "train" / "_layer_probe.py"
    bad.write_text("from runner.schedule import driver\n")
    try:
        assert any("_layer_probe.py:1" in p and "runner.schedule" in p for p in layer_violations())
    finally:
        bad.unlink()


def test_driver_side_imports_no_framework_and_no_ray_in_the_worker() -> None:
    """Planning and scheduling import no framework; the worker imports neither Ray nor Docker."""
    code = (
        "import sys\n"
        "import runner.cli, runner.schedule.driver, runner.schedule.search, runner.plan, runner.prepare\n"
        "import runner.report\n"
        f"bad = [m for m in {FRAMEWORKS!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    code = (
        "import sys\n"
        "import runner.train.worker, runner.train.torch_trainer\n"
        "bad = [m for m in ('ray', 'docker', 'typer') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# Ray's private modules (ray._private, ray._raylet, ray._common, ...) and its generated protobuf stubs;
# not dunders such as ray.__version__.
RAY_PRIVATE = re.compile(r"^ray\.(_(?!_)|core\.generated\b)")


def ray_private_uses(paths: list[Path]) -> list[str]:
    """Each import of a private Ray module, each `ray._x` attribute, each such module named in a string."""
    problems = []
    for path in paths:
        tree = ast.parse(path.read_text(), filename=str(path))
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # a.b of a.b.c
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                private = RAY_PRIVATE.match(node.module)
                names = [node.module] if private else [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Attribute) and id(node) not in inner:  # ray._private.worker
                parts = [node.attr]
                value = node.value
                while isinstance(value, ast.Attribute):
                    parts.append(value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and value.id == "ray":
                    names = [".".join(["ray", *reversed(parts)])]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # importlib.import_module(...)
                names = [node.value]
            where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            problems += [f"{where}:{node.lineno} {n}" for n in names if RAY_PRIVATE.match(n)]
    return sorted(set(problems))


def test_runner_uses_only_public_ray() -> None:
    assert ray_private_uses(sorted([*(ROOT / "runner").rglob("*.py"), *(ROOT / "schemas").rglob("*.py")])) == []


def test_the_ray_checker_sees_private_uses(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import ray\n"
        "import ray.util.scheduling_strategies\n"
        "from ray.job_submission import JobSubmissionClient\n"
        "from ray._private.utils import check_version_info\n"
        "import ray._raylet\n"
        "from ray import _private\n"
        "from ray.core.generated import ray_client_pb2\n"
        "x = ray._private.services\n"
        "y = importlib.import_module('ray._common.usage')\n"
        "z = ray.util.get_node_ip_address, ray.__version__\n"
    )
    found = sorted(p.split(" ", 1)[1] for p in ray_private_uses([probe]))
    assert found == [
        "ray._common.usage",
        "ray._private",
        "ray._private.services",
        "ray._private.utils",
        "ray._raylet",
        "ray.core.generated",
    ], found
