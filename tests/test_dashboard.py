"""``python -m harness.dashboard`` (``make dashboard``): optuna-dashboard over a study's storage."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from harness import dashboard
from harness.study.storage import default_storage

REPO = Path(__file__).resolve().parents[1]


def journal_with_a_study(path: Path, name: str = "demo-smoke-0123456789", trials: int = 3) -> Path:
    """Write an Optuna journal holding one study of ``trials`` finished trials."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("lr", 0.1, 1.0), n_trials=trials)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_dashboard_serves_the_default_journal_of_a_study(tmp_path):
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed "
                                                   "(pip install -e '.[dashboard]')")
    tracking_uri = f"sqlite:///{tmp_path}/mlflow.db"  # only its folder matters here
    journal = journal_with_a_study(Path(default_storage("demo", tracking_uri)))
    assert journal == tmp_path / "optuna" / "demo.journal"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "harness.dashboard", "study=demo", f"tracking_uri={tracking_uri}",
         f"port={port}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90  # imports take a while on a busy machine
        listed = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                listed = get_json(f"http://127.0.0.1:{port}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.5)
        assert listed is not None, process.communicate(timeout=10) if process.poll() else "slow"
        # optuna-dashboard 0.21 names the list study_summaries (a rename to studies is planned).
        summaries = listed.get("studies") or listed["study_summaries"]
        studies = {study["study_name"]: study for study in summaries}
        assert set(studies) == {"demo-smoke-0123456789"}
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/"
                          f"{studies['demo-smoke-0123456789']['study_id']}")
        assert len(detail["trials"]) == 3  # what a draining queue shows, trial by trial
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert f"storage {journal}: 1 Optuna studies (demo-smoke-0123456789)" in out, (out, err)
    assert f"http://127.0.0.1:{port}/" in out


def test_the_default_is_the_default_study_journal_beside_the_default_store(monkeypatch, tmp_path):
    from harness.config.settings import DEFAULT_STUDY, DEFAULT_TRACKING_URI

    monkeypatch.chdir(tmp_path)
    expected = journal_with_a_study(Path(default_storage(DEFAULT_STUDY, DEFAULT_TRACKING_URI)))
    assert dashboard.resolve_storage(dashboard.parse_args([])) == str(expected)
    other = journal_with_a_study(tmp_path / "elsewhere.journal")
    args = dashboard.parse_args([f"storage=journal:{other}"])
    assert dashboard.resolve_storage(args) == str(other)


BAD = [
    ("missing journal", ["storage={tmp}/absent.journal"], "no Optuna journal"),
    ("missing default journal", ["study=nope", "tracking_uri=sqlite:///{tmp}/mlflow.db"],
     "no Optuna storage for study 'nope'"),
    ("missing sqlite storage", ["storage=sqlite:///{tmp}/absent.db"], "no Optuna storage"),
    ("storage is a text file", ["storage={tmp}/notes.txt"], "not an Optuna journal"),
    ("unsupported url", ["storage=redis://localhost"], "unsupported storage"),
    ("unknown key", ["host=0.0.0.0"], "unknown argument 'host'"),
    ("not key=value", ["8080"], "is not key=value"),
    ("bad port", ["port=http"], "port must be a number"),
    ("port out of range", ["port=70000"], "port must be a number"),
]


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in BAD],
                         ids=[case[0] for case in BAD])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, message):
    (tmp_path / "notes.txt").write_text("not a journal\n")
    code = dashboard.main([arg.format(tmp=tmp_path) for arg in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created
