"""Whole studies through the report: a chance-level grid must call nothing.

These run real (smoke-budget) studies, so they are ``slow``; the unit tests of the calls are in
test_report.py and test_export.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from harness.run import main


@pytest.mark.slow
def test_bag_at_smoke_budget_calls_no_option(cifar_root, tmp_path):
    """64 configs trained to chance level on 256 test images: no helps, no hurts, no gain."""
    code = main([
        "study=bag", "budget=smoke", f"data.root={cifar_root}", "progress=false",
        f"tracking_uri=sqlite:///{tmp_path}/mlflow.db", f"storage={tmp_path}/o.journal",
        f"out={tmp_path}/report",
    ])
    assert code == 0
    effects = pd.read_csv(tmp_path / "report" / "effects.csv")
    assert len(effects) > 0
    assert (effects["call"] == "undetermined").all(), effects[["trick", "option", "call"]]
    assert (effects["se_test"] > 0).all()
    assert effects["ci_source"].str.endswith("test set: per-example results").all()
    assert "No option helps beyond noise" in (tmp_path / "report" / "verdict.md").read_text()
