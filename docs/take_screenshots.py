"""Screenshots of a study in the local store (mlruns/) for the README.

Usage: .venv/bin/python docs/take_screenshots.py [EXPERIMENT]
(default: tricks-cpu, the experiment `make run` fills).
Needs Debian's chromium and the playwright package, like tests/test_ui_browser.py.

Writes docs/mlflow-runs.png, docs/mlflow-compare.png and docs/report-html.png: the parent run's
report/report.html, or, for a parent logged before report.html existed, one built from the
store into a temporary folder (nothing is logged).
"""
import sys
import tempfile
import urllib.error
from pathlib import Path

import mlflow
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the UI helpers live with the browser test
from harness.report import build_report  # noqa: E402
from tests import ui_helpers as ui  # noqa: E402


def report_html(base: str, db: Path, parent: mlflow.entities.Run) -> str:
    """Return the parent's report.html as the server serves it, else one built from the store."""
    try:
        return ui.fetch_artifact(base, parent.info.run_id, "report/report.html").decode("utf-8")
    except urllib.error.HTTPError:
        tags = parent.data.tags
        with tempfile.TemporaryDirectory() as folder:
            built = build_report(f"sqlite:///{db}", tags["harness.study"], tags["harness.budget"],
                                 folder, parent_run_id=parent.info.run_id)
            return built.paths["html"].read_text(encoding="utf-8")


db = REPO / "mlruns" / "mlflow.db"
name = sys.argv[1] if len(sys.argv) > 1 else "tricks-cpu"
client = mlflow.MlflowClient(f"sqlite:///{db}")
exp = client.get_experiment_by_name(name)
parent = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'parent'")[0]
children = client.search_runs([exp.experiment_id], "tags.`harness.role` = 'trial'", max_results=100)
port = ui.free_port()
log = Path("/tmp/shots-server.log")
proc = ui.start_mlflow_server(db, port, log)
base = f"http://127.0.0.1:{port}"
try:
    ui.wait_for_http_200(base, proc, 120, log)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ui.chromium_path(), args=ui.CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(ui.runs_table_url(base, exp.experiment_id))
        page.get_by_text(parent.info.run_name, exact=True).first.wait_for()
        ui.close_assistant(page)
        ui.expand_parent(page, parent.info.run_name, children[0].info.run_name)
        ui.set_table_columns(page, show=["test_acc", "stem", "init", "optimizer", "depth"],
                             hide=["Dataset", "Source", "Models"])
        page.wait_for_timeout(1500)
        page.screenshot(path=str(REPO / "docs" / "mlflow-runs.png"))
        ids = [r.info.run_id for r in children]
        page.goto(ui.compare_url(base, ids, [exp.experiment_id]))
        page.get_by_text(f"Comparing {len(ids)} Runs").first.wait_for()
        ui.close_assistant(page)
        ui.choose_parallel_axes(page, params=["stem", "init", "optimizer", "depth"],
                                metrics=["test_acc"])
        page.get_by_role("switch", name="Parameters - Show diff only").click()
        page.set_viewport_size({"width": 1600, "height": 1800})
        page.get_by_text(f"Comparing {len(ids)} Runs").first.scroll_into_view_if_needed()
        page.locator("text.axis-title").filter(has_text="test_acc").first.wait_for()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(REPO / "docs" / "mlflow-compare.png"))
        page.set_viewport_size({"width": 1600, "height": 1000})
        page.set_content(report_html(base, db, parent), wait_until="load")
        page.screenshot(path=str(REPO / "docs" / "report-html.png"), full_page=True)
        browser.close()
finally:
    ui.stop_process_group(proc)
print("ok")
