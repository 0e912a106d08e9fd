"""`gridrun tensorboard` over real smoke-run results, and the extras a run adds to its TensorBoard folder."""

import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, gridrun
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from runner.report.tensorboard import job_logdirs
from runner.store.layout import JobPaths
from runner.train.common import TAGS
from runner.train.tbextras import TAG_CONFUSION, TAG_PER_CLASS, TAG_SPEC, confusion_png, write_run_extras


@pytest.fixture
def results(smoke_results: Path, tmp_path: Path) -> Path:
    """A results tree of two suites (the smoke run, and a copy of it named smoke-old), extras written."""
    root = tmp_path / "results"
    for name in ("smoke", "smoke-old"):
        shutil.copytree(smoke_results, root / name, ignore=shutil.ignore_patterns("checkpoints", "plots", "report.*"))
        for job in (root / name).iterdir():
            paths = JobPaths(job)
            if (result := paths.read_result()) is not None:
                write_run_extras(paths, result)
    return root


def tb_runs(root: Path) -> set[str]:
    """<suite>/<job> of every job that wrote TensorBoard events."""
    return {f"{p.parent.parent.parent.name}/{p.parent.parent.name}" for p in root.glob("*/*/tb/events.out.tfevents.*")}


def test_run_extras_are_read_by_tensorboard(results: Path) -> None:
    paths = JobPaths(results / "smoke" / "smoke-torch")
    result = paths.read_result()
    assert result is not None
    events = EventAccumulator(str(paths.tb), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    image = events.Images(TAG_CONFUSION)[-1]
    png = Image.open(io.BytesIO(image.encoded_image_string))
    assert png.format == "PNG" and png.size == (image.width, image.height)
    assert image.step == len(result.epochs)
    spec = events.Tensors(TAG_SPEC)[-1].tensor_proto.string_val[0].decode()
    assert "smoke/smoke-torch" in spec and result.spec_hash in spec
    assert f"| model.arch | {result.spec.model.arch} |" in spec
    per_class = events.Tensors(TAG_PER_CLASS)[-1].tensor_proto.string_val[0].decode()
    for c in result.per_class_accuracy:
        assert f"| {c.name} | {c.accuracy:.2%} | {c.support} |" in per_class
    # The trainer's own scalars are there too, under the shared tags.
    assert set(TAGS.values()) <= set(events.Tags()["scalars"])


def test_confusion_heatmap_is_drawn_without_matplotlib() -> None:
    code = (
        "import sys, runner.train.tbextras as t; png, h, w = t.confusion_png([[5, 0], [1, 4]], ['cat', 'dog'], 'x');"
        "assert 'matplotlib' not in sys.modules; print(h, w)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # A diagonal matrix: the diagonal cells darkest blue, the others white.
    n = 4
    png, height, width = confusion_png((np.eye(n, dtype=int) * 25).tolist(), [f"class {i}" for i in range(n)])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape == (height, width, 3)
    dark = np.all(pixels == (8, 48, 107), axis=-1).sum()
    cell = min(520 // n, 48)
    assert dark > 0.8 * n * cell**2  # the diagonal, less the counts written on it


def test_job_logdirs_names_each_run_suite_slash_job(results: Path) -> None:
    everything = job_logdirs(results)
    assert set(everything) == {f"{s}/{j.name}" for s in ("smoke", "smoke-old") for j in (results / "smoke").iterdir()
                               if (j / "spec.json").is_file()}  # fmt: skip
    assert everything["smoke-old/smoke-torch"].local.tb == results / "smoke-old" / "smoke-torch" / "tb"
    assert set(job_logdirs(results / "smoke")) == {n for n in everything if n.startswith("smoke/")}
    assert list(job_logdirs(results / "smoke" / "smoke-tf")) == ["smoke/smoke-tf"]


class Server:
    """`gridrun tensorboard` as a subprocess, its output read line by line."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "tensorboard", *args], cwd=REPO, env={**os.environ, **env},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.seen)
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout}s:\n{''.join(self.seen)}")


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def post(url: str, body: dict) -> Any:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def poll(fetch: Any, until: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


@pytest.mark.runs
def test_tensorboard_serves_every_run_as_suite_slash_job(results: Path, smoke_results: Path, tmp_path: Path) -> None:
    expected = tb_runs(results)
    assert {"smoke/smoke-torch", "smoke/smoke-tf", "smoke-old/smoke-fallback"} <= expected
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = Server(str(results), "--port", "0", env={"TMPDIR": str(temp)})
    try:
        line = server.wait_for("TensorBoard at http://127.0.0.1:")
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":6006/")
        runs = poll(lambda: set(get(url + "data/runs")), lambda r: r >= expected)
        assert runs == expected
        # A run stopped before its first epoch ended (the smoke suite's timeout, when a warm start opens its writer
        # in time) has its hparams session but no scalars, images or spec text: those are asked of the others.
        trained = {run for run in expected if JobPaths(results / run).read_result() is not None}
        assert {"smoke/smoke-torch", "smoke/smoke-tf"} <= trained
        tags = poll(lambda: get(url + "data/plugin/scalars/tags"), lambda t: set(t) >= trained)
        for run in trained:
            assert set(TAGS.values()) <= set(tags[run]), run
        result = JobPaths(results / "smoke" / "smoke-torch").read_result()
        query = urllib.parse.urlencode({"run": "smoke/smoke-torch", "tag": TAGS["test_accuracy"]})
        series = get(url + "data/plugin/scalars/scalars?" + query)
        assert [step for _, step, _ in series] == [e.epoch for e in result.epochs]
        assert [v for _, _, v in series] == pytest.approx([e.test_accuracy for e in result.epochs], abs=1e-6)
        images = get(url + "data/plugin/images/tags")
        texts = get(url + "data/plugin/text/tags")
        for run in trained:
            assert TAG_CONFUSION in images[run] and TAG_SPEC in texts[run], run
        # HParams: one session per run, with the trainers' hyper-parameters.
        experiment = post(url + "data/plugin/hparams/experiment", {"experimentName": ""})
        assert {"framework", "arch", "lr", "batch_size"} <= {h["name"] for h in experiment["hparamInfos"]}
        groups = post(url + "data/plugin/hparams/session_groups", {
            "experimentName": "", "colParams": [], "startIndex": 0, "sliceSize": 1000,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"],
        })  # fmt: skip
        assert {s["name"] for g in groups["sessionGroups"] for s in g["sessions"]} == expected

        # A job that starts while TensorBoard runs appears under its name.
        shutil.copytree(results / "smoke" / "smoke-torch", results / "late" / "smoke-torch")
        server.wait_for("new run: late/smoke-torch", timeout=30)
        runs = poll(lambda: set(get(url + "data/runs")), lambda r: "late/smoke-torch" in r, timeout=30)
        assert "late/smoke-torch" in runs
    finally:
        server.proc.send_signal(signal.SIGINT)
        code = server.proc.wait(timeout=30)
    server.wait_for("TensorBoard stopped.", timeout=5)
    assert code == 0
    assert not list(temp.glob("gridrun-tensorboard-*")), "the view of links was left behind"
    assert (smoke_results / "smoke-torch" / "tb").is_dir()  # removing the view never touches the results


def test_tensorboard_mistakes_say_how_to_fix(tmp_path: Path, results: Path) -> None:
    proc = gridrun("tensorboard", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr and "Fix:" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = gridrun("tensorboard", str(results), "--port", str(port), timeout=120)
    message = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"TensorBoard cannot listen on 127.0.0.1:{port}" in message and "--port 0" in message
