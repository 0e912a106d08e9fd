"""Searches on Ray Tune: trials are gridrun jobs, ASHA stops the worst early, Ctrl-C and the same command resume,
and a bad search block is one message from `gridrun validate`.

The searches train AlexNet on digits at 64 px on the CPU (process executor, one core a trial, two at once)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, gridrun
from jobhelp import GOOD
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from runner.store import ResultsStore
from schemas import JobState, RunResult, SpecFile

# The study's search in small: a good and a poor learning rate (a grid, so that ASHA has a trial to stop whatever
# order the trials report in) by two widths. The good rate reaches 90% on digits in five epochs.
SEARCH = {
    "suite": "digits-search",
    "defaults": {
        "framework": "torch",
        "dataset": {"name": "digits", "image_size": 64},
        "model": {"arch": "alexnet", "dropout": 0.2},
        "train": {
            "epochs": 5,
            "batch_size": 32,
            "optimizer": {"name": "adam", "lr": 0.001},
            "schedule": {"name": "onecycle"},
            "augment": {"random_crop": False, "horizontal_flip": False},  # a mirrored digit is another shape
        },
        "resources": {"gpus": 0, "cpus": 1},
    },
    "search": {
        "name": "lr-width",
        "space": {
            "train.optimizer.lr": {"grid": [1.0e-5, 1.0e-3]},
            "model.classifier_width": {"choice": [128, 256]},
        },
        "samples": 2,
        "metric": "val_accuracy",
        "scheduler": {"name": "asha", "grace_epochs": 1, "reduction_factor": 2},
        "max_concurrent": 2,
    },
}
CONTRACT = ("spec.json", "status.json", "progress.json", "result.json", "log.txt", "tb", "checkpoints")


def write_suite(folder: Path, suite: dict) -> Path:
    path = folder / f"{suite['suite']}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def run_args(suite: Path, root: Path, *extra: str) -> list[str]:
    return ["run", str(suite), "--results", str(root / "results"), "--cache", str(root / "cache"), "--cpus", "2",
            "--executor", "process", *extra]  # fmt: skip


def trial_folders(root: Path, suite: str, search: str) -> dict[str, Path]:
    folder = root / "results" / suite / search
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "spec.json").is_file()}


def check_contract(trial: Path, finished: bool) -> None:
    """A trial's folder holds what every job's does; a finished one its result, a stopped one its checkpoints."""
    spec = SpecFile.model_validate_json((trial / "spec.json").read_text())
    assert spec.trial is not None and spec.job == trial.name and spec.identity is not None
    assert spec.spec.name == trial.name and spec.trial.values
    status = ResultsStore.open(trial.parent.parent.parent).suite(spec.suite).search(spec.trial.search)
    status = status.trial(trial.name).read_status()
    assert status is not None and status.spec_hash == spec.spec_hash and status.started_at is not None
    for name in CONTRACT:
        if name == "result.json" and not finished:
            assert not (trial / name).exists()
            continue
        assert (trial / name).exists(), f"{trial.name} has no {name}"
    assert any((trial / "checkpoints").glob("last*")), f"{trial.name} keeps no last checkpoint"


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("search")
    suite = write_suite(root, SEARCH)
    started = time.monotonic()
    proc = gridrun(*run_args(suite, root), timeout=1500)
    print(f"search of {SEARCH['search']['samples'] * 2} trials: {time.monotonic() - started:.0f}s")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    return root, proc


@pytest.mark.slow
def test_search_completes_stops_the_worst_early_and_finds_a_good_trial(searched) -> None:
    root, proc = searched
    trials = trial_folders(root, "digits-search", "lr-width")
    assert list(trials) == ["lr-width-1", "lr-width-2", "lr-width-3", "lr-width-4"], proc.stdout[-3000:]
    store = ResultsStore.open(root / "results").suite("digits-search").search("lr-width")
    states = {name: store.trial(name).read_status() for name in trials}
    stopped = [n for n, s in states.items() if s.state == JobState.STOPPED]
    assert stopped, {n: (s.state, s.reason) for n, s in states.items()}
    assert set(states) - set(stopped) == {n for n, s in states.items() if s.state == JobState.SUCCEEDED}
    for name in stopped:
        stop = states[name].early_stop
        assert stop is not None and stop.scheduler == "asha" and stop.metric == "val_accuracy"
        assert stop.rung >= 1 and 1 <= stop.epoch < 5 and stop.epochs == 5 and stop.value is not None
        assert f"rung {stop.rung} (epoch {stop.epoch} of 5)" in states[name].reason
        progress = json.loads((trials[name] / "progress.json").read_text())
        assert progress["epoch"] <= stop.epoch + 1, "a stopped trial's worker went on training"
        check_contract(trials[name], finished=False)
    best = 0.0
    for name in set(trials) - set(stopped):
        check_contract(trials[name], finished=True)
        result = RunResult.model_validate_json((trials[name] / "result.json").read_text())
        assert [e.epoch for e in result.epochs] == [1, 2, 3, 4, 5]
        best = max(best, result.final_test_accuracy)
    assert best >= 0.90, best
    summary = json.loads((root / "results" / "digits-search" / "summary.json").read_text())["search"]
    assert summary["stopped_early"] == len(stopped) and summary["epochs_full"] == 20
    assert summary["epochs_run"] < 20 and summary["best"]["trial"] not in stopped
    print(f"epochs run: {summary['epochs_run']} of {summary['epochs_full']} for every trial to its end")


@pytest.mark.slow
def test_report_has_the_search_section_and_tensorboard_the_trials_hparams(searched) -> None:
    root, _ = searched
    suite = root / "results" / "digits-search"
    report = (suite / "report.md").read_text()
    assert "## Search lr-width" in report and "**Best trial: lr-width-" in report
    assert "**Early stopping:**" in report and "epoch(s) run against 20 for every trial to its end" in report
    ranking = [line for line in report.splitlines() if line.startswith("| ") and "lr-width-" in line]
    assert len(ranking) == 4, report
    assert (suite / "plots" / "search-lr-width-parallel.png").stat().st_size > 5000
    assert (suite / "plots" / "search-lr-width-best.png").is_file()
    assert "search-lr-width-parallel.png" in report and "data:image/png;base64" in (suite / "report.html").read_text()
    for trial in trial_folders(root, "digits-search", "lr-width").values():
        acc = EventAccumulator(str(trial / "tb"))
        acc.Reload()
        assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
        content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert {"train.optimizer.lr", "model.classifier_width", "search", "trial"} <= set(info.hparams)
        assert info.hparams["search"].string_value == "lr-width"


@pytest.mark.slow
def test_status_and_plan_show_the_search(searched) -> None:
    root, _ = searched
    status = gridrun("status", str(root / "results"))
    assert status.returncode == 0 and "digits-search/lr-width/lr-width-1" in status.stdout, status.stdout
    assert "stopped" in status.stdout
    plan = gridrun("plan", str(root / "digits-search.yaml"), "--results", str(root / "results"),
                   "--cache", str(root / "cache"), "--cpus", "2", "--executor", "process")  # fmt: skip
    assert plan.returncode == 0, plan.stdout + plan.stderr
    for words in ("search lr-width", "train.optimizer.lr", "grid 1e-05, 0.001", "4 (2 samples x 2 grid)",
                  "asha: grace 1 epoch(s), keep the best 1/2 at epochs 1, 2, 4", "done"):  # fmt: skip
        assert words in plan.stdout, plan.stdout


# --- Ctrl-C and the same command ------------------------------------------------------------------------------

# Three short trials one at a time, every one to its end (fifo): a Ctrl-C once the second has one epoch, so two
# epochs (about 12 s here) are left to it, more than Tune takes to end a trial (its 5 s grace, then a kill).
RESUMED = {
    **SEARCH,
    "suite": "digits-resume",
    "defaults": {
        **SEARCH["defaults"],
        "dataset": {"name": "digits", "image_size": 64, "limit": 300},
        "train": {**SEARCH["defaults"]["train"], "epochs": 3},
    },
    "search": {
        "name": "lr",
        "space": {"train.optimizer.lr": {"loguniform": [3.0e-4, 3.0e-3]}},
        "samples": 3,
        "scheduler": "fifo",
        "max_concurrent": 1,
    },
}


@pytest.mark.slow
def test_ctrl_c_then_the_same_command_resumes_without_running_a_finished_trial_again(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, RESUMED)
    cmd = [sys.executable, "-m", "runner", *run_args(suite, tmp_path)]
    env = {**os.environ, "COLUMNS": "200"}
    with open(tmp_path / "first.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 900
        second = tmp_path / "results" / "digits-resume" / "lr" / "lr-2" / "progress.json"
        while time.monotonic() < deadline and proc.poll() is None and _epoch(second) < 1:
            time.sleep(0.3)
        assert _epoch(second) >= 1, (tmp_path / "first.txt").read_text()[-4000:]
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=180)
    first = (tmp_path / "first.txt").read_text()
    assert code == 130, first[-4000:]
    store = ResultsStore.open(tmp_path / "results").suite("digits-resume").search("lr")
    assert store.trial("lr-1").read_status().state == JobState.SUCCEEDED
    interrupted = store.trial("lr-2").read_status()
    assert interrupted.state == JobState.CANCELLED and "cancelled by Ctrl-C" in interrupted.reason, interrupted
    assert not _workers_in(tmp_path), "a worker outlived the Ctrl-C"
    done_before = (tmp_path / "results" / "digits-resume" / "lr" / "lr-1" / "result.json").read_bytes()

    again = gridrun(*run_args(suite, tmp_path), timeout=1200)
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    trials = trial_folders(tmp_path, "digits-resume", "lr")
    assert list(trials) == ["lr-1", "lr-2", "lr-3"]
    assert (trials["lr-1"] / "result.json").read_bytes() == done_before, "a finished trial ran again"
    assert (trials["lr-1"] / "log.txt").read_text().count("epoch 1/3") == 1
    for name, folder in trials.items():
        status = store.trial(name).read_status()
        assert status.state == JobState.SUCCEEDED, (name, status)
        result = RunResult.model_validate_json((folder / "result.json").read_text())
        assert [e.epoch for e in result.epochs] == [1, 2, 3]
    resumed = RunResult.model_validate_json((trials["lr-2"] / "result.json").read_text())
    # Stopped before its first checkpoint, after it, or after its last one (before result.json was written).
    assert resumed.resumed_from_epoch in (None, 2, 3, 4)
    assert "resume: 1 of 3 trials finished" in again.stdout, again.stdout[:4000]


def _epoch(progress: Path) -> int:
    """The epoch a trial's progress.json has reached; 0 before it is written."""
    try:
        return int(json.loads(progress.read_text()).get("epoch") or 0)
    except (OSError, ValueError, AttributeError):
        return 0


def _workers_in(folder: Path) -> list[str]:
    """Command lines of the worker processes that train in `folder`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "runner.train.worker" in text and str(folder) in text:
            found.append(text)
    return found


# --- Docker --------------------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_the_same_search_in_docker_for_two_trials(tmp_path: Path) -> None:
    """Two trials in the torch image (its code layer built first when it is out of date), ASHA stopping one."""
    from runner.execute import images

    client, why = images.try_connect(timeout=5)
    if client is None:
        if os.environ.get("REQUIRE_DOCKER") == "1":
            pytest.fail(f"REQUIRE_DOCKER=1 but no Docker daemon: {why}")
        pytest.skip(f"no Docker daemon: {why}")
    suite = {
        **SEARCH,
        "suite": "digits-docker",
        "defaults": {
            **SEARCH["defaults"],
            "dataset": {"name": "digits", "image_size": 64, "limit": 300},  # what it learns is tested above
            "train": {**SEARCH["defaults"]["train"], "epochs": 2},
        },
        "search": {**SEARCH["search"], "space": {"train.optimizer.lr": {"grid": [1.0e-5, 8.0e-4]}}, "samples": 1},
    }
    path = write_suite(tmp_path, suite)
    args = ["run", str(path), "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "cache"),
            "--cpus", "2", "--executor", "docker"]  # fmt: skip
    proc = gridrun(*args, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    store = ResultsStore.open(tmp_path / "results").suite("digits-docker").search("lr-width")
    names = [t.name for t in store.trials()]
    assert names == ["lr-width-1", "lr-width-2"]
    for trial in store.trials():
        status = trial.read_status()
        assert status.executor == "docker" and status.state in (JobState.SUCCEEDED, JobState.STOPPED), status
        assert "docker run" in trial.log_text()
    left = client.containers.list(all=True, filters={"label": "gridrun.suite=digits-docker"})
    assert not left, [c.name for c in left]


# --- bad input ------------------------------------------------------------------------------------------------

BAD = {
    "unknown distribution": (
        {"train.optimizer.lr": {"normal": [0.001, 0.1]}},
        "search.space.train.optimizer.lr: unknown distribution 'normal': use one of uniform, loguniform, randint, "
        "choice, grid",
    ),
    "empty choice": (
        {"model.classifier_width": {"choice": []}},
        "search.space.model.classifier_width: choice has no values: list at least one",
    ),
    "loguniform at 0": (
        {"train.optimizer.lr": {"loguniform": [0, 0.01]}},
        "search.space.train.optimizer.lr: loguniform needs bounds above 0",
    ),
    "not a field": (
        {"train.optimiser.lr": {"loguniform": [1.0e-4, 0.01]}},
        "search.space.train.optimiser.lr: 'train.optimiser.lr' is not a job field: train has no 'optimiser'",
    ),
    "outside the field's bounds": (
        {"train.optimizer.lr": {"loguniform": [1.0e-4, 20]}},
        "search.space.train.optimizer.lr: loguniform bound 20 is not a valid train.optimizer.lr: Input should be "
        "less than or equal to 10",
    ),
    "a field trials may not vary": (
        {"resources.gpus": {"choice": [0, 1]}},
        "a search cannot vary resources.gpus",
    ),
}


def _bad_suite(tmp_path: Path, search: dict) -> Path:
    suite = yaml.safe_load(GOOD)
    suite["search"] = {"name": "sweep", "base": "a", "space": {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}}
    suite["search"].update(search)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_space_is_one_message_and_exit_2(tmp_path: Path, case: str) -> None:
    space, message = BAD[case]
    path = _bad_suite(tmp_path, {"space": space})
    proc = gridrun("validate", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and message in " ".join(proc.stderr.split()), proc.stderr
    assert proc.stderr.count("error:") == 1


def test_a_base_naming_no_job_is_one_message(tmp_path: Path) -> None:
    path = _bad_suite(tmp_path, {"base": "alexnet-tf"})
    proc = gridrun("validate", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "search.base 'alexnet-tf' names no job of the suite; the jobs are a." in " ".join(proc.stderr.split())


def test_a_bad_search_writes_nothing(tmp_path: Path) -> None:
    path = _bad_suite(tmp_path, {"space": {"model.classifier_width": {"choice": []}}})
    proc = gridrun("run", str(path), "--results", str(tmp_path / "results"), "--cache", str(tmp_path / "cache"))
    assert proc.returncode == 2 and "choice has no values" in proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_a_good_search_validates_and_names_its_trials(tmp_path: Path) -> None:
    path = _bad_suite(tmp_path, {"space": {"model.classifier_width": {"choice": [64, 128]}}, "samples": 3})
    proc = gridrun("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "search 'sweep' of 3 trial(s)" in proc.stdout


def test_the_study_holds_its_complementary_experiment_as_a_search() -> None:
    from runner.suite import load_suite

    loaded = load_suite(REPO / "jobs" / "alexnet-small-dense.yaml")
    search = loaded.search()
    assert search is not None and search.spec.base == "alexnet-tf-scratch"
    base = search.base
    assert (base.framework, base.model.arch, base.model.weights) == ("tensorflow", "alexnet", "none")
    assert set(search.spec.space) == {"train.optimizer.lr", "model.classifier_width"}
    assert search.spec.scheduler.name == "asha" and search.spec.trials == 16
    assert search.trial_name(3) == "small-dense-03"
    cpu = loaded.search("cpu")
    assert cpu.base.dataset.image_size == 64 and cpu.base.train.epochs == 4 and cpu.spec.scheduler.rungs(4) == [2]


def test_optuna_draws_within_the_space() -> None:
    """Optuna's TPE takes the space as gridrun hands it to Tune, and draws values inside its bounds (randint's
    high included). The random searcher is the one the searches above run."""
    pytest.importorskip("optuna")
    from runner.schedule.search import _searcher, param_space
    from schemas import SearchSpec

    spec = SearchSpec.model_validate(
        {
            "name": "s",
            "searcher": "optuna",
            "space": {
                "train.optimizer.lr": {"loguniform": [1.0e-4, 1.0e-2]},
                "model.classifier_width": {"choice": [64, 128]},
                "train.batch_size": {"randint": [16, 17]},
                "model.dropout": {"uniform": [0.1, 0.5]},
            },
        }
    )
    algorithm = _searcher(spec)
    assert algorithm.set_search_properties("val_accuracy", "max", param_space(spec))
    sizes = set()
    for i in range(12):
        drawn = algorithm.suggest(f"trial-{i}")
        assert 1.0e-4 <= drawn["train.optimizer.lr"] <= 1.0e-2 and drawn["model.classifier_width"] in (64, 128)
        assert 0.1 <= drawn["model.dropout"] <= 0.5
        sizes.add(drawn["train.batch_size"])
    assert sizes == {16, 17}


def test_the_plan_starts_a_changed_search_again_and_says_what_changed(tmp_path: Path) -> None:
    """A search resumes only while its block, its base and its code are those it started with; the plan says which
    part changed (no Ray needed: the plan reads the store)."""
    from runner.plan.nodes import Node
    from runner.plan.search import plan_search
    from runner.prepare import Preparer
    from runner.suite import load_suite

    node = [Node("n1", "host", cpus=2, gpus=0, memory_gb=8)]
    results = ResultsStore.open(tmp_path / "results", create=True)

    def planned(suite: dict):
        loaded = load_suite(write_suite(tmp_path, suite))
        resolved = loaded.search()
        base = Preparer(tmp_path / "cache", download=False, say=lambda _: None).prepare(resolved.base)
        return plan_search(loaded, resolved, base, node, results, executor="process", say=lambda _: None)

    first = planned(RESUMED)
    assert (first.action, first.why) == ("new", "new")
    first.store.write_definition(first.definition())
    (first.store.storage.local / "tune").mkdir()  # Tune's experiment folder, as a started search leaves it
    again = planned(RESUMED)
    assert (again.action, again.why) == ("resume", "resume: 0 of 3 trials finished")
    wider = {**RESUMED, "search": {**RESUMED["search"], "samples": 4}}
    assert planned(wider).why.startswith("the search block changed: starts again")
    longer = {**RESUMED, "defaults": {**RESUMED["defaults"], "train": {**RESUMED["defaults"]["train"], "epochs": 4}}}
    assert planned(longer).why.startswith("its base changed: train.epochs 3 → 4: starts again")
