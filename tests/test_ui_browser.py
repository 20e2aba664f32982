"""The MLflow UI shows a study as a person would look at it, checked in headless Chromium.

One smoke study of the tricks grid (restricted to depth=resnet18: 8 configs) is run in-process
into a temporary store; ``mlflow server`` serves it; Playwright drives the system Chromium over
the runs table, the compare page, the parent run's artifacts and its report.html (fetched from
the server and opened as it is, and in MLflow's own artifact preview).

Screenshots go to a temporary folder; with ``UPDATE_SCREENSHOTS=1`` they replace
``docs/mlflow-runs.png``, ``docs/mlflow-compare.png``, ``docs/mlflow-report.png`` and
``docs/report-html.png``. Skips with a reason without Chromium or Playwright.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ui_helpers as ui
from conftest import make_image_folder

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STUDY = "tricks"
BUDGET = "smoke"
EXPERIMENT = f"{STUDY}-{BUDGET}"
TOGGLES = ("stem", "init", "optimizer", "depth")
REPORT_FILES = ("configs.csv", "effects.csv", "verdict.md", "pareto.png", "cost_vs_accuracy.png",
                "report.html")
FIGURES = ("confusion_matrix.png", "per_class_accuracy.png", "test_predictions.png")
SERVER_TIMEOUT_S = 90


@dataclass
class Study:
    """What the smoke study left in its store."""

    db: Path
    experiment_id: str
    parent: Any  # mlflow.entities.Run
    children: list[Any]  # trial runs, sorted by name
    data: str  # which data it ran on, for messages


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium binary to drive; skips the module when it or Playwright is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"playwright is not importable ({exc}); pip install -e '.[ui]'")
    path = ui.chromium_path()
    if path is None:
        pytest.skip("no Chromium at /usr/bin/chromium or on PATH; "
                    "apt-get install chromium (never `playwright install`)")
    return path


@pytest.fixture(scope="module")
def study(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Study:
    """Run the smoke study of the tricks grid (8 configs) into a fresh store."""
    from mlflow.tracking import MlflowClient

    from harness.run import main

    store = tmp_path_factory.mktemp("store")
    data_args = _data_args(tmp_path_factory.mktemp("data"))
    db = store / "mlflow.db"
    argv = [f"study={STUDY}", f"budget={BUDGET}", "progress=false", "depth=resnet18",
            f"tracking_uri=sqlite:///{db}", f"storage={store / 'optuna.journal'}",
            f"out={store / 'exports'}", *data_args]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(store)  # nothing the run writes may land in the repo
        assert main(argv) == 0, f"harness.run.main({argv}) failed"

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no experiment '{EXPERIMENT}' in {db}"
    ids = [experiment.experiment_id]
    parents = client.search_runs(ids, "tags.`harness.role` = 'parent'")
    children = client.search_runs(ids, "tags.`harness.role` = 'trial'")
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    assert len(children) == 8, f"expected 8 trial runs, found {len(children)}"
    children.sort(key=lambda run: run.info.run_name)
    return Study(db, experiment.experiment_id, parents[0], children, " ".join(data_args))


def _data_args(scratch: Path) -> list[str]:
    """Overrides for the real CIFAR-10 copy, or for a generated ImageFolder without one."""
    root = ui.cifar10_root(scratch)
    if root is not None:
        return [f"data.root={root}"]
    folder = make_image_folder(scratch / "images", per_class_train=40, per_class_test=12,
                               size=(32, 32))
    return ["data.name=imagefolder", f"data.root={folder}", "data.val_size=12",
            "data.train_size=96", "data.test_size=36"]


@pytest.fixture(scope="module")
def server(study: Study, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` over the study's store on a free port; stopped, with its children."""
    port = ui.free_port()
    log = tmp_path_factory.mktemp("server") / "mlflow-server.log"
    proc = ui.start_mlflow_server(study.db, port, log)
    try:
        ui.wait_for_http_200(f"http://127.0.0.1:{port}/", proc, SERVER_TIMEOUT_S, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        ui.stop_process_group(proc)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    """Headless Chromium (the system one) under Playwright."""
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=chromium, args=ui.CHROMIUM_FLAGS)
        yield browser
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser page, 1600×1000, that gives up on a missing element after 60 s."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(ui.TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: docs/ with UPDATE_SCREENSHOTS=1, else a temporary folder."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        return ui.REPO / "docs"
    return tmp_path_factory.mktemp("screenshots")


def test_runs_table_lists_the_trials_with_their_toggles_and_test_acc(
        page: Any, server: str, study: Study, shots: Path) -> None:
    page.goto(ui.runs_table_url(server, study.experiment_id))
    page.get_by_text(study.parent.info.run_name, exact=True).first.wait_for()
    ui.close_assistant(page)
    ui.expand_parent(page, study.parent.info.run_name, study.children[0].info.run_name)
    ui.set_table_columns(page, show=["test_acc", *TOGGLES], hide=["Dataset", "Source", "Models"])

    for run in study.children:
        run_id = run.info.run_id
        row = page.locator(f'.ag-row[row-id="{run_id}"]')
        assert row.count() > 0, f"child run {run.info.run_name} is not in the table"
        for toggle in TOGGLES:
            cell = ui.grid_cell(page, run_id, f"params.`{toggle}`")
            assert cell.inner_text().strip() == run.data.params[toggle], (
                f"{run.info.run_name}: column {toggle}")
        shown = ui.grid_cell(page, run_id, "metrics.`test_acc`").inner_text().strip()
        assert float(shown) == pytest.approx(run.data.metrics["test_acc"], abs=1e-4), (
            f"{run.info.run_name}: test_acc shows {shown}")
    page.screenshot(path=str(shots / "mlflow-runs.png"))


def test_compare_page_shows_toggles_against_test_acc(
        page: Any, server: str, study: Study, shots: Path) -> None:
    ids = [run.info.run_id for run in study.children]
    page.goto(ui.compare_url(server, ids, [study.experiment_id]))
    page.get_by_text(f"Comparing {len(ids)} Runs").first.wait_for()
    ui.close_assistant(page)
    ui.choose_parallel_axes(page, params=TOGGLES, metrics=["test_acc"])
    for axis in (*TOGGLES, "test_acc"):
        page.locator("text.axis-title").filter(has_text=axis).first.wait_for()

    for toggle in ("stem", "init", "optimizer"):
        assert ui.param_row(page, toggle) == [run.data.params[toggle] for run in study.children]
    expected = [ui.mlflow_metric_text(run.data.metrics["test_acc"]) for run in study.children]
    shown = ui.metric_row(page, "test_acc")
    assert shown, "the compare page draws no test_acc values"
    assert shown == expected[:len(shown)], f"test_acc row {shown}, expected {expected}"

    # The screenshot: the plot, then only the params that differ between the runs.
    page.get_by_role("switch", name="Parameters - Show diff only").click()
    page.set_viewport_size({"width": 1600, "height": 1800})
    page.get_by_text(f"Comparing {len(ids)} Runs").first.scroll_into_view_if_needed()
    page.locator("text.axis-title").filter(has_text="test_acc").first.wait_for()
    page.screenshot(path=str(shots / "mlflow-compare.png"))


def test_parent_run_lists_the_report_artifacts(
        page: Any, server: str, study: Study, shots: Path) -> None:
    page.goto(ui.run_artifacts_url(server, study.experiment_id, study.parent.info.run_id))
    ui.close_assistant(page)
    folder = page.get_by_text("report", exact=True).first
    folder.wait_for()
    folder.click()
    for name in REPORT_FILES:
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_text("verdict.md", exact=True).first.click()
    page.get_by_text("Ablation report").first.wait_for()  # the markdown's title: it was served
    # The verdict's table as the report view shows it: every option with its call.
    calls = json.loads(study.parent.data.tags["harness.calls"])
    assert calls
    for call in set(calls.values()):
        page.get_by_text(call, exact=True).first.wait_for()
    page.screenshot(path=str(shots / "mlflow-report.png"))


def test_trial_figures_are_served_without_extra_server_flags(
        page: Any, server: str, study: Study) -> None:
    run = study.children[0]
    page.goto(ui.run_artifacts_url(server, study.experiment_id, run.info.run_id))
    ui.close_assistant(page)
    folder = page.get_by_text("figures", exact=True).first
    folder.wait_for()
    folder.click()
    for name in FIGURES:
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_text("confusion_matrix.png", exact=True).first.click()
    image = page.locator('img[src^="blob:"]').first  # the preview fetches, then shows a blob
    image.wait_for()
    assert image.evaluate("(img) => img.decode().then(() => img.naturalWidth)") > 0


# ---- report.html ----------------------------------------------------------------------------

def _verdict_sentence(server: str, study: Study) -> str:
    """The verdict sentence as verdict.md has it (its one bold line), to compare the page with."""
    text = ui.fetch_artifact(server, study.parent.info.run_id, "report/verdict.md").decode()
    return next(line.strip("*") for line in text.splitlines()
                if line.startswith("**") and line.endswith("**"))


def _assert_figures_loaded(where: Any) -> None:
    """Every image of ``where`` (a page or frame) is an embedded PNG that decoded to pixels."""
    images = where.locator("img")
    assert images.count() == 2, f"expected the two figures, found {images.count()} images"
    for index in range(images.count()):
        image = images.nth(index)
        assert image.get_attribute("src").startswith("data:image/png;base64,")
        width = image.evaluate("(img) => img.decode().then(() => img.naturalWidth)")
        assert width > 0, f"figure {index} did not load"


def _expected_provenance(study: Study) -> dict[str, str]:
    """What the page must show per provenance tag: every value the study's runs recorded."""
    from harness.report.html import NOT_RECORDED, PROVENANCE_TAGS

    runs = [study.parent, *study.children]
    expected = {}
    for label, tag in PROVENANCE_TAGS:
        values = sorted({run.data.tags[tag] for run in runs if run.data.tags.get(tag)})
        expected[label] = ", ".join(values) or NOT_RECORDED
    return expected


def test_report_html_shows_the_verdict_the_calls_and_every_figure(
        page: Any, server: str, study: Study, shots: Path) -> None:
    run_id = study.parent.info.run_id
    document = ui.fetch_artifact(server, run_id, "report/report.html").decode("utf-8")
    assert "http://" not in document and "https://" not in document
    page.set_content(document, wait_until="load")
    assert page.locator("#verdict").inner_text().strip() == _verdict_sentence(server, study)
    _assert_figures_loaded(page)

    calls = json.loads(study.parent.data.tags["harness.calls"])  # logged with the report
    rows = page.locator("table.options tbody tr").evaluate_all(
        """(rows) => rows.map((row) => [row.cells[1].innerText + "=" + row.cells[2].innerText,
            row.dataset.call, row.className, getComputedStyle(row.cells[0]).backgroundColor])""")
    assert {key: call for key, call, _, _ in rows} == calls
    colours: dict[str, set[str]] = {}
    for key, call, css, colour in rows:
        assert css == f"call-{call}", f"{key}: row class {css!r}, call {call}"
        colours.setdefault(call, set()).add(colour)
    assert all(len(shades) == 1 for shades in colours.values()), colours
    assert len({next(iter(shades)) for shades in colours.values()}) == len(colours)

    terms = page.locator("dl.provenance dt").all_inner_texts()
    values = dict(zip(terms, page.locator("dl.provenance dd").all_inner_texts()))
    for label, expected in _expected_provenance(study).items():
        assert values[label] == expected, f"provenance {label}"
    assert values["budget"] == BUDGET
    command = values["command"]
    assert command.startswith(f"python -m harness.run study={STUDY} budget={BUDGET}"), command
    assert "depth=resnet18" in command and "seeds=[" in command
    page.screenshot(path=str(shots / "report-html.png"), full_page=True)

    # Clicking a header twice sorts the configs by it, largest first.
    headers = page.locator("table.configs thead th")
    column = headers.all_inner_texts().index("test_acc_mean")
    for _ in range(2):
        headers.nth(column).click()
    assert headers.nth(column).get_attribute("aria-sort") == "descending"
    shown = page.locator("table.configs tbody tr").evaluate_all(
        f"(rows) => rows.map((row) => Number(row.cells[{column}].dataset.value))")
    assert len(shown) == 8 and shown == sorted(shown, reverse=True)


def test_report_html_renders_in_mlflow_s_artifact_view(
        page: Any, server: str, study: Study) -> None:
    page.goto(ui.run_artifacts_url(server, study.experiment_id, study.parent.info.run_id))
    ui.close_assistant(page)
    folder = page.get_by_text("report", exact=True).first
    folder.wait_for()
    folder.click()
    page.get_by_text("report.html", exact=True).first.click()
    frame = page.frame_locator("iframe.mlflow-html-iframe")  # a sandboxed blob: iframe
    verdict = frame.locator("#verdict")
    verdict.wait_for()
    assert verdict.inner_text().strip() == _verdict_sentence(server, study)
    _assert_figures_loaded(frame)
    assert frame.locator("h2").filter(has_text=re.compile("^Provenance$")).count() == 1
