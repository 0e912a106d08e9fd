"""The report and `gridrun compare`, over the results of a real smoke run (the session fixture `smoke_results`).

Expected values are read from each job's own result.json and status.json and formatted here, not
through the report's code, so a wrong value or a missing row fails the test.
"""

import base64
import html.parser
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from browser import browse, chromium
from conftest import gridrun
from PIL import Image, ImageStat

from runner.errors import UserError
from runner.report import write_report
from runner.report.runs import load_suite
from runner.store.layout import JobPaths, write_json
from schemas import RunStatus

FRAMEWORKS = {"torch": "PyTorch", "tensorflow": "TensorFlow"}
MISSING = "—"


# Reading the report back


def md_sections(text: str) -> dict[str, list[list[dict[str, str]]]]:
    """Section title -> its tables, each a list of rows {header: cell}; bold marks kept as **x**."""
    sections: dict[str, list[list[dict[str, str]]]] = {}
    title, rows = "", []
    for line in [*text.splitlines(), ""]:
        if line.startswith("## "):
            title = line[3:].strip()
            sections[title] = []
        elif line.startswith("|"):
            rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif rows:
            header, body = rows[0], rows[2:]  # rows[1] is the |---| line
            sections.setdefault(title, []).append([dict(zip(header, r, strict=True)) for r in body])
            rows = []
    return sections


class _Tables(html.parser.HTMLParser):
    """Section title (h2) -> tables; a cell of class "best" is returned as **text**."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[dict[str, str]]]] = {}
        self.title = ""
        self._in: str | None = None
        self._text = ""
        self._best = False
        self._rows: list[list[str]] = []
        self._row: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("h2", "td", "th"):
            self._in, self._text = tag, ""
            self._best = "best" in (dict(attrs).get("class") or "").split()
        elif tag == "tr":
            self._row = []
        elif tag == "table":
            self._rows = []

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self.title = self._text.strip()
            self.sections[self.title] = []
        elif tag in ("td", "th"):
            self._row.append(f"**{self._text}**" if self._best else self._text)
        elif tag == "tr":
            self._rows.append(self._row)
        elif tag == "table":
            header = self._rows[0]
            self.sections[self.title].append([dict(zip(header, r, strict=True)) for r in self._rows[1:]])
        if tag in ("h2", "td", "th"):
            self._in = None


def html_sections(text: str) -> dict[str, list[list[dict[str, str]]]]:
    parser = _Tables()
    parser.feed(text)
    return parser.sections


def plain(cell: str) -> str:
    return cell.removeprefix("**").removesuffix("**")


def wall_time(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s"


def expected_row(job: Path) -> dict[str, str]:
    """The summary row a job folder should have, straight from its JSON files."""
    spec = json.loads((job / "spec.json").read_text())["spec"]
    status = json.loads((job / "status.json").read_text())
    row = {"Job": job.name, "Framework": FRAMEWORKS[spec["framework"]], "Model": spec["model"]["arch"]}
    if not (job / "result.json").is_file():
        return {**row, "Epochs": str(spec["train"]["epochs"]), "Final test acc": MISSING, "Status": status["state"]}
    r = json.loads((job / "result.json").read_text())
    dataset = f"{r['spec']['dataset']['name']} {r['spec']['dataset']['image_size']}px"
    for sub in r["substitutions"]:
        dataset += f" (substitute for {sub['wanted']})" if sub["kind"] == "dataset" else ""
    return {
        **row,
        "Weights": "scratch" if r["spec"]["model"]["weights"] == "none" else "pretrained",
        "Dataset": dataset,
        "Epochs": str(len(r["epochs"])),
        "Trainable params": f"{r['trainable_parameters']:,}",
        "Wall time": wall_time(r["timing"]["total_seconds"]),
        "Images/s": f"{r['images_per_second']:,.0f}",
        "Final test acc": f"{r['final_test_accuracy']:.2%}",
        "Best epoch": str(r["best_epoch"]),
        "Test acc at best epoch": f"{r['best_test_accuracy']:.2%}",
        "Status": status["state"],
    }


def jobs_of(suite: Path) -> list[Path]:
    return sorted(p for p in suite.iterdir() if (p / "spec.json").is_file())


@pytest.fixture
def suite_copy(smoke_results: Path, tmp_path: Path) -> Path:
    """A copy of the smoke suite's results without its report: each test may change it."""
    copy = tmp_path / "results" / smoke_results.name
    shutil.copytree(smoke_results, copy, ignore=shutil.ignore_patterns("checkpoints", "report.*", "plots"))
    return copy


# The report of a real smoke run


def test_report_holds_a_row_per_job_with_its_results(suite_copy: Path) -> None:
    proc = gridrun("report", str(suite_copy))
    assert proc.returncode == 0, proc.stderr
    assert "report.html" in proc.stdout
    md = md_sections((suite_copy / "report.md").read_text())
    page = html_sections((suite_copy / "report.html").read_text())
    for doc in (md, page):
        summary = doc["Summary"][0]
        assert [plain(r["Job"]) for r in summary] == [j.name for j in jobs_of(suite_copy)]
        for job, row in zip(jobs_of(suite_copy), summary, strict=True):
            for column, value in expected_row(job).items():
                assert plain(row[column]) == value, (job.name, column)
    succeeded = [j for j in jobs_of(suite_copy) if (j / "result.json").is_file()]
    assert len(succeeded) >= 2  # smoke-torch and smoke-fallback at least


def test_report_marks_the_best_run_of_each_class(suite_copy: Path) -> None:
    write_report(suite_copy)
    results = {p.parent.name: json.loads(p.read_text()) for p in sorted(suite_copy.glob("*/result.json"))}
    for doc in (md_sections((suite_copy / "report.md").read_text()),
                html_sections((suite_copy / "report.html").read_text())):  # fmt: skip
        tables = doc["Per-class accuracy"]  # one per set of classes (smoke-fallback's digits are not synthetic's)
        assert sorted(job for t in tables for job in t[0] if job != "Class") == sorted(results)
        for table in tables:
            members = {job: results[job]["per_class_accuracy"] for job in table[0] if job != "Class"}
            for i, row in enumerate(table):
                assert {row["Class"]} == {classes[i]["name"] for classes in members.values()}
                top = max(classes[i]["accuracy"] for classes in members.values())
                for job, classes in members.items():
                    assert plain(row[job]) == f"{classes[i]['accuracy']:.2%}"
                    assert row[job].startswith("**") == (classes[i]["accuracy"] == top and len(members) > 1)


def test_failed_and_substituted_runs_are_listed_with_their_reasons(suite_copy: Path) -> None:
    write_report(suite_copy)
    for doc in (md_sections((suite_copy / "report.md").read_text()),
                html_sections((suite_copy / "report.html").read_text())):  # fmt: skip
        problems, subs = doc["Failed, blocked and substituted runs"]
        failed = {j.name: json.loads((j / "status.json").read_text()) for j in jobs_of(suite_copy)}
        failed = {name: s for name, s in failed.items() if s["state"] == "failed"}
        assert "smoke-timeout" in failed
        assert {r["Job"]: (r["Status"], r["Reason"], r["Log"]) for r in problems} == {
            name: ("failed", s["reason"], f"{name}/log.txt") for name, s in failed.items()
        }
        assert "timed out" in failed["smoke-timeout"]["reason"]
        sub = json.loads((suite_copy / "smoke-fallback" / "result.json").read_text())["substitutions"][0]
        assert subs == [{"Job": "smoke-fallback", "Kind": "dataset", "Wanted": "imagefolder", "Used": "digits",
                         "Reason": sub["reason"]}]  # fmt: skip
    conclusion = (suite_copy / "report.md").read_text().split("## Conclusion")[1].split("## ")[0]
    assert f"{len(failed)} of {len(jobs_of(suite_copy))} runs" in conclusion
    assert "Best run: **" in conclusion and "Fastest run: **" in conclusion and "accuracy per hour" in conclusion


def test_framework_comparison_when_the_same_model_ran_in_both(suite_copy: Path) -> None:
    write_report(suite_copy)
    md = md_sections((suite_copy / "report.md").read_text())
    torch_ok = (suite_copy / "smoke-torch" / "result.json").is_file()
    tf_ok = (suite_copy / "smoke-tf" / "result.json").is_file()
    assert ("PyTorch and TensorFlow" in md) == (torch_ok and tf_ok)
    if torch_ok and tf_ok:
        row = md["PyTorch and TensorFlow"][0][0]
        for framework, job in (("PyTorch", "smoke-torch"), ("TensorFlow", "smoke-tf")):
            result = json.loads((suite_copy / job / "result.json").read_text())
            assert row[f"{framework} run"] == job
            assert plain(row[f"{framework} acc"]) == f"{result['best_test_accuracy']:.2%}"


def png_ok(data: bytes) -> Image.Image:
    """A valid PNG with something drawn on it."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    Image.open(io.BytesIO(data)).verify()
    image = Image.open(io.BytesIO(data)).convert("L")
    assert image.width > 200 and image.height > 150
    assert ImageStat.Stat(image).stddev[0] > 5, "blank image"
    return image


def test_every_plot_is_a_valid_png_embedded_in_the_page(suite_copy: Path) -> None:
    written = write_report(suite_copy)
    plots = sorted((suite_copy / "plots").glob("*.png"))
    assert sorted(written[2:]) == plots
    finished = [j.name for j in jobs_of(suite_copy) if (j / "result.json").is_file()]
    assert {p.name for p in plots} >= {"overlay.png", "tradeoff.png"} | {
        f"{kind}-{job}.png" for job in finished for kind in ("curves", "confusion")
    }
    for plot in plots:
        png_ok(plot.read_bytes())
    page = (suite_copy / "report.html").read_text()
    assert "<script" not in page and 'src="http' not in page  # self-contained
    embedded = [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert sorted(embedded) == sorted(p.read_bytes() for p in plots)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (suite_copy / "report.md").read_text())
    assert sorted(suite_copy / link for link in links) == plots


def test_plots_are_drawn_again_only_when_their_run_changes(suite_copy: Path) -> None:
    write_report(suite_copy)
    plots = suite_copy / "plots"
    before = {p.name: p.stat().st_mtime_ns for p in plots.glob("*.png")}
    write_report(suite_copy)
    assert {p.name: p.stat().st_mtime_ns for p in plots.glob("*.png")} == before
    result = json.loads((suite_copy / "smoke-torch" / "result.json").read_text())
    result["epochs"][0]["test_accuracy"] = 0.987
    write_json(suite_copy / "smoke-torch" / "result.json", result)
    old = (plots / "curves-smoke-torch.png").read_bytes()
    shutil.rmtree(suite_copy / "smoke-fallback")
    write_report(suite_copy)
    after = {p.name: p.stat().st_mtime_ns for p in plots.glob("*.png")}
    assert (plots / "curves-smoke-torch.png").read_bytes() != old
    assert after["confusion-smoke-torch.png"] == before["confusion-smoke-torch.png"]
    assert not {"curves-smoke-fallback.png", "confusion-smoke-fallback.png"} & after.keys()


def test_blocked_job_is_shown_with_its_reason(suite_copy: Path) -> None:
    donor = JobPaths(suite_copy / "smoke-torch")
    blocked = JobPaths(suite_copy / "big-job")
    blocked.dir.mkdir()
    shutil.copy(donor.spec, blocked.spec)
    reason = "not runnable: needs 4 GPUs and the largest node has 0"
    write_json(blocked.status, RunStatus(state="failed", spec_hash="x", reason=reason))
    write_report(suite_copy)
    md = md_sections((suite_copy / "report.md").read_text())
    assert {r["Job"]: r["Status"] for r in md["Summary"][0]}["big-job"] == "blocked"
    problems = {r["Job"]: r for r in md["Failed, blocked and substituted runs"][0]}
    assert (problems["big-job"]["Status"], problems["big-job"]["Reason"]) == ("blocked", reason)


# Mistakes


def test_report_on_a_folder_that_is_not_a_suite_says_what_to_pass(suite_copy: Path, tmp_path: Path) -> None:
    proc = gridrun("report", str(suite_copy / "smoke-torch"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = " ".join(proc.stderr.split())  # the terminal wraps long lines
    assert f"{suite_copy / 'smoke-torch'} is the folder of one job" in message
    assert f"Fix: `gridrun report {suite_copy}` for its whole suite" in message
    cases = {
        tmp_path / "nothing-here": "does not exist",
        suite_copy.parent: "holds whole suites (smoke)",
        suite_copy / "smoke-torch" / "spec.json": "is a file, not a folder",
        suite_copy / "smoke-torch" / "tb": "is not a suite results folder",
    }
    for path, message in cases.items():
        with pytest.raises(UserError, match=re.escape(message)) as e:
            load_suite(path)
        assert "Fix:" in str(e.value)


# gridrun compare


def test_compare_across_suites_prints_and_writes_the_tables(suite_copy: Path, tmp_path: Path) -> None:
    old = suite_copy.parent / "smoke-old"
    shutil.copytree(suite_copy, old)
    out = tmp_path / "cmp.html"
    proc = gridrun("compare", str(suite_copy), str(old / "smoke-torch"), "--out", str(out), env={"COLUMNS": "400"})
    assert proc.returncode == 0, proc.stderr
    for label in ("smoke/smoke-torch", "smoke-old/smoke-torch", "smoke/smoke-timeout"):
        assert label in proc.stdout
    summary = html_sections(out.read_text())["Summary"][0]
    assert [r["Job"] for r in summary] == [f"smoke/{j.name}" for j in jobs_of(suite_copy)] + ["smoke-old/smoke-torch"]
    assert summary[-1]["Final test acc"].strip("*") == expected_row(old / "smoke-torch")["Final test acc"]
    assert (tmp_path / "cmp-plots" / "curves-smoke-old--smoke-torch.png").is_file()
    bad = gridrun("compare", str(suite_copy), "--out", str(tmp_path / "cmp.txt"))
    assert bad.returncode == 2 and "must end in .md or .html" in bad.stderr and "Traceback" not in bad.stderr
    none = gridrun("compare", str(tmp_path / "cmp-plots"))
    assert none.returncode == 2 and "holds no runs" in " ".join(none.stderr.split())


# report.html in a real browser


# Added to a copy of the page: records what the browser loaded into the DOM, for --dump-dom to print.
PROBE = """<script>window.addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify({title: document.title, h1: document.querySelector("h1").textContent,
    images: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])});
  document.body.appendChild(out);
});</script>"""


def test_report_html_renders_in_chromium(suite_copy: Path, tmp_path: Path) -> None:
    browser = chromium()
    write_report(suite_copy)
    page = suite_copy / "report.html"
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = browse(browser, probed.as_uri(), "--dump-dom", "--virtual-time-budget=10000")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert found, dom.stderr[-2000:]
    probe = json.loads(html.unescape(found.group(1)))
    assert probe["title"] == probe["h1"] == f"gridrun report: {suite_copy.name}"
    assert len(probe["images"]) == len(list((suite_copy / "plots").glob("*.png")))
    assert all(complete and width > 200 and height > 150 for complete, width, height in probe["images"])

    shot = tmp_path / "shot.png"
    browse(browser, page.as_uri(), f"--screenshot={shot}")
    image = png_ok(shot.read_bytes())
    assert image.size == (1400, 3000)
    # The page itself, not a blank or error page: dark text and table rules over much of the first screen.
    top = image.crop((0, 0, 1400, 1000))
    assert ImageStat.Stat(top).stddev[0] > 20
    assert sum(top.histogram()[:128]) > 2000
