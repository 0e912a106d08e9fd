"""Hostile and sloppy input: every case is one clear message (exit 2 from the CLI), refused fast, nothing written.

Suite files that repeat keys, expand through aliases, nest without end, multiply a matrix to millions, or
carry huge or invisible values; numbers beyond what a consumer takes; CLI values Ray would choke on; and
job folders that a symbolic link leads out of the results folder.
"""

import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, gridrun
from jobhelp import GOOD, make_job, run_worker

from runner.errors import UserError
from runner.plan import make_plan
from runner.plan.nodes import Node
from runner.prepare import Preparer
from runner.store import ResultsStore
from runner.suite import MAX_SUITE_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_suite

# One job, one epoch of digits at 64 px: a run that would write within seconds, were it let.
TINY = """\
suite: tiny
jobs:
  - name: t
    framework: torch
    executor: process
    model: {arch: alexnet, classifier_width: 16}
    dataset: {name: digits, image_size: 64, limit: 100}
    train: {epochs: 1, batch_size: 32}
    resources: {gpus: 0, cpus: 1}
"""


def suite_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_suite(path)
    return str(info.value)


def with_job(**fields: str) -> str:
    """GOOD with more lines in its job, e.g. train="{epochs: 2}"."""
    return GOOD + "".join(f"    {key}: {value}\n" for key, value in fields.items())


def with_field(field: str, value: str) -> str:
    """GOOD whose job sets the dotted `field` to the YAML text `value` (the job's dataset merges with the defaults')."""
    section, *rest = field.split(".")
    inner = value
    for part in reversed(rest):
        inner = f"{{{part}: {inner}}}"
    if section == "model":
        return GOOD.replace("model: {arch: alexnet}", f"model: {{arch: alexnet, {inner[1:-1]}}}")
    return with_job(**{section: inner})


# --- duplicate keys ------------------------------------------------------------------------------------


def test_a_repeated_top_level_key_names_both_lines(tmp_path: Path) -> None:
    path = suite_file(tmp_path, GOOD + "suite: t\n")
    message = refusal(path)
    assert message.startswith(f"{path}:9: key 'suite' repeats the key of line 1"), message
    assert "Fix: keep one" in message


def test_a_repeated_nested_key_names_both_lines(tmp_path: Path) -> None:
    path = suite_file(
        tmp_path, with_job(train="\n      optimizer:\n        lr: 0.1\n        momentum: 0.9\n        lr: 2")
    )
    message = refusal(path)
    assert message.startswith(f"{path}:13: key 'lr' repeats the key of line 11"), message
    assert "Fix: keep one" in message


def test_a_repeated_key_in_a_flow_mapping_and_a_spelling_of_the_same_value(tmp_path: Path) -> None:
    # `true` and `yes` are the same YAML 1.1 boolean: a dict would keep only one.
    path = suite_file(tmp_path, GOOD.replace("model: {arch: alexnet}", "model: {arch: alexnet, arch: vgg16}"))
    assert "key 'arch' repeats the key of line 8" in refusal(path)
    path = suite_file(tmp_path, GOOD + "profiles:\n  p: {labels: {true: 1, yes: 2}}\n")
    assert f"{path}:10: key 'yes' repeats the key of line 10" in refusal(path)


def test_a_merge_key_may_be_overridden(tmp_path: Path) -> None:
    path = suite_file(
        tmp_path,
        GOOD.replace("  - name: a\n", "  - <<: &base {name: x, framework: tensorflow}\n    name: a\n"),
    )
    (job,) = load_suite(path).jobs()
    assert (job.name, job.framework) == ("a", "torch")


# --- limits ------------------------------------------------------------------------------------------------


def laughs(levels: int = 9) -> str:
    """The "billion laughs": each level an alias list of nine of the level before; 9**9 values expanded."""
    lines = ["suite: s", "l0: &l0 [ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"jobs: [*l{levels}]"]) + "\n"


@pytest.mark.timeout(60)
def test_billion_laughs_is_refused_at_once_without_memory_growth(tmp_path: Path) -> None:
    path = suite_file(tmp_path, laughs())
    assert path.stat().st_size < 700
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        message = refusal(path)
    finally:
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert seconds < 1.0 and peak < 20 * 2**20, (seconds, peak)
    assert message.startswith(f"{path}:") and f"above {MAX_YAML_NODES:,} values" in message, message
    assert "aliases" in message and "Fix:" in message


def test_a_file_of_too_many_values_is_refused_without_aliases(tmp_path: Path) -> None:
    path = suite_file(tmp_path, GOOD + f"  - {{name: b, seeds: [{', '.join(['1'] * MAX_YAML_NODES)}]}}\n")
    assert path.stat().st_size < MAX_SUITE_BYTES
    message = refusal(path)
    assert f"{path}:9: the file holds more than {MAX_YAML_NODES:,} values" in message and "Fix:" in message, message


@pytest.mark.timeout(60)
def test_an_alias_inside_what_it_names_is_refused(tmp_path: Path) -> None:
    message = refusal(suite_file(tmp_path, GOOD.replace("jobs:\n", "jobs: &j\n  - *j\n")))
    assert "alias *j is inside the value it names" in message and "Fix:" in message


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def alias_chain(links: int, each: int = 8) -> str:
    """Little nesting per line, but each alias adds its anchor's depth: `links` * `each` levels expanded."""
    lines = [f"n0: &n0 {nested(each)}"]
    lines += [f"n{i}: &n{i} {'[' * each}*n{i - 1}{']' * each}" for i in range(1, links)]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra", [f"jobs: {nested(3000)}\n", alias_chain(5)], ids=["brackets", "through_aliases"])
def test_deep_nesting_is_refused(extra: str, tmp_path: Path) -> None:
    message = refusal(suite_file(tmp_path, "suite: s\n" + extra.replace("jobs:", "more:") + "jobs: [{}]\n"))
    assert f"deeper than {MAX_YAML_DEPTH} levels" in message and "Fix:" in message, message


@pytest.mark.timeout(60)
def test_a_huge_matrix_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    axes = "".join(
        f"    {key}: [{', '.join(str(i) for i in range(1, 101))}]\n" for key in ("train.seed", "train.epochs")
    )
    path = suite_file(
        tmp_path,
        GOOD + 'matrix:\n  name: "m-{seed}-{epochs}-{limit}"\n  job: {framework: torch, model: {arch: alexnet}}\n'
        f"  axes:\n{axes}    dataset.limit: [{', '.join(str(i) for i in range(10, 110))}]\n",
    )
    t0 = time.perf_counter()
    message = refusal(path)
    assert time.perf_counter() - t0 < 2.0
    assert "matrix.axes" in message and "100 x 100 x 100 = 1,000,000 jobs" in message, message
    assert "10,000" in message and "Fix:" in message


def test_an_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = suite_file(tmp_path, GOOD + ("# padding\n" * (MAX_SUITE_BYTES // 10 + 1)))
    message = refusal(path)
    assert message.startswith(f"{path} is larger than 1 MiB") and "Fix:" in message, message


# --- values echoed in messages -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "shown"),
    [
        ({"train": '{epochs: "' + "x" * 100_000 + '"}'}, "(got 'xxxxxxxxxx"),
        ({"train": "\n      ? " + "k" * 10_000 + "\n      : 1"}, "unknown key 'kkkkkkkkkk"),
        ({"train": '\n      ? "k\\x07' + "k" * 10_000 + '"\n      : 1'}, "unknown key 'k\\x07kkkkkk"),
        ({"image": "i" * 100_000}, "image 'iiiiiiiiii"),
        ({"executor": "e" * 100_000}, "unknown executor 'eeeeeeeeee"),
    ],
    ids=["value_100kB", "key_10kB", "key_with_a_bell", "image_100kB", "executor_100kB"],
)
def test_a_huge_value_is_quoted_as_a_short_excerpt(extra: dict[str, str], shown: str, tmp_path: Path) -> None:
    message = refusal(suite_file(tmp_path, with_job(**extra)))
    assert shown in message and "…'" in message, message[:500]
    assert len(message) < 1000 and "\x07" not in message, message[:500]


def test_a_huge_job_name_is_quoted_short_everywhere(tmp_path: Path) -> None:
    message = refusal(suite_file(tmp_path, GOOD.replace("name: a", "name: " + "n" * 100_000)))
    assert "is not a safe name" in message and len(message) < 1000, message[:500]


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (GOOD.replace("name: a", 'name: "abc\\n"'), "'abc\\n' is not a safe name"),
        (GOOD.replace("name: a", 'name: "ab\\tc"'), "'ab\\tc' is not a safe name"),
        (GOOD.replace("name: a", 'name: "a\\x00"'), "'a\\x00' is not a safe name"),
        (GOOD.replace("suite: s", 'suite: "s\\n"'), "'s\\n' is not a safe name"),
        (GOOD + 'profiles:\n  "cpu\\n": {resources: {gpus: 0}}\n', "'cpu\\n' is not a safe name"),
        (with_job(resources='{labels: {gpu-type: "A100\\n"}}'), "'A100\\n' is not a node label selector"),
        (with_job(resources='{custom: {"A100\\n": 1}}'), "'A100\\n' is not a resource name"),
        (with_field("model.weights", '"w\\x00.pth"'), "'w\\x00.pth' holds a control character"),
        (with_job(image='"gridrun-torch:1\\n"'), "image 'gridrun-torch:1\\n' is not a Docker image reference"),
    ],
    ids=["trailing_newline", "tab", "nul", "suite_name", "profile_name", "label", "resource", "weights", "image"],
)
def test_names_are_matched_whole_and_control_characters_refused(text: str, shown: str, tmp_path: Path) -> None:
    message = refusal(suite_file(tmp_path, text))
    assert shown in message, message
    assert not any(c in message for c in "\x00\t\n"), "escaped, on one line"


# --- numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("train.optimizer.lr", ".inf"),
        ("train.optimizer.lr", ".nan"),
        ("train.optimizer.lr", "1e400"),
        ("train.optimizer.lr", "1.0e+400"),
        ("train.optimizer.weight_decay", ".nan"),
        ("model.dropout", ".nan"),
        ("resources.memory_gb", ".inf"),
        ("resources.timeout_minutes", ".inf"),
        ("resources.cpus", ".nan"),
        ("resources.custom.A100", ".inf"),
        ("train.schedule.warmup_epochs", ".inf"),
    ],
)
def test_non_finite_numbers_are_refused_naming_the_field(field: str, value: str, tmp_path: Path) -> None:
    message = refusal(suite_file(tmp_path, with_field(field, value)))
    assert f"{field}: Input should be a finite number" in message, message
    assert "\n" not in message, "one problem, one line"


@pytest.mark.parametrize(
    ("field", "yaml_value", "bound"),
    [
        ("train.seed", str(2**40), "less than or equal to 4294967295"),
        ("train.seed", "-1", "greater than or equal to 0"),
        ("dataset.seed", str(2**32), "less than or equal to 4294967295"),
        ("train.optimizer.weight_decay", "5", "less than or equal to 1"),
        ("dataset.synthetic_size", str(10**9), "less than or equal to 1000000"),
        ("dataset.limit", str(10**12), "less than or equal to 10000000"),
        ("resources.memory_gb", "1e9", "less than or equal to 65536"),
        ("resources.timeout_minutes", "1.0e+12", "less than or equal to 100000"),
        ("train.schedule.warmup_epochs", "1000000", "less than or equal to 10000"),
    ],
)
def test_numbers_beyond_what_their_consumer_takes_are_refused(
    field: str, yaml_value: str, bound: str, tmp_path: Path
) -> None:
    message = refusal(suite_file(tmp_path, with_field(field, yaml_value)))
    assert f"{field}: Input should be {bound}" in message, message


def test_a_custom_resource_beyond_what_ray_counts_is_refused(tmp_path: Path) -> None:
    message = refusal(suite_file(tmp_path, with_job(resources="{custom: {A100: 1.0e+12}}")))
    assert "custom resource 'A100' needs an amount above 0 and at most 1,000,000" in message, message


# --- CLI values: one message, exit 2, before Ray starts ------------------------------------------------


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """Where Ray would make its session folder ($RAY_TMPDIR), absent unless Ray starts; short, as Ray's socket
    paths must fit in 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="gr-", dir="/tmp"))
    yield folder / "ray"
    shutil.rmtree(folder, ignore_errors=True)


def refused_before_ray(ray_tmp: Path, *args: str) -> str:
    """Run `gridrun plan jobs/smoke.yaml <args>`; assert exit 2, one message, no traceback, no Ray; the message."""
    proc = gridrun(
        "plan", str(REPO / "jobs/smoke.yaml"), "--executor", "process", *args, env={"RAY_TMPDIR": str(ray_tmp)}
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "Traceback" not in out and proc.stderr.count("error:") == 1 and "Fix:" in proc.stderr, out
    assert "embedded local Ray" not in out and not ray_tmp.exists(), "Ray was started: " + out
    return " ".join(proc.stderr.split())  # rich wraps long lines: compare the words


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--cpus", "0"], "--cpus 0 is not a number of CPUs"),
        (["--cpus", "-2"], "--cpus -2 is not a number of CPUs"),
        (["--gpus", "nan"], "--gpus nan is not a number of GPUs"),
        (["--gpus", "inf"], "--gpus inf is not a number of GPUs"),
        (["--gpus", "-1"], "--gpus -1 is not a number of GPUs"),
        (["--gpus", "1.5"], "--gpus 1.5 is not a number of GPUs"),
    ],
    ids=["cpus_0", "cpus_negative", "gpus_nan", "gpus_inf", "gpus_negative", "gpus_fraction"],
)
def test_cluster_options_are_checked_before_ray_starts(
    option: list[str], fragment: str, ray_tmp: Path, tmp_path: Path
) -> None:
    assert fragment in refused_before_ray(ray_tmp, "--results", str(tmp_path / "r"), *option)
    assert not (tmp_path / "r").exists()


def test_results_and_cache_that_are_files_are_refused_before_ray_starts(ray_tmp: Path, tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("mine")
    assert "--results: " in refused_before_ray(ray_tmp, "--results", str(file))
    assert "cannot be created" in refused_before_ray(ray_tmp, "--results", str(file / "sub"))
    message = refused_before_ray(ray_tmp, "--results", str(tmp_path / "r"), "--cache", str(file))
    assert f"--cache: {file} is a file, not a folder" in message
    assert "--cache: " in refused_before_ray(ray_tmp, "--results", str(tmp_path / "r"), "--cache", str(file / "c"))
    assert file.read_text() == "mine" and not (tmp_path / "r").exists()


def test_a_read_only_results_folder_is_refused_before_ray_starts(ray_tmp: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into a folder without write permission: the case cannot be made as root")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        assert "cannot write in" in refused_before_ray(ray_tmp, "--results", str(folder / "r"))
    finally:
        folder.chmod(0o755)


# --- symbolic links out of the results folder ----------------------------------------------------------


def test_run_refuses_a_job_folder_linked_outside_and_writes_nothing_there(ray_tmp: Path, tmp_path: Path) -> None:
    suite = suite_file(tmp_path, TINY)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "r" / "tiny").mkdir(parents=True)
    (tmp_path / "r" / "tiny" / "t").symlink_to(outside)
    proc = gridrun(
        "run", str(suite), "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "cache"),
        env={"RAY_TMPDIR": str(ray_tmp)}, timeout=300,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out and proc.stderr.count("error:") == 1, out
    link = tmp_path / "r" / "tiny" / "t"
    message = " ".join(proc.stderr.split())  # as the terminal's width wrapped it
    assert f"{link} is a symbolic link to {outside}" in message and "Fix: remove the link" in message, out
    assert not ray_tmp.exists(), "refused before Ray starts"
    assert list(outside.iterdir()) == []
    assert sorted(os.listdir(tmp_path / "r" / "tiny")) == ["t"]


NODES = [Node("n1", "host1", cpus=8, gpus=0, memory_gb=32)]


def plan_in(tmp_path: Path, results: Path) -> list:
    loaded = load_suite(suite_file(tmp_path, TINY))
    preparer = Preparer(tmp_path / "cache", download=False, say=lambda m: None)
    store = ResultsStore.open(results, create=True)
    return make_plan(loaded, [preparer.prepare(s) for s in loaded.jobs()], NODES, store, say=lambda m: None)


@pytest.mark.parametrize("where", ["suite", "job", "checkpoints", "tb", "status.json", "log.txt", "tb/deep"])
def test_the_plan_refuses_any_link_leading_out(where: str, tmp_path: Path) -> None:
    results, outside = tmp_path / "r", tmp_path / "outside"
    outside.mkdir()
    job = results / "tiny" / "t"
    link = {"suite": results / "tiny", "job": job}.get(where, job / where)
    link.parent.mkdir(parents=True, exist_ok=True)
    target = outside / "status.json" if "." in where else outside
    link.symlink_to(target)  # status.json and log.txt lead to files not there yet: opening them would create them
    with pytest.raises(UserError) as info:
        plan_in(tmp_path, results)
    message = str(info.value)
    assert f"{link} is a symbolic link to {target}" in message and "Fix: remove the link" in message, message
    assert "nothing was run" in message
    assert list(outside.iterdir()) == []


def test_links_that_stay_inside_are_fine(tmp_path: Path) -> None:
    results = tmp_path / "r"
    job = results / "tiny" / "t"
    (job / "kept").mkdir(parents=True)
    (job / "checkpoints").symlink_to(job / "kept")
    (plan,) = plan_in(tmp_path, results)
    assert plan.action == "run"


def test_the_worker_refuses_a_link_out_of_its_job_folder(tmp_path: Path, cache: Path) -> None:
    paths = make_job(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    paths.checkpoints.symlink_to(outside)
    proc = run_worker(paths, cache, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert f"{paths.checkpoints} is a symbolic link to {outside}" in proc.stdout and "Traceback" not in proc.stdout
    assert list(outside.iterdir()) == []
