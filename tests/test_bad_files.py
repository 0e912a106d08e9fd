"""A job folder with an unusable spec.json, status.json or result.json is named by `status`, `report` and
`plan`, which go on with the other jobs: a results folder built here holds one good job and one of each kind
of bad file (truncated JSON, wrong types, binary garbage), and the real CLI reads it."""

import json
from pathlib import Path

import pytest
from conftest import gridrun
from test_report import md_sections
from test_report_frameworks import SUITE, write_run

FIX = "Fix: remove it or re-run the job"
# Each bad job: the file spoilt, how, and the line that must name it.
BAD = {
    "truncated-status": ("status.json", "truncated", "status.json is not valid JSON (line 1 col 11)"),
    "typed-result": ("result.json", "wrong types", "result.json is not what gridrun writes: epochs: Input should be"),
    "binary-spec": ("spec.json", "binary", "spec.json is not text (byte 0 cannot be decoded): not valid JSON"),
}


def _spoil(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_text('{"state": "succeeded', encoding="utf-8")
    elif how == "wrong types":
        data = json.loads(path.read_text())
        data["epochs"] = "three"
        path.write_text(json.dumps(data))
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe garbage \x9c")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    suite = tmp_path / "results" / SUITE
    write_run(suite, "good", "torch", 0.6, 100, 1000)
    for job, (name, how, _) in BAD.items():
        write_run(suite, job, "torch", 0.5, 100, 1000)
        _spoil(suite / job / name, how)
    return tmp_path / "results"


def _squash(text: str) -> str:
    """Without whitespace: a table cell wrapped over lines reads as one."""
    return "".join(text.split())


def _rows(table: str) -> dict[str, list[str]]:
    """A rich table printed as text: first cell -> each cell's text, lines of a wrapped cell joined."""
    rows: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in table.splitlines():
        if "│" not in line:
            continue
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells[0] or current is None:
            current = cells
            rows[cells[0]] = current
        elif current is not None:
            for i, cell in enumerate(cells):
                current[i] = f"{current[i]} {cell}".strip()
    return rows


def test_status_names_each_bad_file_with_the_fix_and_shows_every_job(results: Path) -> None:
    proc = gridrun("status", str(results))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    rows = _rows(proc.stdout)
    assert set(rows) == {f"{SUITE}/{job}" for job in ("good", *BAD)}, proc.stdout
    assert rows[f"{SUITE}/good"][-1] == ""
    for job, (_, _, line) in BAD.items():
        reason = _squash(rows[f"{SUITE}/{job}"][-1])
        assert reason.startswith(_squash(line)) and reason.endswith(_squash(f"; {FIX}")), proc.stdout
    assert rows[f"{SUITE}/truncated-status"][1] == "unreadable", "a job whose status.json is unusable is not 'unknown'"


def test_report_lists_the_bad_files_and_reports_the_other_jobs(results: Path) -> None:
    proc = gridrun("report", str(results / SUITE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sections = md_sections((results / SUITE / "report.md").read_text())
    [unreadable] = sections["Unreadable files"]
    found = {row["Job"]: row["Problem"] for row in unreadable}
    assert set(found) == set(BAD)
    for job, (_, _, line) in BAD.items():
        assert found[job].startswith(line), found[job]
    summary = {row["Job"]: row for row in sections["Summary"][0]}
    assert "good" in summary and summary["good"]["Status"] == "succeeded"


@pytest.mark.runs
def test_plan_re_runs_a_job_whose_status_json_is_bad_and_says_why(results: Path, tmp_path: Path) -> None:
    jobs = "\n".join(f"  - {{name: {job}, framework: torch}}" for job in ("good", *BAD))
    suite = tmp_path / "cmp.yaml"
    suite.write_text(
        f"suite: {SUITE}\n"
        "defaults:\n"
        "  dataset: {name: synthetic, image_size: 64}\n"
        "  model: {arch: alexnet}\n"
        "  resources: {gpus: 0, cpus: 1}\n"
        f"jobs:\n{jobs}\n"
    )
    proc = gridrun(
        "plan", str(suite), "--results", str(results), "--executor", "process", "--cache", str(tmp_path / "cache")
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(proc.stdout)
    action = rows["truncated-status"][-2]
    assert _squash("run re-run: status.json is not valid JSON (line 1 col 11)") in _squash(action), proc.stdout
