"""Screenshots of a study in the local store (mlruns/) for the README.

Usage: .venv/bin/python docs/take_screenshots.py [EXPERIMENT]
(default: tricks-cpu, the experiment `make run` fills).
Needs Debian's chromium and the playwright package, like tests/test_ui_browser.py.
"""
import sys
from pathlib import Path

import mlflow
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the UI helpers live with the browser test
from tests import ui_helpers as ui  # noqa: E402

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
        browser.close()
finally:
    ui.stop_process_group(proc)
print("ok")
