"""Helpers for driving the MLflow UI in headless Chromium (see tests/test_ui_browser.py).

Facts this relies on (mlflow 3.17, Debian Chromium): Playwright drives the system Chromium through
``executable_path``; never ``playwright install``. The runs table needs
``?workflowType=machine_learning``; child runs are folded under their parent in an ag-grid whose
rows carry ``row-id=<run id>`` and whose cells carry ``col-id=metrics.`NAME``` /
``params.`NAME```. Pages settle on text, never on network quiet.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000


# ---- the browser and the server -------------------------------------------------------------

def chromium_path() -> str | None:
    """Return the system Chromium to drive, or None when there is none."""
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_executable() -> str:
    """Return the ``mlflow`` command beside the running interpreter (the venv's)."""
    candidate = Path(sys.executable).parent / "mlflow"
    return str(candidate) if candidate.exists() else (shutil.which("mlflow") or "mlflow")


def start_mlflow_server(db: Path, port: int, log: Path) -> subprocess.Popen:
    """Start ``mlflow server`` over the SQLite store ``db`` in its own process group."""
    command = [mlflow_executable(), "server", "--backend-store-uri", f"sqlite:///{db}",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for_http_200(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> float:
    """Poll ``url`` until it answers 200; return the seconds it took, or raise with the log."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server did not answer {url} within {timeout:.0f} s:\n{_tail(log)}")


def stop_process_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop ``proc`` and every process it started (its job runner, its huey consumers)."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(pgid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# ---- data -----------------------------------------------------------------------------------

def has_image_tree(root: Path) -> bool:
    """True when ``root`` holds ``train/`` and ``test/`` folders (an unpacked CIFAR-10 copy)."""
    return (root / "train").is_dir() and (root / "test").is_dir()


def cifar10_root(scratch: Path) -> Path | None:
    """Return a CIFAR-10 ImageFolder tree: the repo's ``data/``, else the shared copy unpacked.

    ``make test`` does not unpack the data, so in CI the shared tarball is unpacked into
    ``scratch``. None when neither exists.
    """
    if has_image_tree(REPO / "data"):
        return REPO / "data"
    if not SHARED_CIFAR.is_file():
        return None
    target = scratch / "cifar10"
    if not has_image_tree(target):
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED_CIFAR) as archive:
            archive.extractall(target, filter="data")
    return target if has_image_tree(target) else None


# ---- addresses and values -------------------------------------------------------------------

def runs_table_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in "Model training" mode."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def compare_url(base: str, run_ids: Sequence[str], experiment_ids: Sequence[str]) -> str:
    """The compare-runs page of ``run_ids``, in "Model training" mode."""
    runs = urllib.parse.quote(json.dumps(list(run_ids)))
    experiments = urllib.parse.quote(json.dumps(list(experiment_ids)))
    return (f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"
            f"&workflowType=machine_learning")


def run_artifacts_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's Artifacts tab, in "Model training" mode (else it files the run under GenAI)."""
    return (f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifacts"
            f"?workflowType=machine_learning")


def artifact_url(base: str, run_id: str, path: str) -> str:
    """The server's download endpoint of one artifact of a run (sent as an attachment)."""
    query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
    return f"{base}/get-artifact?{query}"


def fetch_artifact(base: str, run_id: str, path: str) -> bytes:
    """Return the bytes of a run's artifact as the server serves them."""
    with urllib.request.urlopen(artifact_url(base, run_id, path), timeout=30) as response:
        return response.read()


def mlflow_metric_text(value: float) -> str:
    """Return ``value`` as the compare page prints it (MLflow's ``Utils.formatMetric``).

    0 → "0"; below 1e-3 → exponent; below 10 → 3 decimals; below 100 → 2; else 1; then the
    shortest text of the rounded number, as JavaScript's ``toString`` gives it.
    """
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    digits = 3 if abs(value) < 10 else 2 if abs(value) < 100 else 1
    scale = 10**digits
    rounded = math.floor(value * scale + 0.5) / scale  # Math.round: halves go up
    return str(int(rounded)) if rounded == int(rounded) else repr(rounded)


# ---- page actions ---------------------------------------------------------------------------

def close_assistant(page: Any, wait_ms: int = 5_000) -> None:
    """Close the "MLflow Assistant" side panel (it opens by itself and takes a third of the page).

    It appears a moment after the page, so this waits up to ``wait_ms`` for it.
    """
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]').first
    try:
        close.wait_for(state="visible", timeout=wait_ms)
    except Exception:  # noqa: BLE001 - a playwright TimeoutError: the panel is not there
        return
    close.click()
    close.wait_for(state="hidden", timeout=wait_ms)


def expand_parent(page: Any, parent_name: str, child_text: str) -> None:
    """Unfold the child runs under the parent row named ``parent_name``."""
    page.get_by_text(parent_name, exact=True).first.wait_for(timeout=TIMEOUT_MS)
    expander = page.locator(
        'button[data-component-id$="runnamecellrenderer.tsx_46"]'
    ).first  # the +/- box left of a parent's name; only parents have one
    expander.click()
    page.get_by_text(child_text).first.wait_for(timeout=TIMEOUT_MS)


def set_table_columns(page: Any, show: Iterable[str], hide: Iterable[str] = ()) -> None:
    """Tick the column selector's entries ``show`` and untick ``hide`` (exact names).

    Each name must occur once in the selector's tree (metrics, params, tags and attributes
    share it); the entries toggle, so call this once per page.
    """
    page.get_by_role("button", name="Columns", exact=True).click()
    dialog = page.get_by_role("dialog")
    for name in [*show, *hide]:
        title = page.locator(f'span.du-bois-light-tree-title:text-is("{name}")')
        node = dialog.locator(".du-bois-light-tree-treenode").filter(has=title)
        node.first.wait_for(timeout=TIMEOUT_MS)
        checked = "checkbox-checked" in (node.first.locator(
            ".du-bois-light-tree-checkbox").get_attribute("class") or "")
        if checked != (name in show):
            node.first.locator(".du-bois-light-tree-checkbox").click()
    page.keyboard.press("Escape")
    page.evaluate("document.activeElement && document.activeElement.blur()")


def grid_cell(page: Any, run_id: str, col_id: str) -> Any:
    """The ag-grid cell of run ``run_id`` in column ``col_id`` (e.g. ``metrics.`test_acc```)."""
    return page.locator(f'.ag-row[row-id="{run_id}"] .ag-cell[col-id="{col_id}"]').first


def choose_parallel_axes(page: Any, params: Sequence[str], metrics: Sequence[str]) -> None:
    """Set the compare page's parallel-coordinates plot to ``params`` against ``metrics``."""
    page.get_by_role("button", name="Clear All").click()
    selects = page.locator(".du-bois-light-select-selection-search-input")
    for index, names in ((0, params), (1, metrics)):
        for name in names:
            selects.nth(index).click()
            selects.nth(index).fill(name)
            page.locator(f'.du-bois-light-select-dropdown:visible '
                         f'.du-bois-light-select-item-option[title="{name}"]').first.click()
        page.keyboard.press("Escape")


def param_row(page: Any, name: str) -> list[str]:
    """The compare page's Parameters row ``name``: one text per compared run, in URL order."""
    row = page.locator("table.mlflow-compare-run-table tr").filter(
        has=page.locator(f'th:text-is("{name}")'))
    row.first.wait_for(timeout=TIMEOUT_MS)
    return [text.strip() for text in row.first.locator("td").all_inner_texts()]


def metric_row(page: Any, name: str) -> list[str]:
    """The compare page's Metrics row ``name`` as far as it is drawn, left to right.

    That table is two react-virtualized grids side by side: metric names, and values that only
    draw the columns in view. A value cell sits at the same ``style.top`` as its name cell.
    """
    label = page.locator('a[title="Plot chart"]').filter(
        has_text=re.compile(rf"^{re.escape(name)}$"))
    label.first.wait_for(timeout=TIMEOUT_MS)
    return label.first.evaluate(
        """(el) => {
            const cell = el.closest('div[style*="position: absolute"]');
            const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
            const values = grids[grids.indexOf(cell.closest('.ReactVirtualized__Grid')) + 1];
            return [...values.querySelectorAll('div[style*="position: absolute"]')]
                .filter((node) => node.style.top === cell.style.top)
                .sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left))
                .map((node) => node.innerText.trim());
        }"""
    )
