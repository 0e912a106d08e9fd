"""The report of a sweep (more than a dozen runs): the interactive view, the runs' own pages, and Chromium
sorting, filtering and selecting in it. The job folders are generated, as bench/bench_report.py makes them."""

import html
import json
import math
import re
import sys
from pathlib import Path

import pytest
from browser import chromium, probe
from conftest import REPO

from runner.report import compare, write_report
from runner.report.document import Document, Section, Sweep, Table
from runner.report.render import html_page
from runner.report.sweep import PAGES, SWEEP_RUNS
from runner.store.layout import write_json
from schemas import RunResult

sys.path.insert(0, str(REPO / "bench"))
from bench_report import make_suite


def sweep_data(page: Path) -> dict:
    found = re.search(r'<script type="application/json" id="sweep-data">(.*?)</script>', page.read_text(), re.S)
    assert found, "no sweep data in the page"
    return json.loads(found.group(1))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    return make_suite(tmp_path, "sweep", 30).dir


def results(suite: Path) -> dict[str, RunResult]:
    out = {}
    for job in sorted(suite.iterdir()):
        if (job / "result.json").is_file():
            out[job.name] = RunResult.model_validate_json((job / "result.json").read_text())
    return out


def test_a_sweep_report_leads_with_every_run_and_gives_each_its_page(sweep: Path) -> None:
    written = write_report(sweep)
    data = sweep_data(sweep / "report.html")
    names = [row[0] for row in data["rows"]]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "spec.json").is_file())
    assert sorted(names) == jobs and len(jobs) == 30
    col = {c["key"]: i for i, c in enumerate(data["columns"])}
    # The numbers are each run's own, read back from result.json here.
    for name, result in results(sweep).items():
        row = data["rows"][names.index(name)]
        assert row[col["best"]] == result.best_test_accuracy and row[col["wall"]] == result.timing.total_seconds
        assert data["curves"][names.index(name)][1] == [round(e.val_accuracy, 5) for e in result.epochs]
    # The learning rate is what these runs vary: a column, a parallel axis, drawn on a log scale.
    assert (
        "train.optimizer.lr" in col and "train.optimizer.lr" in data["axes"] and data["log"] == ["train.optimizer.lr"]
    )
    assert data["axes"][-1] == "best"
    best = max(results(sweep).values(), key=lambda r: r.best_test_accuracy)
    assert [names[i] for i in data["best"]] == [best.job]
    # Per-run plots are on the runs' pages, not in the report: only the framework comparison is a PNG.
    assert sorted(p.name for p in (sweep / "plots").glob("*.png")) == ["frameworks.png"]
    pages = sorted((sweep / PAGES).glob("*.html"))
    assert [p.stem for p in pages] == jobs and set(pages) <= set(written)
    assert data["pages"][names.index(best.job)] == f"{PAGES}/{best.job}.html"
    page = (sweep / PAGES / f"{best.job}.html").read_text()
    assert 'href="../report.html"' in page and "<svg" in page and "Confusion matrix" in page
    cm = best.confusion_matrix
    assert f">{cm[0][0]}</td>" in page and html.escape(best.class_names[3]) in page
    failed = next(p for p in jobs if p not in results(sweep))
    assert (
        "CUDA out of memory" in (sweep / PAGES / f"{failed}.html").read_text()
        or "not runnable" in (sweep / PAGES / f"{failed}.html").read_text()
    )
    # Markdown holds the same rows; the page is small.
    md = (sweep / "report.md").read_text()
    assert all(f"| {name} |" in md for name in jobs)
    assert (sweep / "report.html").stat().st_size < 300_000


def test_pages_are_written_only_when_they_change_and_go_with_their_runs(sweep: Path, tmp_path: Path) -> None:
    write_report(sweep)
    folder = sweep / PAGES
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.html")}
    job = sorted(results(sweep))[0]
    result = results(sweep)[job]
    write_json(sweep / job / "result.json", result.model_copy(update={"best_test_accuracy": 0.5}))
    write_report(sweep)
    after = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.html")}
    assert {n for n in before if before[n] != after[n]} == {f"{job}.html"}
    # A suite that shrinks to a dozen runs gets the full report again, and the pages go.
    small = make_suite(tmp_path / "small", "sweep", SWEEP_RUNS).dir
    (small / PAGES).mkdir()
    (small / PAGES / "stale.html").write_text("old")
    write_report(small)
    assert not (small / PAGES).exists()
    assert "sweep-data" not in (small / "report.html").read_text()


def test_a_diverged_run_and_hostile_text_keep_the_page_valid(sweep: Path) -> None:
    job = sorted(results(sweep))[0]
    result = results(sweep)[job]
    epochs = [e.model_copy(update={"val_accuracy": math.nan, "train_loss": math.inf}) for e in result.epochs]
    write_json(
        sweep / job / "result.json", result.model_copy(update={"epochs": epochs, "best_test_accuracy": math.nan})
    )
    write_report(sweep)
    data = sweep_data(sweep / "report.html")  # JSON.parse would refuse NaN
    row = next(r for r in data["rows"] if r[0] == job)
    assert row[[c["key"] for c in data["columns"]].index("best")] is None
    hostile = "</script><script>alert(1)</script>&"
    table = Table(["Job"], [])
    page = html_page(Document("t", [], [Section("Runs", [Sweep({"rows": [[hostile]], "columns": []}, table)])]))
    data_text = re.search(r'id="sweep-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data_text and json.loads(data_text)["rows"] == [[hostile]]


def test_compare_of_many_runs_writes_its_pages_beside_the_output(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "cmp.html"
    out.parent.mkdir()
    _, written = compare([sweep], out=out)
    pages = sorted((out.parent / "cmp-runs").glob("*.html"))
    assert len(pages) == 30 and set(pages) <= set(written)
    assert 'href="../cmp.html"' in pages[0].read_text()
    assert all(p.startswith("cmp-runs/") for p in sweep_data(out)["pages"])


# In Chromium: no error, the table sorts, filters and selects.

SORT_AND_FILTER = """
  const rows = () => [...document.querySelectorAll("#sweep-table tbody tr")];
  const col = (key) => [...document.querySelectorAll("#sweep-table thead th")].findIndex(th => th.dataset.col === key);
  const cells = (key) => rows().map(tr => tr.children[col(key)].textContent);
  const out = {initial: cells("job"), dots: document.querySelectorAll("#sweep-scatter circle.dot").length,
               lines: document.querySelectorAll("#sweep-parallel polyline").length};
  document.querySelector('#sweep-table th[data-col="best"] button').click();
  out.ascending = cells("job");
  document.querySelector('#sweep-table th[data-col="job"] button').click();
  out.byName = cells("job");
  const filter = document.getElementById("sweep-filter");
  filter.value = "framework=pytorch lr<0.01";
  filter.dispatchEvent(new Event("input"));
  out.filtered = cells("job");
  out.count = document.getElementById("sweep-count").textContent;
  rows()[0].querySelector("input[type=checkbox]").click();
  out.selected = document.querySelectorAll("#sweep-table tr.selected").length;
  out.legend = [...document.querySelectorAll("#sweep-legend li")].map(li => li.textContent);
  out.selectedDots = document.querySelectorAll("#sweep-scatter circle.selected").length;
  return out;
"""


def test_the_sweep_view_sorts_filters_and_selects_in_chromium(sweep: Path) -> None:
    browser = chromium()
    write_report(sweep)
    seen = probe(browser, sweep / "report.html", SORT_AND_FILTER)
    assert seen["errors"] == [], seen["errors"]
    got = seen["result"]
    data = sweep_data(sweep / "report.html")
    col = {c["key"]: i for i, c in enumerate(data["columns"])}
    rows = {r[0]: r for r in data["rows"]}
    best = {name: r[col["best"]] for name, r in rows.items()}
    scored = [n for n in best if best[n] is not None]
    # First shown by the metric, best first; unscored runs last.
    assert got["initial"][: len(scored)] == sorted(scored, key=lambda n: -best[n])
    assert got["ascending"][: len(scored)] == sorted(scored, key=lambda n: best[n])
    assert got["byName"] == sorted(rows)
    assert got["dots"] == len(scored) and got["lines"] == len(scored)
    want = sorted(
        n for n, r in rows.items() if r[col["framework"]] == "PyTorch" and r[col["train.optimizer.lr"]] < 0.01
    )
    assert got["filtered"] == want and got["count"].startswith(f"{len(want)} of 30 runs shown")
    assert got["selected"] == 1 and got["selectedDots"] == (1 if best[want[0]] is not None else 0)
    assert any(item.startswith(want[0]) and item.endswith("selected") for item in got["legend"])
