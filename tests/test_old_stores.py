"""A store written before per-example results were logged still exports, no bolder than before.

``tests/data/old-store-tricks-smoke.db.gz`` is the MLflow database of a real study run by the
harness as it was before this change (``study=tricks budget=smoke 'seeds=[0,1]'``, 32 trials),
with the effects.csv that version exported beside it. Its runs have no per-example results, so
the test set's share must come from the bound, and ``ci_source`` must say so.
"""

from __future__ import annotations

import gzip
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from harness.export import main
from harness.report.effects import HELPS, HURTS

DATA = Path(__file__).parent / "data"
BOUND_SOURCE = "test set: bound (no per-example results)"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    folder = tmp_path_factory.mktemp("old-store")
    database = folder / "mlflow.db"
    with gzip.open(DATA / "old-store-tricks-smoke.db.gz") as packed, database.open("wb") as out:
        shutil.copyfileobj(packed, out)
    with sqlite3.connect(database) as connection:  # its artifacts now live beside the copy
        old = "file:///nonexistent/oldstore"
        new = (folder / "artifacts").as_uri()
        connection.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)",
                           (old, new))
        connection.execute("UPDATE experiments SET artifact_location = "
                           "replace(artifact_location, ?, ?)", (old, new))
    code = main(["study=tricks", "budget=smoke", f"tracking_uri=sqlite:///{database}",
                 f"out={folder / 'report'}"])
    assert code == 0
    new_effects = pd.read_csv(folder / "report" / "effects.csv")
    old_effects = pd.read_csv(DATA / "old-store-tricks-smoke-effects.csv")
    return new_effects, old_effects, folder / "report"


def test_the_old_store_exports_every_option_with_the_bound(exported):
    new, old, _ = exported
    assert list(new["trick"] + "=" + new["option"]) == list(old["trick"] + "=" + old["option"])
    assert new["ci_source"].str.endswith(BOUND_SOURCE).all(), new["ci_source"].tolist()
    assert (new["se_test"] > 0).all()
    assert (new["margin"] == 1.0).all()


def test_its_calls_are_no_bolder_than_the_old_version_s(exported):
    new, old, _ = exported
    for (_, now), (_, before) in zip(new.iterrows(), old.iterrows()):
        if now["call"] in (HELPS, HURTS):
            assert now["call"] == before["call"], (now["trick"], now["call"], before["call"])
        # The new family-wise interval holds the old adjusted one: it claims nothing more.
        assert now["ci_low"] <= before["ci_adj_low"] + 1e-9
        assert now["ci_high"] >= before["ci_adj_high"] - 1e-9


def test_the_verdict_names_the_margin_and_the_calls(exported):
    _, _, report = exported
    verdict = (report / "verdict.md").read_text()
    assert "margin" in verdict
    assert "undetermined" in verdict


def test_the_margin_is_a_report_setting(exported, tmp_path, capsys):
    _, _, report = exported
    database = report.parent / "mlflow.db"
    base = ["study=tricks", "budget=smoke", f"tracking_uri=sqlite:///{database}"]
    assert main([*base, f"out={tmp_path / 'wide'}", "margin=20"]) == 0
    wide = pd.read_csv(tmp_path / "wide" / "effects.csv")
    assert (wide["margin"] == 20).all() and (wide["call"] == "negligible").all()
    assert "negligible means inside ±20 points" in (tmp_path / "wide" / "verdict.md").read_text()
    capsys.readouterr()
    assert main([*base, f"out={tmp_path / 'bad'}", "margin=abc"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["error: margin must be a positive number of accuracy points, got 'abc'"]
