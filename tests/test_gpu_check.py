"""bench/gpu_check.py on the CPU at tiny sizes, so that the script a GPU machine runs for a few minutes works
on the day it is lent; and the torch worker imports nothing that machine lacks (Ray, TensorFlow, Docker)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from jobhelp import REPO, make_job, worker_env

# What the GPU machine does not have (pydantic travels as wheels there).
ABSENT_THERE = ("ray", "tensorflow", "keras", "docker", "typer")
CASES = [f"{c}{s}" for c in ("alexnet-b64", "alexnet-b512", "vgg16-frozen", "vgg16-full") for s in ("", "-compile")]


def _positive(figures: dict, *keys: str) -> None:
    for key in keys:
        assert isinstance(figures.get(key), int | float) and figures[key] > 0, (key, figures.get(key))


@pytest.mark.slow
@pytest.mark.timeout(1500)  # six workers, each a new process importing torch, on two shared cores
def test_gpu_check_runs_every_case_at_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--out", str(out), "--work", str(tmp_path / "work")],
        cwd=REPO,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())
    assert figures["tiny"] is True and figures["epochs"] == 2
    assert sorted(figures["runs"]) == sorted(CASES)
    for name in CASES[1::2]:  # the trainer compiles on CUDA only: on a CPU the twin would repeat the plain run
        assert figures["runs"].pop(name)["skipped"] == "torch.compile is used on CUDA only"
        assert f"{name:22} skipped" in proc.stdout
    for name, run in figures["runs"].items():
        assert "error" not in run, (name, run.get("error"))
        _positive(run, "ratio")
        _positive(run["worker"], "images_per_second", "wall_seconds", "train_seconds", "eval_images_per_second")
        _positive(run["bare"], "images_per_second")
        assert len(run["worker"]["epochs_images_per_second"]) == len(run["bare"]["epochs_images_per_second"]) == 2
        # The same network on both sides; without a GPU the CPU stood in, declared and recorded.
        assert run["worker"]["trainable_parameters"] == run["bare"]["trainable_parameters"]
        assert [s["kind"] for s in run["worker"]["substitutions"]] == ["device"]
        assert f"{name:22}" in proc.stdout and f"ratio {run['ratio']:.3f}" in proc.stdout
    frozen, full = figures["runs"]["vgg16-frozen"]["worker"], figures["runs"]["vgg16-full"]["worker"]
    assert frozen["trainable_parameters"] < full["trainable_parameters"] == full["total_parameters"]

    shared = figures["shared_gpu"]
    assert "error" not in shared and len(shared["jobs"]) == 2, shared.get("error")
    assert all(j["substitutions"][0]["wanted"] == "0.5 GPU(s)" for j in shared["jobs"])
    _positive(shared, "combined_images_per_second", "wall_seconds")

    # The study's two PyTorch runs (30 and 10 epochs of 44,992 images at batch 64), from the tiny figures.
    projected = figures["projection"]
    assert set(projected) == {"as_declared", "batch_512"}, "no compiled figures without CUDA"
    jobs = {j["job"]: j for j in projected["as_declared"]["jobs"]}
    assert set(jobs) == {"alexnet-torch-scratch", "alexnet-torch-pretrained"}
    assert (jobs["alexnet-torch-scratch"]["epochs"], jobs["alexnet-torch-pretrained"]["epochs"]) == (30, 10)
    scratch = jobs["alexnet-torch-scratch"]
    assert (scratch["train_images"], scratch["eval_images"]) == (44_992, 15_000)
    _positive(projected["as_declared"], "seconds")
    assert "projected study, PyTorch runs, as declared:" in proc.stdout


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_case_is_a_valid_job_at_the_gpu_sizes_too() -> None:
    """The sizes only a GPU runs are checked here, where there is none: each is a job the worker accepts."""
    script = _script()
    for tiny in (False, True):
        assert sorted(c.name for c in script.cases(tiny)) == sorted(CASES)
        for case in script.cases(tiny):
            spec = case.spec(2, gpus=1, fallback=tiny)
            assert spec.train.compile == case.name.endswith("-compile")
            assert spec.resources.gpu_fallback == ("cpu" if tiny else None)
    full = {c.name: c for c in script.cases(False)}
    assert (full["alexnet-b64"].image_size, full["alexnet-b64"].batch, full["alexnet-b512"].batch) == (224, 64, 512)
    assert full["vgg16-frozen"].freeze and not full["vgg16-full"].freeze


def test_gpu_check_refuses_an_unknown_case(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--only", "alexnet-b65", "--out", str(tmp_path / "f.json")],
        cwd=REPO,
        env=worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--only: unknown alexnet-b65; the cases are alexnet-b512" in proc.stderr
    assert not (tmp_path / "f.json").exists()


def test_the_torch_worker_imports_nothing_the_gpu_machine_lacks(tmp_path: Path, cache: Path) -> None:
    """A whole run in one process, then its modules: what it imports lazily (TensorBoard's writer) counts too."""
    paths = make_job(tmp_path, name="imports", model={"classifier_width": 16}, dataset={"limit": 20})
    code = (
        "import sys\n"
        "from runner.train import worker\n"
        f"code = worker.main([{str(paths.dir)!r}, '--cache', {str(cache)!r}])\n"
        f"print('IMPORTED', sorted({{m.split('.')[0] for m in sys.modules}} & {set(ABSENT_THERE)!r}))\n"
        "sys.exit(code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=worker_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IMPORTED []" in proc.stdout, proc.stdout
